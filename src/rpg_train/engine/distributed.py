"""Process-group set-up from the launcher's environment (torchrun, the SLURM launcher, or a
plain `srun`), and small collective helpers."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, one_process: bool = True) -> torch.device:
    """trainer.device as a torch.device, refused in one line where it is not there. Several
    processes each take their LOCAL_RANK's GPU (setup), so an index is checked only for one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device", name, "but CUDA is not available; use cpu or auto")
    if one_process and device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise UserError("trainer.device", name, f"but this process sees {count} CUDA "
                            f"device(s) (cuda:0 to cuda:{count - 1}); use cuda or auto")
    return device


def _srun_tasks() -> int:
    """The tasks of the plain srun step this process is one of; 0 when it is not one (set
    up by torchrun or the SLURM launcher, or no srun at all: the batch script itself has no
    SLURM_STEP_ID)."""
    if "WORLD_SIZE" in os.environ or "SLURM_STEP_ID" not in os.environ:
        return 0
    return int(os.environ.get("SLURM_NTASKS", "1"))


def env_rank() -> int:
    """This process's rank as its launcher tells it, before any process group exists."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("SLURM_PROCID", "0")) if _srun_tasks() > 1 else 0


def env_world() -> int:
    """The number of processes of this run as its launcher tells it."""
    return int(os.environ.get("WORLD_SIZE") or max(1, _srun_tasks()))


def slurm_world() -> dict | None:
    """torch.distributed's variables for a task of a plain `srun --ntasks=N` (N > 1) that no
    torchrun or SLURM launcher has set up: rank, world size and local rank from SLURM, the
    job's first node as master (the node list read by submitit, as the SLURM launcher does),
    and MASTER_PORT if set, else the port submitit derives from the job id. None otherwise."""
    tasks = _srun_tasks()
    if tasks <= 1:
        return None
    try:
        from submitit.slurm.slurm import SlurmJobEnvironment
    except ImportError:
        raise UserError("SLURM_NTASKS", tasks, "tasks of srun form one run through submitit, "
                        "which reads SLURM's node list: pip install 'rpg-train[slurm]', or "
                        "launch with torchrun") from None
    job = SlurmJobEnvironment()
    port = os.environ.get("MASTER_PORT") or str(random.Random(job.job_id).randint(20000, 60000))
    return dict(RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks),
                LOCAL_RANK=str(job.local_rank), MASTER_ADDR=job.hostnames[0], MASTER_PORT=port)


def setup(device_name: str, timeout_s: float = 600) -> Dist:
    """One process per device. Under torchrun, the SLURM launcher or srun (WORLD_SIZE > 1)
    join the process group: NCCL on GPUs, gloo on CPUs; each process takes the GPU of its
    LOCAL_RANK. A collective that waits longer than `timeout_s` (a rank died) fails instead
    of hanging."""
    os.environ.update(slurm_world() or {})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name, one_process=world == 1)
    if world == 1:
        return Dist(device=device)
    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        # a task that sees one GPU only (SLURM's --gpus-per-task) takes that one
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # NCCL waits a little longer than the gloo vote (Vote), so that a lost rank fails
        # the vote first, in Python, rather than NCCL's watchdog aborting the process
        nccl = device.type == "cuda"
        dist.init_process_group("nccl" if nccl else "gloo",
                                timeout=timedelta(seconds=timeout_s + (120 if nccl else 0)))
    return Dist(rank=rank, world_size=world, local_rank=local, device=device)


class RankLost(Exception):
    """A collective failed: another process of the run died, hung past trainer.dist_timeout_s
    or lost its network. This process stops too; the run resumes from its last checkpoint."""


def lost_rank(err: BaseException) -> bool:
    """Whether `err` is a failed collective (the backends raise RuntimeError subclasses)."""
    text = str(err)
    return isinstance(err, getattr(dist, "DistError", ())) or any(
        s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed"))


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if initialized():
        dist.all_reduce(t)
    return t


def max_rank(value: int, device: torch.device) -> int:
    """The largest `value` over the ranks: all ranks agree, so none waits in a collective."""
    if not initialized():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is set on any rank."""
    return max_rank(int(flag), device) > 0


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Vote:
    """The largest value over the ranks of each of a few flags (a stop signal's number, save
    now, diverged), agreed by all ranks one call late: each call starts a CPU all-reduce (gloo,
    beside NCCL on GPUs) and reads the one started by the previous call, so checking every
    step never waits on the device. Ranks make the same calls in the same order, so they all
    act on the same step."""

    def __init__(self, n: int = 2, timeout_s: float = 600):
        self.n = n
        self.pending: tuple[Any, torch.Tensor] | None = None  # (the all-reduce's Work, flags)
        self.group: dist.ProcessGroup | None = None
        if initialized() and dist.get_backend() != "gloo":  # a collective: every rank makes it
            group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
            self.group = cast(dist.ProcessGroup, group)  # every rank is a member

    def __call__(self, *flags: int) -> list[int]:
        """The flags agreed at the previous call (all 0 at the first); starts this one's."""
        if not initialized():
            return [int(f) for f in flags]
        agreed = self.settle()
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        self.pending = (dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group,
                                        async_op=True), t)
        return agreed

    def settle(self) -> list[int]:
        """Wait for the vote in flight, if any, and return it (then nothing is in flight)."""
        if self.pending is None:
            return [0] * self.n
        work, t = self.pending
        work.wait()
        self.pending = None
        return t.tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) into every rank's copy of `module`."""
    if initialized():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def barrier() -> None:
    if initialized():
        dist.barrier()


def teardown() -> None:
    if initialized():
        dist.destroy_process_group()
