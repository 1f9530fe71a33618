"""One training epoch and one evaluation pass: short and linear (after DeiT's engine.py)."""
from __future__ import annotations

import contextlib
import logging
import time
import warnings

import torch
import torch.nn.functional as F

from ..log import Heartbeat, progress, status
from ..rpg import cached
from .distributed import all_reduce_sum, broadcast_buffers
from .ring_prune import total_epochs

log = logging.getLogger("rpg_train")


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


def train_one_epoch(run) -> None:
    """Train `run` through its current epoch, from `run.batch` on (a resumed epoch starts
    mid-way), adding to `run.sums`. One optimizer step per trainer.accumulate micro-batches
    (DDP syncs gradients on the last one only). Between steps `run.check` acts on stop
    signals, recovery checkpoints and divergence, so the state it saves is always that of
    whole steps."""
    model, opt, sched, scaler, guard = run.model, run.optimizer, run.scheduler, run.scaler, run.guard
    model.train()
    loader, sums, start_batch, accumulate = run.train_loader, run.sums, run.batch, run.accumulate
    loader.set_epoch(run.epoch, start_batch)
    bar = progress(loader, run.batches_per_epoch - start_batch, f"epoch {run.epoch + 1}",
                   run.show_progress)
    beat = Heartbeat(run.cfg.trainer.log_every_s, run.dist.is_main and bar.disable)
    start = time.perf_counter()
    step_loss, step_stats = 0.0, []  # this step's micro-batches: summed loss, metric sums
    try:
        for x, y in bar:
            if run.batch >= run.batches_per_epoch or run.steps_exhausted():
                break
            target = y
            if run.mixup is not None:  # soft targets; metrics stay on the true labels
                x, target = run.mixup(x, y)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            last = (run.batch + 1) % accumulate == 0
            with no_sync(model, not last):
                with run.autocast():
                    logits = model(x)
                    loss = (soft_cross_entropy(logits, target) if run.mixup is not None else
                            F.cross_entropy(logits, y, label_smoothing=run.label_smoothing))
                scaler.scale(loss / accumulate).backward()
            step_loss = step_loss + loss.detach()
            step_stats.append(sums.stats(loss, logits, y))
            run.batch += 1
            if not last:
                continue
            step_loss = step_loss / accumulate
            skipped = guard.skip(step_loss)
            if skipped:  # nan_policy=skip: no update, no metrics for this step
                opt.zero_grad(set_to_none=True)
            else:
                if run.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                guard.watch(step_loss, run.step + 1)
                if run.ema is not None:
                    run.ema.update(run.plain_model, step=run.step + 1)
                for stats in step_stats:
                    sums.add_stats(*stats)
            if skipped:  # the schedule moves on past a skipped step, which torch would
                with warnings.catch_warnings():  # report as the scheduler stepping first
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                            UserWarning)
                    sched.step()
            else:
                sched.step()
            run.step += 1
            if run.step % 20 == 0 and not bar.disable:
                rate = (run.batch - start_batch) * x.shape[0] / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{step_loss.item():.3f}",
                                lr=f"{sched.get_last_lr()[0]:.3g}", img_s=f"{rate:.0f}")
            if beat.due():
                log.info(status_line(run, start_batch, time.perf_counter() - start, x.shape[0],
                                     float(step_loss)))
            step_loss, step_stats = 0.0, []
            if run.batch < run.batches_per_epoch:  # after the last step: check(end_of_epoch)
                run.check()
    finally:
        sums.seconds += time.perf_counter() - start
        bar.close()
    run.check(end_of_epoch=True)


def status_line(run, start_batch: int, seconds: float, batch_size: int, loss: float) -> str:
    """Where training is, at the pace of this epoch so far (the heartbeat without a bar)."""
    done, epochs, per_epoch = run.batch - start_batch, total_epochs(run.cfg), run.batches_per_epoch
    left = per_epoch - run.batch + (epochs - run.epoch - 1) * per_epoch  # batches
    if run.cfg.trainer.max_steps:
        left = min(left, (run.cfg.trainer.max_steps - run.step) * run.accumulate)
    seconds = max(seconds, 1e-9)
    return status(run.epoch + 1, epochs, run.batch, per_epoch, loss,
                  done * batch_size * run.dist.world_size / seconds, left * seconds / max(done, 1))


def _for_eval(model):
    """The module a DDP wrapper holds (through torch.compile too), with rank 0's buffers
    (BatchNorm statistics): the wrapper's forward would broadcast them itself, a collective
    that a rank with an empty shard would never join."""
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, torch.nn.parallel.DistributedDataParallel):
        broadcast_buffers(inner.module)
        return inner.module
    return model


def soft_cross_entropy(logits, target):
    """Cross-entropy against a distribution over classes (mixup/cutmix targets)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def no_sync(model, skip: bool):
    """DDP's no_sync() for a micro-batch whose gradients are only accumulated; a no-op else."""
    inner = getattr(model, "_orig_mod", model)  # through torch.compile
    return inner.no_sync() if skip and hasattr(inner, "no_sync") else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model, loader, autocast, limit: int = 0, channels_last: bool = False,
             show: bool = True) -> dict:
    """Loss, top-1 and top-5 (top-k capped at the class count) over the loader, all ranks.
    Each generated weight is made once for the whole pass (`cached`; it finds the rings
    through a torch.compile wrapper too). Under DDP the wrapped module is evaluated with rank
    0's buffers, so no collective waits on a rank that has no batches. `show`: a bar on a
    terminal."""
    model = _for_eval(model)
    model.eval()
    loader.set_epoch(0)
    t = None
    total = min(len(loader), limit) if limit else len(loader)
    with cached(model), progress(loader, total, "eval", show) as bar:
        for i, (x, y) in enumerate(bar):
            if limit and i >= limit:
                break
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(x).float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, 1).indices
            hit = top == y[:, None]
            row = torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                               hit[:, 0].sum().double(), hit.any(1).sum().double(),
                               torch.tensor(float(y.numel()), dtype=torch.float64,
                                            device=y.device)])
            t = row if t is None else t + row
    if t is None:  # this rank's shard is empty (fewer samples than processes): adds nothing
        t = torch.zeros(4, dtype=torch.float64, device=loader.device)
    loss, top1, top5, n = all_reduce_sum(t).tolist()
    if n == 0:
        raise ValueError("evaluate: the loader holds no samples on any process")
    return dict(val_loss=loss / n, val_top1=100.0 * top1 / n, val_top5=100.0 * top5 / n)
