"""Hydra's submitit launchers, made to run one training run per job across all its tasks.

submitit starts every task of a job (one per GPU) in the same Python function; the stock
launcher then lets each of them compose and write the run as if it were alone. These
subclasses, per task: export the torch.distributed environment from submitit's
JobEnvironment (rank, world size, local rank, the first node as master), let only rank 0
write Hydra's files, and, when the job is requeued (preemption, time limit), requeue the same
run with trainer.resume=auto so it continues from its last.pt instead of starting again.
"""
from __future__ import annotations

import os
from typing import Any

from rpg_train.paths import QUIET  # a rank > 0's overrides: Hydra writes nothing

try:  # the `slurm` extra; without it Hydra's plugin scan must still import this module
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        LocalLauncher as _Local,
        SlurmLauncher as _Slurm,
    )
except ImportError:  # pragma: no cover - exercised only without the extra
    _Local = _Slurm = None

RESUME = "trainer.resume=auto"


def _export_world() -> int:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from submitit's view of
    the job (it reads SLURM's node list); returns this task's rank."""
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if env.world_size > 1:  # a world of one needs no process group
        env.export(set_cuda_visible_devices=False, overwrite=True)
    else:
        os.environ.pop("WORLD_SIZE", None)
    return env.rank


def _sets_resume(override: str) -> bool:
    return override.lstrip("+").split("=", 1)[0] == "trainer.resume"


def auto_resume(overrides: list[str]) -> list[str]:
    """A job's overrides with trainer.resume=auto unless a trainer.resume is given. SLURM may
    requeue a preempted job itself, rerunning this very submission: it must continue from
    last.pt, not start over on top of it (with no last.pt yet, auto starts fresh)."""
    return list(overrides) + ([] if any(map(_sets_resume, overrides)) else [RESUME])


def _resume(overrides: list[str]) -> list[str]:
    """The job's overrides with trainer.resume=auto in place of any trainer.resume given."""
    return auto_resume([o for o in overrides if not _sets_resume(o)])


def _mixin(base: Any):  # a launcher class known at run time
    class RunLauncher(base):
        def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any):
            sweep_overrides = auto_resume(sweep_overrides)
            if _export_world() > 0:
                sweep_overrides += QUIET
            return super().__call__(sweep_overrides, *args, **kwargs)

        def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any):
            """Called by submitit on rank 0 when the job is preempted or times out, after the
            run has saved last.pt (rpg_train passes the signal on once it has)."""
            overrides = [o for o in sweep_overrides if o not in QUIET and o != RESUME]
            return super().checkpoint(_resume(overrides), *args, **kwargs)

    RunLauncher.__name__ = RunLauncher.__qualname__ = base.__name__
    return RunLauncher


if _Slurm is not None:
    SlurmLauncher = _mixin(_Slurm)
    LocalLauncher = _mixin(_Local)
