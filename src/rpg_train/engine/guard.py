"""Divergence: a loss that is not finite, or above trainer.max_loss, stops the run
(nan_policy=stop) or has its step skipped (nan_policy=skip)."""
from __future__ import annotations

import math

import torch

from .distributed import any_rank, gather_objects

POLICIES = ("stop", "skip")


class Diverged(Exception):
    """The loss went bad; the run stops without saving over its last good checkpoint."""

    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss
        super().__init__(f"the loss was {loss:.4g} at step {step}")


class LossGuard:
    """stop: each step's verdict stays on the device (no host sync per step); the host reads
    the first bad step every `every` steps and before every checkpoint. skip: every step is
    judged on the host and agreed by all ranks before the optimizer steps (a sync per step,
    the price of skipping exactly the bad steps)."""

    def __init__(self, policy: str, max_loss: float | None, every: int, device):
        self.policy, self.every = policy, max(1, every)
        self.max_loss = math.inf if max_loss is None else max_loss
        self.first = torch.full((), -1, dtype=torch.int64, device=device)  # first bad step
        self.loss = torch.zeros((), dtype=torch.float32, device=device)  # its loss
        self.skipped = 0

    def _bad(self, loss: torch.Tensor) -> torch.Tensor:
        loss = loss.detach().float()
        return ~torch.isfinite(loss) | (loss > self.max_loss)

    def skip(self, loss: torch.Tensor) -> bool:
        """nan_policy=skip: whether this step is bad on any rank (then it is counted)."""
        if self.policy != "skip":
            return False
        bad = any_rank(bool(self._bad(loss)), loss.device)
        self.skipped += bad
        return bad

    def watch(self, loss: torch.Tensor, step: int) -> None:
        """nan_policy=stop: remember the first bad step, on the device."""
        if self.policy == "stop":
            new = self._bad(loss) & (self.first < 0)
            self.first = torch.where(new, step, self.first)
            self.loss = torch.where(new, loss.detach().float(), self.loss)

    def poll(self, step: int, force: bool = False) -> bool:
        """Whether a bad step has been seen on this rank; reads the device only every
        `every` steps, or when forced (before a checkpoint, at the end of an epoch)."""
        if self.policy != "stop" or not (force or step % self.every == 0):
            return False
        return int(self.first) >= 0

    def error(self) -> Diverged:
        """The first bad step over all ranks, and its loss (a collective under DDP: every
        rank calls it once the ranks agree that the run diverged)."""
        seen = [(s, loss) for s, loss in gather_objects((int(self.first), float(self.loss)))
                if s >= 0]
        return Diverged(*min(seen)) if seen else Diverged(-1, float("nan"))
