"""The run's state: what `prepare` builds once, where training is (`Position`), and the
cross-rank check between steps, which says what to do (`Action`) and leaves the doing to the
loop. The loop, the phases and the outputs all take a `Run`."""
from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from .amp import autocast_for
from .distributed import Dist, Vote, all_reduce_sum, any_rank, max_rank
from .guard import LossGuard
from .signals import StopSignals


class EpochSums:
    """Running sums of an epoch, on the device (no sync per step); part of a checkpoint."""

    def __init__(self, device, state=None):
        self.t = torch.zeros(2, dtype=torch.float64, device=device)  # loss*n, correct
        self.n, self.seconds = 0, 0.0  # samples: known on the host, no device copy per step
        if state is not None:
            self.t.copy_(torch.as_tensor(state[:2], dtype=torch.float64))
            self.n, self.seconds = int(state[2]), state[3]

    @staticmethod
    def stats(loss, logits, target) -> tuple:
        """One batch's (loss * n, correct) on the device, and n."""
        n = target.numel()
        correct = (logits.detach().argmax(1) == target).sum().double()
        return torch.stack([loss.detach().double() * n, correct]), n

    def add_stats(self, t, n: int) -> None:
        self.t += t
        self.n += n

    def add(self, loss, logits, target):
        self.add_stats(*self.stats(loss, logits, target))

    def state(self) -> list[float]:
        return [*self.t.tolist(), self.n, self.seconds]

    def reduce(self) -> tuple[float, float, int]:
        totals = torch.cat([self.t, self.t.new_tensor([self.n])])
        loss, correct, n = all_reduce_sum(totals).tolist()
        return loss / max(n, 1), 100.0 * correct / max(n, 1), int(n)


@dataclass
class Position:
    """Where training is; a checkpoint saves it and a resumed run starts from it."""

    epoch: int = 0
    batch: int = 0  # micro-batches of this epoch done
    step: int = 0  # optimizer steps done
    sums: EpochSums | None = None  # the current epoch's running sums
    evaluated: bool = False  # the current epoch is evaluated, logged and saved
    best: float = -1.0  # the best test top-1 so far
    # the best held-out epoch so far: [held-out top-1, epoch (1-based), test top-1 then]
    selected: list | None = None
    elapsed0: float = 0.0  # seconds spent by the processes before a resume
    # where this process started: a resumed run's epoch, batch and that epoch's sums so far
    start_epoch: int = 0
    start_batch: int = 0
    start_sums: list | None = None


class Act(enum.Enum):
    CONTINUE = "continue"
    SAVE = "save"  # a recovery checkpoint is due (trainer.checkpoint_every_min)
    STOP = "stop"  # a stop signal: save and leave
    DIVERGED = "diverged"  # the loss went bad: leave without saving


@dataclass(frozen=True)
class Action:
    """What all ranks agreed to do; `signum` is the stop signal's number (STOP)."""

    act: Act
    signum: int = 0


CONTINUE = Action(Act.CONTINUE)


class At(enum.Enum):
    """Where the loop checks: between steps, after an epoch's last step, after its save."""

    STEP = "step"
    EPOCH_END = "epoch end"
    SAVED = "saved"


@dataclass(kw_only=True)
class Run:
    """One training run: built by `prepare`, read and advanced by the loop and the phases."""

    cfg: Any
    dist: Dist
    out_dir: Path
    model: nn.Module  # what the loop calls: the model, or its DDP / torch.compile wrapper
    plain_model: nn.Module  # the model itself, whose state_dict is saved
    spec: dict  # create_model's arguments
    identity: dict  # what a checkpoint must match to resume this run
    report: dict  # param_report (ring pruning takes its pruned entries out)
    train_loader: Any
    val_loader: Any
    holdout_loader: Any = None  # data.val_split > 0: the best epoch is picked on it
    batches_per_epoch: int  # micro-batches, a whole number of optimizer steps
    scaler: torch.amp.GradScaler
    amp_dtype: Any  # autocast dtype, None = off
    t0: float  # perf_counter at the start of this process's run
    dense_prune: dict | None = None  # the dense pruning baseline's record (build.Built.prune)
    ema: Any = None  # trainer.ema_decay: timm's ModelEmaV3 of plain_model
    mixup: Any = None  # data.mixup / data.cutmix: timm's Mixup (soft targets)
    # the phase's optimization (set when a phase is entered)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    # a resumed run's optimizer and schedule states, loaded when its phase is entered
    resumed_optimization: dict | None = None
    ring_prune: dict | None = None  # rpg.prune: the ring pruning's record, once pruned
    pos: Position = field(default_factory=Position)
    # the cross-rank check between steps; a test may pass another that wraps `check`
    checker: Callable[[Run, At], Action] = field(default_factory=lambda: check)
    resolved: dict = field(init=False)  # the config as plain containers (saved, logged)
    stop: StopSignals = field(init=False, default_factory=StopSignals)
    guard: LossGuard = field(init=False)  # divergence: trainer.nan_policy
    vote: Vote = field(init=False)  # the ranks' agreement on stop / save / diverged
    last_save: float = field(init=False)  # monotonic time of the last checkpoint

    def __post_init__(self):
        resolved = OmegaConf.to_container(self.cfg, resolve=True)
        assert isinstance(resolved, dict)  # a DictConfig resolves to a dict
        self.resolved = resolved
        t = self.cfg.trainer
        self.guard = LossGuard(t.nan_policy, t.max_loss, t.nan_check_every, self.device,
                               t.max_loss_factor, self.spec["num_classes"])
        self.vote = Vote(3, t.dist_timeout_s)
        self.last_save = time.monotonic()

    # the trainer settings the loop reads
    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def channels_last(self) -> bool:
        return self.cfg.trainer.channels_last

    @property
    def accumulate(self) -> int:
        return self.cfg.trainer.accumulate

    @property
    def grad_clip(self) -> float:
        return self.cfg.trainer.grad_clip

    @property
    def label_smoothing(self) -> float:
        return self.cfg.trainer.label_smoothing

    @property
    def show_progress(self) -> bool:
        return self.cfg.trainer.progress and self.dist.is_main

    @property
    def total_epochs(self) -> int:
        """Training's epochs, then ring pruning's fine-tuning's."""
        p = self.cfg.rpg.prune
        return self.cfg.trainer.epochs + (p.finetune_epochs if p.amount else 0)

    def autocast(self):
        return autocast_for(self.amp_dtype, self.device)

    def steps_exhausted(self) -> bool:
        max_steps = self.cfg.trainer.max_steps
        return max_steps > 0 and self.pos.step >= max_steps

    def recovery_due(self) -> bool:
        """Rank 0's clock says a recovery checkpoint is due (trainer.checkpoint_every_min)."""
        every = self.cfg.trainer.checkpoint_every_min
        return (every > 0 and self.dist.is_main
                and time.monotonic() - self.last_save >= every * 60)

    def elapsed(self) -> float:
        return self.pos.elapsed0 + time.perf_counter() - self.t0

    def begin_epoch(self, epoch: int) -> None:
        p = self.pos
        first = epoch == p.start_epoch
        p.epoch, p.batch = epoch, p.start_batch if first else 0
        p.sums = EpochSums(self.device, p.start_sums if first else None)
        p.evaluated = False

    def resume_point(self) -> tuple:
        """(epoch, batch, sums) that a resumed run continues from: the next epoch once this
        one is trained and evaluated, else this one's batch (it is then evaluated on resume)."""
        p = self.pos
        if p.evaluated and p.batch >= self.batches_per_epoch:
            return p.epoch + 1, 0, None
        assert p.sums is not None  # the epoch is unfinished, so begin_epoch set its sums
        return p.epoch, p.batch, p.sums.state()


def check(run: Run, at: At = At.STEP) -> Action:
    """All ranks agree (a step late under DDP, see Vote) whether one got a stop signal, the
    loss went bad, or a recovery checkpoint is due. At an epoch's end the vote is settled and
    the loss read; after its save only the stop signals are compared (a collective)."""
    if at is At.SAVED:
        signum = max_rank(run.stop.signum or 0, run.device)
        return Action(Act.STOP, signum) if signum else CONTINUE
    end = at is At.EPOCH_END
    flags = (run.stop.signum or 0, run.recovery_due(),
             run.guard.poll(run.pos.step, force=end))
    stop, save_now, diverged = run.vote(*flags)
    if end:
        stop, save_now, diverged = (max(a, b) for a, b in
                                    zip((stop, save_now, diverged), run.vote.settle()))
    if (save_now or stop) and not diverged:  # never save a state that may hold a bad step
        diverged = any_rank(run.guard.poll(run.pos.step, force=True), run.device)
    if diverged or stop:
        run.vote.settle()  # nothing left in flight when the run leaves the loop
    if diverged:
        return Action(Act.DIVERGED)
    if stop:
        return Action(Act.STOP, stop)
    if save_now and not end:  # the epoch's own save follows at its end
        return Action(Act.SAVE)
    return CONTINUE
