"""One training epoch and the evaluations: short and linear (after DeiT's engine.py).
`evaluate_loader` is one pass over one loader; `evaluate_run` is a run's evaluation after an
epoch (the test set, the EMA weights, the held-out part)."""
from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings

import torch
import torch.nn.functional as F

from ..log import Heartbeat, progress, status
from ..rpg import cached
from . import checkpoint
from .distributed import all_reduce_sum, broadcast_buffers
from .guard import Diverged
from .signals import Interrupted
from .state import Act, Action, At, Run

log = logging.getLogger("rpg_train")


def train_one_epoch(run: Run) -> None:
    """Train `run` through its current epoch, from `run.pos.batch` on (a resumed epoch starts
    mid-way), adding to `run.pos.sums`. One optimizer step per trainer.accumulate micro-batches
    (DDP syncs gradients on the last one only). Between steps the cross-rank check
    (`run.checker`) says whether to stop, save or leave as diverged, and `perform` does it, so
    the state saved is always that of whole steps."""
    model, opt, sched, scaler = run.model, run.optimizer, run.scheduler, run.scaler
    guard = run.guard
    model.train()
    pos, loader, accumulate = run.pos, run.train_loader, run.accumulate
    sums, start_batch = pos.sums, pos.batch
    # the phase, when entered, built the optimizer; begin_epoch made the epoch's sums
    assert opt is not None and sums is not None
    loader.set_epoch(pos.epoch, start_batch)
    bar = progress(loader, run.batches_per_epoch - start_batch, f"epoch {pos.epoch + 1}",
                   run.show_progress)
    beat = Heartbeat(run.cfg.trainer.log_every_s, run.dist.is_main and bar.disable)
    start = time.perf_counter()
    # this step's micro-batches: summed loss, metric sums
    step_loss: torch.Tensor | float = 0.0
    step_stats: list[tuple[torch.Tensor, int]] = []
    try:
        for x, y in bar:
            if pos.batch >= run.batches_per_epoch or run.steps_exhausted():
                break
            target = y
            if run.mixup is not None:  # soft targets; metrics stay on the true labels
                x, target = run.mixup(x, y)
            if run.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            last = (pos.batch + 1) % accumulate == 0
            with no_sync(model, not last):
                with run.autocast():
                    logits = model(x)
                    loss = (soft_cross_entropy(logits, target) if run.mixup is not None else
                            F.cross_entropy(logits, y, label_smoothing=run.label_smoothing))
                scaler.scale(loss / accumulate).backward()
            step_loss = step_loss + loss.detach()
            step_stats.append(sums.stats(loss, logits, y))
            pos.batch += 1
            if not last:
                continue
            assert isinstance(step_loss, torch.Tensor)  # this step's micro-batches added to it
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
                guard.watch(step_loss, pos.step + 1)
                if run.ema is not None:
                    run.ema.update(run.plain_model, step=pos.step + 1)
                for stats in step_stats:
                    sums.add_stats(*stats)
            if skipped:  # the schedule moves on past a skipped step, which torch would
                with warnings.catch_warnings():  # report as the scheduler stepping first
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step",
                                            UserWarning)
                    sched.step()
            else:
                sched.step()
            pos.step += 1
            if pos.step % 20 == 0 and not bar.disable:
                rate = (pos.batch - start_batch) * x.shape[0] / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{step_loss.item():.3f}",
                                lr=f"{sched.get_last_lr()[0]:.3g}", img_s=f"{rate:.0f}")
            if beat.due():
                log.info(status_line(run, start_batch, time.perf_counter() - start, x.shape[0],
                                     float(step_loss)))
            step_loss, step_stats = 0.0, []
            if pos.batch < run.batches_per_epoch:  # after the last step: At.EPOCH_END
                perform(run, run.checker(run, At.STEP))
    finally:
        sums.seconds += time.perf_counter() - start
        bar.close()
    perform(run, run.checker(run, At.EPOCH_END))


def perform(run: Run, action: Action) -> None:
    """Do what the ranks agreed: leave as diverged (nothing saved), save last.pt and leave on
    a stop signal (by Interrupted: the trainer saves), or write a recovery checkpoint."""
    if action.act is Act.DIVERGED:
        raise run.guard.error()
    if action.act is Act.STOP:
        raise Interrupted(action.signum, run.stop.signum)
    if action.act is Act.SAVE:
        checkpoint.save_run(run, "last.pt")


def status_line(run: Run, start_batch: int, seconds: float, batch_size: int, loss: float) -> str:
    """Where training is, at the pace of this epoch so far (the heartbeat without a bar)."""
    pos, epochs, per_epoch = run.pos, run.total_epochs, run.batches_per_epoch
    done = pos.batch - start_batch
    left = per_epoch - pos.batch + (epochs - pos.epoch - 1) * per_epoch  # batches
    if run.cfg.trainer.max_steps:
        left = min(left, (run.cfg.trainer.max_steps - pos.step) * run.accumulate)
    seconds = max(seconds, 1e-9)
    return status(pos.epoch + 1, epochs, pos.batch, per_epoch, loss,
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
def evaluate_loader(model, loader, autocast, limit: int = 0, channels_last: bool = False,
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
        raise ValueError("evaluate_loader: the loader holds no samples on any process")
    return dict(val_loss=loss / n, val_top1=100.0 * top1 / n, val_top5=100.0 * top5 / n)


def evaluate_run(run: Run) -> dict:
    """Test metrics (val_*), the EMA weights' (ema_*) and the held-out part's (heldout_*)
    where the run has them. A loss that is not finite is divergence: the last update broke
    the model (the training loss of a step is judged before that step's update)."""
    args = (run.autocast, run.cfg.trainer.limit_batches, run.channels_last, run.show_progress)
    val = evaluate_loader(run.model, run.val_loader, *args)
    if run.ema is not None:
        # each rank's EMA followed its own BatchNorm statistics; rank 0's are the ones saved
        broadcast_buffers(run.ema.module)
        ema = evaluate_loader(run.ema.module, run.val_loader, *args)
        val.update({k.replace("val_", "ema_"): v for k, v in ema.items()})
    if run.holdout_loader is not None:
        held = evaluate_loader(run.model, run.holdout_loader, *args)
        val.update({k.replace("val_", "heldout_"): v for k, v in held.items()})
    for key, loss in val.items():  # the same on every rank (all-reduced)
        if key.endswith("_loss") and not math.isfinite(loss):
            what = {"val": "test", "ema": "EMA's test", "heldout": "held-out"}[key[:-5]]
            raise Diverged(run.pos.step, loss, f"the {what} loss was {loss:.4g} after step "
                           f"{run.pos.step}")
    return val
