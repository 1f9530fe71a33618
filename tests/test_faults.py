"""What clusters do to runs, in one process: damaged checkpoints, resumes that cannot continue
exactly, divergence, recovery checkpoints, SIGUSR1."""
import json
import logging
import os
import re
import signal
import types
from pathlib import Path

import pytest
import torch

from rpg_train.engine import Diverged, checkpoint, train
from rpg_train.engine.build import build
from rpg_train.engine.signals import Interrupted, StopSignals, pass_on
from rpg_train.engine.state import check as cross_rank_check
from rpg_train.engine.trainer import seed_everything
from rpg_train.errors import UserError

PER_EPOCH = 64 // 16  # QUICK: 64 training samples, batch 16


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_last_keeps_the_one_before_and_auto_falls_back_to_it(quick_cfg, tmp_path, caplog):
    full = train(quick_cfg("trainer.epochs=2", out="full"))
    cut = quick_cfg("trainer.epochs=2", "trainer.max_steps=4", out="cut")
    train(cut)
    train(quick_cfg("trainer.epochs=2", "trainer.resume=auto", "trainer.max_steps=5", out="cut"))
    last, prev = tmp_path / "cut" / "last.pt", tmp_path / "cut" / "last.prev.pt"
    assert (_state(last)["step"], _state(prev)["step"]) == (5, 4)
    last.write_bytes(last.read_bytes()[:1000])  # a torn copy
    with caplog.at_level(logging.WARNING, logger="rpg_train"):
        resumed = train(quick_cfg("trainer.epochs=2", "trainer.resume=auto", out="cut"))
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(last) in w and str(prev) in w and "unreadable" in w for w in warning)
    assert resumed["final_top1"] == full["final_top1"] and resumed["steps"] == full["steps"]


def test_a_damaged_checkpoint_given_by_path_is_refused(quick_cfg, tmp_path):
    train(quick_cfg(out="run"))
    bad = tmp_path / "run" / "last.pt"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"^trainer.resume='.*last.pt' is not a checkpoint"):
        train(quick_cfg(f"trainer.resume={bad}", out="other"))


@pytest.mark.parametrize("override, said", [
    ("data.batch_size=32", "data.batch_size 16 (now 32)"),
    ("trainer.epochs=3", "trainer.epochs 2 (now 3)"),
])
def test_resume_with_another_schedule_is_refused(quick_cfg, override, said):
    train(quick_cfg("trainer.epochs=2", "trainer.max_steps=2"))
    with pytest.raises(UserError, match=re.escape("was trained with " + said)):
        train(quick_cfg("trainer.epochs=2", "trainer.resume=auto", override))


def test_a_step_schedule_run_can_be_extended_with_more_epochs(quick_cfg, tmp_path):
    """The lr of step / exp / constant schedules does not depend on trainer.epochs."""
    straight = train(quick_cfg("sched=step", "sched.step_size=1", "trainer.epochs=2",
                               out="straight"))
    train(quick_cfg("sched=step", "sched.step_size=1", "trainer.epochs=1", out="ext"))
    longer = train(quick_cfg("sched=step", "sched.step_size=1", "trainer.epochs=2",
                             "trainer.resume=auto", out="ext"))
    assert longer["steps"] == straight["steps"] == 2 * PER_EPOCH
    a, b = (_state(tmp_path / d / "last.pt")["model"] for d in ("straight", "ext"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match=re.escape("trainer.epochs 2 (now 1)")):  # never fewer
        train(quick_cfg("sched=step", "trainer.epochs=1", "trainer.resume=auto", out="ext"))
    with pytest.raises(UserError, match=re.escape("sched.name step (now cosine)")):
        train(quick_cfg("trainer.epochs=3", "trainer.resume=auto", out="ext"))


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(quick_cfg,
                                                                            tmp_path):
    train(quick_cfg("trainer.epochs=2", "trainer.max_steps=4"))  # epoch 1, a good last.pt
    good = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(Diverged, match=f"at step {PER_EPOCH + 1}$"):
        train(quick_cfg("trainer.epochs=2", "trainer.resume=auto", "trainer.max_loss=1e-3"))
    assert (tmp_path / "run" / "last.pt").read_bytes() == good
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "diverged" and results["diverged_step"] == PER_EPOCH + 1
    assert results["diverged_loss"] > 1e-3


def test_a_stop_signal_never_saves_a_diverged_state(quick_cfg, tmp_path):
    """The guard reads the device only every nan_check_every steps, but always before the
    stop's save: a bad loss since the last read stops the run as diverged, saving nothing."""
    def check(run, at):  # a stop signal arrives after step 2
        if run.pos.step == 2:
            run.stop.signum = signal.SIGTERM
        return cross_rank_check(run, at)

    with pytest.raises(Diverged, match="at step 1$"):
        train(quick_cfg("trainer.max_loss=1e-3", "trainer.nan_check_every=1000"), checker=check)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_every_slurm_job_resumes_unless_given_a_checkpoint():
    from hydra_plugins.rpg_train_launcher.launcher import _resume, auto_resume

    assert auto_resume(["rpg.params=1e4"]) == ["rpg.params=1e4", "trainer.resume=auto"]
    assert auto_resume(["trainer.resume=/a/last.pt"]) == ["trainer.resume=/a/last.pt"]
    # a requeue after the run saved: its own last.pt, whatever the job started from
    assert _resume(["+trainer.resume=/a/last.pt", "x=1"]) == ["x=1", "trainer.resume=auto"]


def test_nan_policy_skip_skips_and_counts_bad_steps(quick_cfg, tmp_path, recwarn):
    cfg = quick_cfg("trainer.nan_policy=skip", "trainer.max_loss=1e-3")
    results = train(cfg)
    # the schedule steps past skipped steps on purpose: torch's warning about it is not shown
    assert not [w for w in recwarn if "lr_scheduler.step" in str(w.message)]
    assert results["skipped_steps"] == results["steps"] == PER_EPOCH
    seed_everything(cfg.trainer.seed)  # the initial model, as prepare builds it
    init = build(cfg, torch.device("cpu")).model.state_dict()
    trained = _state(tmp_path / "run" / "last.pt")["model"]
    params = [k for k in init if "running" not in k and "num_batches" not in k]
    assert params and all(torch.equal(init[k], trained[k]) for k in params)


def test_recovery_checkpoints_are_written_mid_epoch_and_change_nothing(quick_cfg, monkeypatch):
    plain = train(quick_cfg("trainer.checkpoint_every_min=0", out="plain"))
    saved, real = [], checkpoint.save_run
    monkeypatch.setattr(checkpoint, "save_run",
                        lambda run, name: (saved.append((name, run.pos.batch)), real(run, name)))
    often = train(quick_cfg("trainer.checkpoint_every_min=1e-9", out="often"))
    assert [b for n, b in saved if n == "last.pt"] == [1, 2, 3, PER_EPOCH]
    assert often["final_top1"] == plain["final_top1"]


@pytest.mark.parametrize("override, message", [
    ("trainer.nan_policy=ignore", "trainer.nan_policy='ignore' is not valid"),
    ("trainer.max_loss=0", "trainer.max_loss=0.0 must be positive"),
    ("trainer.checkpoint_every_min=-1", "trainer.checkpoint_every_min=-1.0 must not be"),
    ("trainer.dist_timeout_s=0", "trainer.dist_timeout_s=0.0 must be positive"),
])
def test_fault_settings_are_checked(quick_cfg, override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        train(quick_cfg(override))


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2])
def test_slurm_signals_stop_like_sigterm_and_are_passed_on(signum):
    """SLURM's warning signals set the stop flag while training; afterwards the handler that
    was there before (submitit's requeue) gets the signal, a default handler does not."""
    seen = []
    before = signal.signal(signum, lambda s, f: seen.append(s))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signum)
            assert stop.requested and seen == []
        assert str(Interrupted(stop.signum)) == signum.name
        pass_on(stop.signum)
        assert seen == [signum]
        signal.signal(signum, signal.SIG_DFL)
        pass_on(signum)  # the default would end the process: it is left alone
    finally:
        signal.signal(signum, before)


def test_load_latest_without_files_is_none(tmp_path):
    assert checkpoint.load_latest(tmp_path / "last.pt") is None


def _resume_choice(rank, world, port, run_dir, out):
    import torch.distributed as dist

    from rpg_train.engine import checkpoint as ck
    from rpg_train.engine.resume import load_resume

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    if rank == 1:  # this rank's view of the shared folder: only the older file is readable
        real = ck.load_latest
        ck.load_latest = lambda path, key="trainer.resume": real(ck.previous(path), key)
    cfg = types.SimpleNamespace(trainer=types.SimpleNamespace(resume="auto"))
    ckpt = load_resume(cfg, Path(run_dir))
    with open(out, "a") as f:
        f.write(f"{rank} {ckpt.path.name} {ckpt.state['step']}\n")
    dist.destroy_process_group()


def test_every_rank_resumes_from_the_file_rank_0_found(quick_cfg, tmp_path):
    import torch.multiprocessing as mp

    from conftest import free_port

    train(quick_cfg("trainer.epochs=2"))  # last.pt at epoch 2, last.prev.pt at epoch 1
    port = free_port()
    out = tmp_path / "chosen"
    mp.spawn(_resume_choice, args=(2, port, str(tmp_path / "run"), str(out)), nprocs=2)
    assert sorted(out.read_text().splitlines()) == [f"0 last.pt {2 * PER_EPOCH}",
                                                    f"1 last.pt {2 * PER_EPOCH}"]


def test_the_loss_bound_is_relative_to_the_start_and_at_least_chance():
    """trainer.max_loss_factor: a step's loss above factor x the starting loss (the first
    good step's, but at least ln(classes)) is bad; a finite loss below it never is."""
    from rpg_train.engine.guard import LossGuard

    def verdicts(losses, classes=10):
        guard = LossGuard("skip", None, 1, "cpu", factor=100, classes=classes)
        out = []
        for step, loss in enumerate(losses, 1):
            loss = torch.tensor(loss)
            out.append(guard.skip(loss))
            if not out[-1]:
                guard.watch(loss, step)
        return out

    chance = 100 * torch.log(torch.tensor(10.0)).item()  # 230.26: the start is at least ln 10
    assert verdicts([0.5, chance - 0.01, chance + 0.01]) == [False, False, True]
    assert verdicts([5.0, 499.0, 501.0, float("nan")]) == [False, False, True, True]
    assert verdicts([float("inf"), 3.0, 299.0, 301.0]) == [True, False, False, True]  # a bad
    # first step sets no start: the first good one does (3.0 here)
    guard = LossGuard("stop", None, 1, "cpu", factor=None, classes=10)  # null: no bound
    guard.watch(torch.tensor(2.3), 1)
    guard.watch(torch.tensor(1e30), 2)
    assert not guard.poll(2)


def test_weights_that_are_not_finite_are_never_saved(quick_cfg, tmp_path, monkeypatch):
    """A recovery checkpoint after an update that left a weight NaN: the run stops as
    diverged and last.pt keeps the step before."""
    real = checkpoint.save_run

    def save(run, name):
        if run.pos.step == 2:
            with torch.no_grad():
                next(run.plain_model.parameters()).view(-1)[0] = float("nan")
        real(run, name)

    monkeypatch.setattr(checkpoint, "save_run", save)
    with pytest.raises(Diverged, match=r"^the weights are not finite after step 2$"):
        train(quick_cfg("trainer.checkpoint_every_min=1e-9"))
    assert _state(tmp_path / "run" / "last.pt")["step"] == 1
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "diverged" and results["diverged_loss"] is None


@pytest.mark.parametrize("override, said", [
    ("optim.lr=0.4", "optim.lr 0.2 (now 0.4)"),
    ("optim.weight_decay=0.01", "optim.weight_decay 0.0005 (now 0.01)"),
    ("optim.momentum=0.5", "optim.momentum 0.9 (now 0.5)"),
    ("trainer.seed=3", "trainer.seed 0 (now 3)"),
    ("optim=adamw", "optim.name sgd (now adamw)"),  # was KeyError: 'step'
])
def test_resume_with_other_optimizer_settings_or_seed_is_refused(quick_cfg, tmp_path,
                                                                 override, said):
    """The checkpoint's optimizer state holds its lr, momentum and decay, and the data order
    its seed: a resume that changed one would record the new value and train with the old."""
    train(quick_cfg("trainer.epochs=2", "trainer.max_steps=2"))
    with pytest.raises(UserError) as info:
        train(quick_cfg("trainer.epochs=2", "trainer.resume=auto", override))
    assert str(info.value) == (
        f"trainer.resume='{tmp_path / 'run' / 'last.pt'}' was trained with {said}; resume "
        "with the same values (the checkpoint's optimizer state and data order hold them), "
        "or start a new run")


def test_a_cut_last_metrics_line_does_not_stop_a_resume(quick_cfg, tmp_path, caplog):
    full = train(quick_cfg("trainer.epochs=2", out="full"))
    train(quick_cfg("trainer.epochs=2", f"trainer.max_steps={PER_EPOCH}"))
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"epoch": 2, "step": 8, "lr": 0.0')  # a crash mid-write
    with caplog.at_level(logging.WARNING, logger="rpg_train"):
        resumed = train(quick_cfg("trainer.epochs=2", "trainer.resume=auto"))
    assert resumed["final_top1"] == full["final_top1"]
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert f"{metrics} line 2 is not a metrics row" in caplog.text
