"""Two CPU processes (gloo): a signal on one rank stops both at the same step and the resumed
run ends equal to an uninterrupted one; a killed rank takes the other down with one line."""
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
ARGS = ["data=synthetic", "data.num_train=3072", "data.num_val=32", "data.batch_size=16",
        "data.image_size=16", "trainer.epochs=2", "trainer.device=cpu", "rpg.params=2000",
        "trainer.progress=false"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "rpg_train"]
pytestmark = pytest.mark.slow


def _rows(run: Path) -> list:
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if k not in ("elapsed", "images_per_sec")} for r in rows]


def _wait_for_epoch_1(run: Path, proc) -> None:
    metrics, deadline = run / "metrics.jsonl", time.time() + 600
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, "the run ended before its first epoch did"
        time.sleep(0.05)
    time.sleep(0.5)  # inside epoch 2 by now


def _workers(launcher_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_on_one_rank_stops_both_and_resume_matches(tmp_path, signum):
    full = subprocess.run([*TORCHRUN, *ARGS, f"hydra.run.dir={tmp_path}/full"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr[-2000:]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*TORCHRUN, *ARGS, f"hydra.run.dir={cut}"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_epoch_1(cut, proc)
    os.kill(_workers(proc.pid)[-1], signum)  # one rank only
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0 and f"interrupted ({signum.name})" in out, out[-3000:]
    state = torch.load(cut / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["batch"] < 3072 // 32
    assert len(state["sums"]) == 2  # each rank's own running sums
    again = subprocess.run([*TORCHRUN, *ARGS, "trainer.resume=auto", f"hydra.run.dir={cut}"],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _rows(cut) == _rows(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(cut / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_rank_stops_the_other_with_one_line_and_resume_works(tmp_path):
    """As under srun: each process started on its own, with no torchrun agent to clean up."""
    run = tmp_path / "run"
    args = [*ARGS, "trainer.epochs=3", "trainer.dist_timeout_s=60", f"hydra.run.dir={run}"]
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, "-m", "rpg_train", *args], cwd=ROOT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    _wait_for_epoch_1(run, procs[0])
    procs[1].kill()
    t0 = time.time()
    out, _ = procs[0].communicate(timeout=120)
    assert time.time() - t0 < 90
    assert procs[0].returncode == 1 and "another process of this run was lost" in out, out
    assert "Traceback" not in out
    procs[1].communicate()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    again = subprocess.run([*TORCHRUN, *args, "trainer.resume=auto"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "results.json").read_text())["epochs"] == 3


def _task_pid(folder: Path, rank: int) -> int | None:
    """The pid of the submitit task of `rank` whose job folder is under `folder`."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(kv.split("=", 1) for kv in environ.read_bytes().decode(
                errors="replace").split("\0") if "=" in kv)
        except OSError:
            continue
        if (env.get("SUBMITIT_LOCAL_GLOBALID") == str(rank)
                and str(folder) in env.get("SUBMITIT_LOCAL_COMMAND", "")):
            return int(environ.parent.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds tasks through /proc")
def test_a_preempted_slurm_job_requeues_and_ends_equal(tmp_path):
    """SIGUSR2 (submitit's preemption signal) on rank 1 of a hydra/launcher=slurm_local job:
    both tasks save last.pt, rank 0 requeues the job, and the requeued run resumes and ends
    equal to an uninterrupted one."""
    args = [sys.executable, "-m", "rpg_train", "-m", "hydra/launcher=slurm_local", *ARGS]
    full = subprocess.run([*args, f"hydra.sweep.dir={tmp_path}/full"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr[-2000:]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*args, f"hydra.sweep.dir={cut}"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_epoch_1(cut / "0", proc)
    os.kill(_task_pid(cut / ".submitit", 1), signal.SIGUSR2)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    log0 = next((cut / ".submitit").glob("*/*_0_log.out")).read_text()
    assert "interrupted (SIGUSR2)" in log0 and "Requeued job" in log0, log0[-3000:]
    assert "resumed from" in log0.split("Requeued job", 1)[1], log0[-3000:]
    assert _rows(cut / "0") == _rows(tmp_path / "full" / "0")
    a = torch.load(tmp_path / "full" / "0" / "last.pt", weights_only=True)["model"]
    b = torch.load(cut / "0" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
