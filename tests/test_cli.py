"""The command line: multirun, interruption and resume, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data=synthetic", "data.num_train=64", "data.num_val=32", "data.batch_size=16",
         "data.image_size=16", "trainer.epochs=1", "trainer.device=cpu", "rpg.params=2000"]


def app(*args, module="rpg_train", **kw):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def test_multirun_runs_each_job_in_its_own_directory(tmp_path):
    proc = app("-m", *SMALL, "trainer.limit_batches=1", "rpg.params=1000,2000",
               f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    rings = sorted(json.loads((tmp_path / str(i) / "results.json").read_text())
                   ["param_report"]["ring"] for i in (0, 1))
    assert rings == [1000, 2000]


def test_a_sweep_with_a_failed_job_runs_the_others_and_exits_1(tmp_path):
    proc = app("-m", *SMALL, "trainer.limit_batches=1", "rpg.params=0,2000",
               f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1, proc.stderr
    assert not (tmp_path / "0" / "results.json").exists()
    assert (tmp_path / "1" / "results.json").is_file()  # the sweep went on
    assert proc.stderr.splitlines()[-1].startswith(
        "error: 1 job(s) of the sweep failed: 0: bad input: rpg.params=0 is out of range")
    # another sweep into the same directory that does not run job 0 again: job 0's marker
    # is not one of its failures
    again = app("-m", *SMALL, "trainer.limit_batches=1", "rpg.params=2000", "trainer.seed=0,1",
                "hydra.sweep.subdir=s${trainer.seed}", f"hydra.sweep.dir={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "0" / "failed.txt").is_file()


# a launcher sweep (about 12 s)
@pytest.mark.slow
def test_a_failed_slurm_job_fails_the_sweep(tmp_path):
    """The job runs in another process (submitit): its marker reaches the launching one."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rpg_train", "-m", "hydra/launcher=slurm_local",
         "hydra.launcher.tasks_per_node=1", *SMALL, "rpg.params=0",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].startswith(
        "error: 1 job(s) of the sweep failed: 0: bad input: rpg.params=0")


def _error_line(proc):
    lines = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines()
             if "error:" in line]
    assert len(lines) == 1, proc.stderr + proc.stdout
    return lines[0]


BAD_VALUES = {  # override: the line it fails with (exit 2, nothing trained)
    "rpg.params=2.5": "rpg.params=2.5 is neither an integer nor a fraction in (0, 1)",
    "trainer.resume={tmp}/none.pt": "trainer.resume='{tmp}/none.pt' does not exist",
    # the rest, a process each (about 5 s), in the slow suite; test_config checks them in-process
    "model.name=resnet19": "model.name='resnet19' is not a known model",
    "rpg.params=0": "rpg.params=0 is out of range",
    "optim.name=lamb": "optim.name='lamb' is not valid; choose one of: sgd, adamw",
    "rpg.params=1e9": "rpg.params=1000000000 is out of range",
    "rpg.prune.amount=1.5": "rpg.prune.amount=1.5 must be in [0, 1)",
}


@pytest.mark.parametrize("override", [*list(BAD_VALUES)[:2], *(
    pytest.param(k, marks=pytest.mark.slow) for k in list(BAD_VALUES)[2:])])
def test_bad_values_fail_with_one_line_before_training(tmp_path, override):
    message = BAD_VALUES[override].format(tmp=tmp_path)
    proc = app(*SMALL, override.format(tmp=tmp_path), f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2, (override, proc.stderr)
    assert message in _error_line(proc)
    assert not (tmp_path / "run" / "last.pt").exists()


HOSTILE = """
import os, sys, torch
from rpg_train.engine.checkpoint import REQUIRED

class Payload:  # unpickling it would create the marker file
    def __reduce__(self):
        return os.system, ("touch " + sys.argv[2],)

torch.save(dict.fromkeys(REQUIRED, 0) | {"config": Payload()}, sys.argv[1])
"""


def test_a_hostile_checkpoint_is_refused_by_resume_and_evaluate(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "ran"
    subprocess.run([sys.executable, "-c", HOSTILE, str(evil), str(marker)], check=True)
    reason = ("is not a safe rpg_train checkpoint: it holds objects other than tensors and "
              "plain containers (posix.system); refused without running them")
    proc = app(*SMALL, f"trainer.resume={evil}", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 2, proc.stderr
    assert _error_line(proc).endswith(f"error: trainer.resume='{evil}' {reason}")
    proc = app(f"ckpt={evil}", module="rpg_train.evaluate")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: ckpt='{evil}' {reason}"]
    assert not marker.exists()


BROKEN = """
import sys
from rpg_train.__main__ import main
from rpg_train.engine import optim

def build_optimizer(*args, **kw):
    raise ValueError("a bug in build_optimizer")

optim.build_optimizer = build_optimizer
sys.argv = ["rpg_train", *sys.argv[1:]]
main()
"""


def test_a_bug_exits_1_with_its_traceback_not_the_user_error_line(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-c", BROKEN, *SMALL, f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ValueError: a bug in build_optimizer" in proc.stderr
    assert "error: " not in proc.stderr + proc.stdout


def test_compose_errors_come_from_hydra(tmp_path):
    proc = app(*SMALL, "rpg.params=abc", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "rpg.params" in proc.stderr and "abc" in proc.stderr


def test_sigterm_saves_last_and_resume_matches_an_uninterrupted_run(tmp_path):
    args = [*SMALL, "data.num_train=3072", "trainer.epochs=2", "trainer.progress=false"]
    per_epoch = 3072 // 16
    assert app(*args, f"hydra.run.dir={tmp_path}/full").returncode == 0
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "rpg_train", *args,
                             f"hydra.run.dir={tmp_path}/cut"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 600  # generous: on a loaded machine epoch 1 can take minutes
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.02)
    assert metrics.read_text().strip(), "epoch 1 did not finish before the deadline"
    time.sleep(0.3)  # most likely inside epoch 2 by now; a stop between epochs is fine too
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 143, out
    assert "interrupted (SIGTERM)" in out and "trainer.resume=auto" in out
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut["epoch"] == 1 and cut["batch"] < per_epoch
    assert cut["step"] == per_epoch + cut["batch"]
    assert app(*args, "trainer.resume=auto", f"hydra.run.dir={tmp_path}/cut").returncode == 0
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = json.loads((tmp_path / "full" / "results.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert resumed["final_top1"] == full["final_top1"] and resumed["steps"] == full["steps"]


def test_torchrun_ddp_on_two_cpu_processes(tmp_path):
    """DDP through torchrun (gloo on the CPU), with Hydra's timestamped default run directory:
    both ranks train in one run directory, and only rank 0 writes or logs there."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "rpg_train", *SMALL, "trainer.epochs=2", "trainer.progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    run = tmp_path / made[0].parts[0] / made[0].parts[1] / made[0].parts[2]
    assert all(run in (tmp_path / m).parents for m in made), made  # one directory holds all
    assert (run / ".hydra" / "config.yaml").is_file()
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 * (64 // 2 // 16)  # each rank sees half of every epoch
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["epoch"] == 2
    start = "resnet20 network: ring 2000"
    assert (run / "train.log").read_text().count(start) == 1
    assert proc.stderr.count(start) + proc.stdout.count(start) == 1


# a launcher sweep of two processes (about 12 s)
@pytest.mark.slow
def test_slurm_launcher_runs_one_world_in_one_directory(tmp_path):
    """hydra/launcher=slurm_local (the SLURM launcher on submitit's local executor): the job's
    two tasks form one DDP world from submitit's environment, and only rank 0 writes."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "rpg_train", "-m", "hydra/launcher=slurm_local", *SMALL,
         "trainer.epochs=2", "trainer.progress=false", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = sweep / "0"
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "0", "multirun.yaml"]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["schedule"]["world size"] == 2 and len(ckpt["rng"]) == 2
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 * (64 // 2 // 16)  # each task sees half of every epoch
    assert (run / "train.log").read_text().count("resnet20 network: ring 2000") == 1
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and "resnet20 network" not in logs[1].read_text()  # rank 1 is quiet


def test_plain_srun_tasks_form_one_world_in_one_directory(tmp_path):
    """`srun --ntasks=2 python -m rpg_train ...`: each task has SLURM's variables and no
    torchrun ones; the two form one DDP world (rank and size from SLURM, the master from the
    node list), train in one run directory, and only rank 0 writes or logs there."""
    from conftest import free_port

    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2",
             "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost",
             "MASTER_PORT": str(free_port())}
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    tasks = [subprocess.Popen(
        [sys.executable, "-m", "rpg_train", *SMALL, "trainer.epochs=2", "trainer.progress=false"],
        cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**env, **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
             "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    out = [t.communicate(timeout=300)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], out[0][-3000:] + out[1][-3000:]
    runs = {p.parent for p in tmp_path.rglob("results.json")}
    assert len(runs) == 1, runs  # one run directory, not one per task
    run = runs.pop()
    made = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(run in p.parents for p in made), made  # rank 1 wrote nothing elsewhere
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 2 * (64 // 2 // 16)
    assert len(torch.load(run / "last.pt", weights_only=True)["rng"]) == 2
    start = "resnet20 network: ring 2000"
    assert (run / "train.log").read_text().count(start) == 1
    assert out[0].count(start) == 1 and start not in out[1]


def test_srun_tasks_take_the_master_from_the_node_list_as_submitit_does(monkeypatch):
    """The same rank, world, master address and port as the SLURM launcher's (submitit's
    TorchDistributedEnvironment) for the same job; none for the batch script itself."""
    from submitit.helpers import TorchDistributedEnvironment

    from rpg_train.engine.distributed import env_rank, slurm_world

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in dict(SLURM_JOB_ID="777", SLURM_NTASKS="8", SLURM_PROCID="5",
                           SLURM_LOCALID="1", SLURM_NODEID="1", SLURM_JOB_NUM_NODES="2",
                           SLURM_JOB_NODELIST="gpu[07-08]").items():
        monkeypatch.setenv(key, value)
    assert slurm_world() is None and env_rank() == 0  # the batch script: one process
    monkeypatch.setenv("SLURM_STEP_ID", "0")  # a task srun started
    world = slurm_world()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    ref = TorchDistributedEnvironment()
    assert world == dict(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", MASTER_ADDR="gpu07",
                         MASTER_PORT=str(ref.master_port))
    assert (ref.rank, ref.world_size, ref.master_addr) == (5, 8, "gpu07") and env_rank() == 5
    monkeypatch.setenv("MASTER_PORT", "29511")
    assert slurm_world()["MASTER_PORT"] == "29511"


def test_a_cuda_device_is_refused_in_one_line_when_it_is_not_there(monkeypatch):
    """Checked where the run starts (a launching node may have no GPU): no CUDA at all, or an
    index past the devices this process sees."""
    from rpg_train.engine.distributed import resolve_device
    from rpg_train.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^trainer.device='cuda:0' but CUDA is not available; "
                                        r"use cpu or auto$"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UserError) as info:
        resolve_device("cuda:2")
    assert str(info.value) == ("trainer.device='cuda:2' but this process sees 2 CUDA device(s) "
                               "(cuda:0 to cuda:1); use cuda or auto")
    assert resolve_device("cpu") == torch.device("cpu")
    # one of several processes takes its LOCAL_RANK's GPU whatever the index (setup)
    assert resolve_device("cuda:2", one_process=False) == torch.device("cuda", 2)


def _strict(text):
    """json.loads that refuses the bare NaN / Infinity Python's json writes by default."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_a_blown_up_update_is_never_saved_nor_reported_as_finished(tmp_path):
    """The update of a step is judged by the next step's loss, or by the evaluation after it:
    a run whose first update breaks the model saves nothing and exits 3 as diverged, whether
    training goes on (2 epochs) or ends right after it (max_steps=1)."""
    args = ["debug=synthetic", "trainer.limit_batches=1", "trainer.epochs=2", "optim.lr=1e30",
            "trainer.max_loss=10", "trainer.device=cpu"]
    for extra in ([], ["trainer.max_steps=1"]):
        run = tmp_path / f"run{len(extra)}"
        proc = app(*args, *extra, f"hydra.run.dir={run}")
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert _error_line(proc).endswith(
            "error: the test loss was nan after step 1; stopped (trainer.nan_policy=stop): "
            "nothing was saved")
        assert not (run / "last.pt").exists() and not (run / "best.pt").exists()
        results = _strict((run / "results.json").read_text())
        assert results["status"] == "diverged" and results["diverged_step"] == 1
        assert results["diverged_loss"] is None  # NaN, written as JSON's null


def test_the_default_bound_stops_a_run_whose_loss_explodes(tmp_path):
    """No trainer.max_loss given: the loss 100 times its start stops the run (exit 3)."""
    proc = app("optim.lr=1e8", "debug=fast", "trainer.device=cpu", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 3, proc.stderr[-3000:]
    line = _error_line(proc)
    assert "(above trainer.max_loss_factor=100 x the starting loss" in line, line
    assert line.endswith("at step 2; stopped (trainer.nan_policy=stop): nothing was saved")
    assert _strict((tmp_path / "results.json").read_text())["status"] == "diverged"


# two launcher sweeps (about 25 s); test_faults refuses the same changes in-process
@pytest.mark.slow
def test_the_slurm_launchers_own_resume_refuses_changed_settings(tmp_path):
    """Every job of hydra/launcher=slurm resumes by itself (trainer.resume=auto): a sweep run
    again into the same directory with another optim.lr is refused, not silently resumed."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"

    def launch(*extra):
        return subprocess.run(
            [sys.executable, "-m", "rpg_train", "-m", "hydra/launcher=slurm_local",
             "hydra.launcher.tasks_per_node=1", *SMALL, "trainer.limit_batches=1",
             "trainer.progress=false", *extra, f"hydra.sweep.dir={sweep}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert launch().returncode == 0
    proc = launch("optim.lr=0.4")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        "error: 1 job(s) of the sweep failed: 0: bad input: trainer.resume="
        f"'{sweep / '0' / 'last.pt'}' was trained with optim.lr 0.2 (now 0.4); resume with "
        "the same values (the checkpoint's optimizer state and data order hold them), or "
        "start a new run")
