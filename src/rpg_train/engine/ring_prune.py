"""Ring pruning inside a run (rpg.prune): once trainer.epochs are trained, the smallest ring
entries are zeroed (rpg_train.rpg.prune_ring), the pruned model is evaluated, and it is
fine-tuned for rpg.prune.finetune_epochs more epochs with an optimizer and schedule of its
own (the pruning baseline's recipe: a tenth of the lr by default, no warm-up), the pruned
entries held at 0. The record (and the masks) travel in every checkpoint after that, so a
resumed run is pruned the same way; a finished run is pruned by resuming it with the keys set.
"""
from __future__ import annotations

import logging

from omegaconf import OmegaConf

from ..rpg import prune_ring, ring_masks, rings_of, set_ring_masks
from .optim import build_optimizer, build_scheduler

log = logging.getLogger("rpg_train")

SETTINGS = ("amount", "finetune_epochs", "lr")  # a resumed pruned run must keep these


def finetune_lr(cfg) -> float:
    """The fine-tuning's optim.lr (per optim.lr_batch images, as optim.lr is)."""
    p = cfg.rpg.prune
    return cfg.optim.lr / 10 if p.lr is None else p.lr


def total_epochs(cfg) -> int:
    p = cfg.rpg.prune
    return cfg.trainer.epochs + (p.finetune_epochs if p.amount else 0)


def pending(run) -> bool:
    """The run prunes its ring and has not yet."""
    return bool(run.cfg.rpg.prune.amount) and run.ring_prune is None


def _finetune_optimizer(run, global_batch: int) -> None:
    """The fine-tuning's own optimizer (its state starts at 0, so masked entries stay 0 under
    momentum and weight decay) and schedule over its epochs, without warm-up."""
    cfg = run.cfg
    lr = finetune_lr(cfg)
    optim = OmegaConf.merge(cfg.optim, {"lr": lr})
    # sched.min_lr is in optim.lr's units: scaled with the lr, the floor stays below it
    sched = OmegaConf.merge(cfg.sched, {"warmup_epochs": 0,
                                        "min_lr": cfg.sched.min_lr * lr / cfg.optim.lr})
    run.optimizer = build_optimizer(optim, run.plain_model, global_batch)
    steps = run.batches_per_epoch // cfg.trainer.accumulate
    run.scheduler = build_scheduler(sched, optim.lr, run.optimizer,
                                    max(cfg.rpg.prune.finetune_epochs, 1), steps)


def pruned_report(report: dict, pruned: int) -> dict:
    """param_report's counts with the pruned ring entries gone from the trainable ones."""
    trainable = report["trainable"] - pruned
    return dict(report, trainable=trainable, ring_nonzero=report["ring"] - pruned,
                compression=report["dense"] / trainable)


def resume(run, ckpt, global_batch: int) -> None:
    """A checkpoint taken after pruning: the same masks, the fine-tuning's optimizer and
    schedule (their states are loaded next); refused if the rpg.prune settings changed."""
    record = ckpt.state["ring_prune"]
    now = {k: run.cfg.rpg.prune[k] for k in SETTINGS}
    now["lr"] = finetune_lr(run.cfg)
    diff = [f"rpg.prune.{k} {record[k]} (now {now[k]})" for k in SETTINGS if record[k] != now[k]]
    trained = record["trained_epochs"]  # pruned after these
    if trained != run.cfg.trainer.epochs:
        diff.append(f"trainer.epochs {trained} (now {run.cfg.trainer.epochs})")
    if diff:
        raise ckpt.error("was pruned with " + ", ".join(diff) + "; resume with the same values "
                         "or prune the unpruned run's checkpoint")
    # the model came with its masks and report (build.model_from_checkpoint); the EMA copy too
    if run.ema is not None:
        set_ring_masks(run.ema.module, record["masks"])
    run.ring_prune = record
    _finetune_optimizer(run, global_batch)


def begin(run, row: dict | None, evaluate_all, save, global_batch: int) -> dict | None:
    """Prune now (the training epochs are done), if the run prunes and has not: evaluate
    before and after, switch to the fine-tuning optimizer, save. Returns the pruned model's
    metrics row (or `row` unchanged when there was nothing to do)."""
    if not pending(run):
        return row
    cfg, epochs = run.cfg, run.cfg.trainer.epochs
    before = (row or evaluate_all(run))["val_top1"]
    entries = sum(r.weight.numel() for r in rings_of(run.plain_model))
    pruned = prune_ring(run.plain_model, cfg.rpg.prune.amount)
    if run.ema is not None:  # the average restarts from the pruned weights
        run.ema.module.load_state_dict(run.plain_model.state_dict())
        set_ring_masks(run.ema.module, ring_masks(run.plain_model))
    # the position is the end of training, also when a finished run was resumed to prune it
    run.epoch, run.batch, run.evaluated = epochs - 1, run.batches_per_epoch, True
    val = evaluate_all(run)
    run.ring_prune = dict(
        amount=cfg.rpg.prune.amount, finetune_epochs=cfg.rpg.prune.finetune_epochs,
        trained_epochs=epochs,
        lr=finetune_lr(cfg), entries=entries, pruned=pruned, before_top1=before,
        pruned_top1=val["val_top1"], masks=ring_masks(run.plain_model))
    run.report = pruned_report(run.report, pruned)
    _finetune_optimizer(run, global_batch)
    # best.pt and the held-out pick are of the pruned model from here on
    run.best = val["val_top1"]
    run.selected = ([val["heldout_top1"], epochs, val["val_top1"]]
                    if "heldout_top1" in val else None)
    log.info("ring pruning: %d of %d ring entries zeroed (%.0f%%); test top-1 %.2f%% -> %.2f%%;"
             " fine-tuning %d epoch%s at optim.lr %g; trainable %d",
             pruned, entries, 100 * cfg.rpg.prune.amount, before, val["val_top1"],
             cfg.rpg.prune.finetune_epochs, "" if cfg.rpg.prune.finetune_epochs == 1 else "s",
             finetune_lr(cfg), run.report["trainable"])
    save(run, "last.pt")
    save(run, "best.pt")
    if run.steps_exhausted() and cfg.rpg.prune.finetune_epochs:
        log.warning("trainer.max_steps=%d is reached: no fine-tuning steps are left for "
                    "rpg.prune.finetune_epochs=%d", cfg.trainer.max_steps,
                    cfg.rpg.prune.finetune_epochs)
    return dict(epoch=epochs, **val)


def results(record: dict) -> dict:
    """What results.json keeps of the record (not the masks)."""
    return {k: v for k, v in record.items() if k != "masks"}
