"""Divergence: a loss that is not finite, above trainer.max_loss, or above
trainer.max_loss_factor times the run's starting loss stops the run (nan_policy=stop) or has
its step skipped (nan_policy=skip).

The starting loss is the first step's, but at least ln(classes), the loss of a uniform guess:
a loss 100 times that of chance (or of the run's own start, if it started worse) is no longer
training, while a healthy run, whose loss falls from about ln(classes), never comes near it.
"""
from __future__ import annotations

import math

import torch

from .distributed import any_rank, gather_objects

POLICIES = ("stop", "skip")


class Diverged(Exception):
    """The loss, the test loss or the weights went bad; the run stops without saving over its
    last good checkpoint."""

    def __init__(self, step: int, loss: float, why: str = ""):
        self.step, self.loss = step, loss
        super().__init__(why or f"the loss was {loss:.4g} at step {step}")


class LossGuard:
    """stop: each step's verdict stays on the device (no host sync per step); the host reads
    the first bad step every `every` steps and before every checkpoint. skip: every step is
    judged on the host and agreed by all ranks before the optimizer steps (a sync per step,
    the price of skipping exactly the bad steps)."""

    def __init__(self, policy: str, max_loss: float | None, every: int, device,
                 factor: float | None = None, classes: int = 2):
        self.policy, self.every = policy, max(1, every)
        self.max_loss = math.inf if max_loss is None else max_loss
        self.factor = math.inf if factor is None else factor
        self.floor = math.log(max(classes, 2))  # the loss of a uniform guess
        # the starting loss the factor applies to; -1 until the first good step
        self.start = torch.full((), -1.0, dtype=torch.float32, device=device)
        self.first = torch.full((), -1, dtype=torch.int64, device=device)  # first bad step
        self.loss = torch.zeros((), dtype=torch.float32, device=device)  # its loss
        self.skipped = 0

    def _bad(self, loss: torch.Tensor) -> torch.Tensor:
        loss = loss.detach().float()
        return (~torch.isfinite(loss) | (loss > self.max_loss)
                | ((self.start > 0) & (loss > self.factor * self.start)))

    def skip(self, loss: torch.Tensor) -> bool:
        """nan_policy=skip: whether this step is bad on any rank (then it is counted)."""
        if self.policy != "skip":
            return False
        bad = any_rank(bool(self._bad(loss)), loss.device)
        self.skipped += bad
        return bad

    def watch(self, loss: torch.Tensor, step: int) -> None:
        """A step that was not skipped: the first good one sets the starting loss; under
        nan_policy=stop the first bad one is remembered. All on the device."""
        bad, loss = self._bad(loss), loss.detach().float()
        self.start = torch.where((self.start < 0) & ~bad,
                                 torch.clamp(loss, min=self.floor), self.start)
        if self.policy == "stop":
            new = bad & (self.first < 0)
            self.first = torch.where(new, step, self.first)
            self.loss = torch.where(new, loss, self.loss)

    def poll(self, step: int, force: bool = False) -> bool:
        """Whether a bad step has been seen on this rank; reads the device only every
        `every` steps, or when forced (before a checkpoint, at the end of an epoch)."""
        if self.policy != "stop" or not (force or step % self.every == 0):
            return False
        return int(self.first) >= 0

    def why(self, loss: float) -> str:
        """Which bound a bad loss broke."""
        if not math.isfinite(loss):
            return ""
        if loss > self.max_loss:
            return f" (above trainer.max_loss={self.max_loss:g})"
        return (f" (above trainer.max_loss_factor={self.factor:g} x the starting loss "
                f"{float(self.start):.4g})")

    def error(self) -> Diverged:
        """The first bad step over all ranks, and its loss (a collective under DDP: every
        rank calls it once the ranks agree that the run diverged)."""
        seen = [(s, loss) for s, loss in gather_objects((int(self.first), float(self.loss)))
                if s >= 0]
        if not seen:
            return Diverged(-1, float("nan"))
        step, loss = min(seen)
        return Diverged(step, loss, f"the loss was {loss:.4g}{self.why(loss)} at step {step}")

    def state(self) -> float:
        """The starting loss, for a checkpoint (-1 while unknown)."""
        return float(self.start)

    def load(self, start: float | None) -> None:
        if start is not None:
            self.start.fill_(start)
