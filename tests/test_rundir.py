"""One run per run directory: a run in progress holds a lock that a second launch is refused
by (and that a killed run does not leave behind); a fresh run does not replace an earlier
run's records unless asked to."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rpg_train.engine import checkpoint, train
from rpg_train.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data=synthetic", "data.num_train=64", "data.num_val=32", "data.batch_size=16",
         "data.image_size=16", "trainer.epochs=1", "trainer.device=cpu", "rpg.params=2000",
         "trainer.limit_batches=1"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}

# a stand-in for a run in progress: takes the run directory's lock as a run does, then waits
HOLD = """
import sys, time
from pathlib import Path
from rpg_train.engine.rundir import lock
f = lock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=ENV, text=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _app(*args):
    return subprocess.run([sys.executable, "-m", "rpg_train", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def _busy(run: Path, pid: int) -> str:
    return (f"error: hydra.run.dir='{run}' has a run in progress (pid {pid} on "
            f"{os.uname().nodename}); wait for it to end or stop it, or give another "
            "hydra.run.dir")


def test_a_second_launch_into_a_running_run_is_refused_until_its_holder_dies(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        proc = _app(*SMALL, f"hydra.run.dir={run}")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [_busy(run, holder.pid)]
        assert not (run / ".hydra").exists()  # refused before Hydra wrote anything there
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the OS releases the lock
        holder.wait()
    proc = _app(*SMALL, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "results.json").read_text())["status"] == "finished"


def test_train_refuses_a_directory_whose_lock_is_held(quick_cfg, tmp_path):
    """The same lock in train() itself (multirun jobs, Python callers, rank 0 under DDP)."""
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(UserError) as info:
            train(quick_cfg("trainer.limit_batches=1"))
        assert f"error: {info.value}" == _busy(tmp_path / "run", holder.pid)
        assert not (tmp_path / "run" / "last.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert train(quick_cfg("trainer.limit_batches=1"))["status"] == "finished"


def test_a_fresh_run_in_a_used_directory_is_refused_unless_resumed_or_overwritten(
        quick_cfg, tmp_path):
    run = tmp_path / "run"
    first = train(quick_cfg("trainer.limit_batches=1", "trainer.epochs=2"))
    records = {n: (run / n).read_bytes() for n in ("last.pt", "best.pt", "results.json",
                                                   "metrics.jsonl", "config.yaml")}
    with pytest.raises(UserError) as info:  # forgot trainer.resume=auto; another model even
        train(quick_cfg("trainer.limit_batches=1", "model.name=resnet32"))
    assert str(info.value) == (
        f"hydra.run.dir='{run}' holds a run already (last.pt, best.pt, results.json, "
        "metrics.jsonl); continue it with trainer.resume=auto, or start this run in a new "
        "hydra.run.dir (trainer.overwrite=true replaces it)")
    elsewhere = tmp_path / "elsewhere.pt"  # a checkpoint from another directory
    elsewhere.write_bytes(records["last.pt"])
    with pytest.raises(UserError, match=re.escape("holds a run already")):
        train(quick_cfg("trainer.limit_batches=1", "trainer.epochs=2",
                        f"trainer.resume={elsewhere}"))
    assert {n: (run / n).read_bytes() for n in records} == records  # nothing touched
    # continuing is fine: auto, or a checkpoint of this directory
    assert train(quick_cfg("trainer.limit_batches=1", "trainer.epochs=2",
                           "trainer.resume=auto"))["steps"] == first["steps"]
    assert train(quick_cfg("trainer.limit_batches=1", "trainer.epochs=2",
                           f"trainer.resume={run / 'best.pt'}"))["steps"] == first["steps"]
    # asked explicitly: the old run's records go, the new run's come; so does its W&B run
    # id, or the new run would log into the old W&B run
    (run / "wandb_id.txt").write_text("oldrun12\n")
    again = train(quick_cfg("trainer.limit_batches=1", "model.name=resnet32",
                            "trainer.overwrite=true"))
    assert again["model"]["name"] == "resnet32" and again["steps"] == 1
    assert not (run / "last.prev.pt").exists() and not (run / "wandb_id.txt").exists()
    assert checkpoint.load(run / "last.pt").state["identity"]["model"]["name"] == "resnet32"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
