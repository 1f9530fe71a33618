"""Ring pruning inside a run (rpg.prune), not to be confused with the dense pruning baseline
(dense_pruning.py): once trainer.epochs are trained, the smallest ring entries are zeroed
(rpg_train.rpg.prune_ring) and the pruned model is fine-tuned for rpg.prune.finetune_epochs
more epochs (the fine-tuning phase, phases.py: its own optimizer and schedule from
optim.optimization), the pruned entries held at 0. The record (and the masks) travel in every
checkpoint after that, so a resumed run is pruned the same way; a finished run is pruned by
resuming it with the keys set.
"""
from __future__ import annotations

import torch.nn as nn

from ..rpg import prune_ring, ring_masks, rings_of, set_ring_masks
from .checkpoint import Checkpoint
from .optim import finetune_lr

SETTINGS = ("amount", "finetune_epochs", "lr")  # a resumed pruned run must keep these


def pruned_report(report: dict, pruned: int) -> dict:
    """param_report's counts with the pruned ring entries gone from the trainable ones."""
    trainable = report["trainable"] - pruned
    return dict(report, trainable=trainable, ring_nonzero=report["ring"] - pruned,
                compression=report["dense"] / trainable)


def check_resume(ckpt: Checkpoint, cfg) -> dict:
    """A checkpoint taken after pruning: its record, refused if the rpg.prune settings or the
    training epochs changed (the model comes with its masks: build.model_from_checkpoint)."""
    record = ckpt.state["ring_prune"]
    now = {k: cfg.rpg.prune[k] for k in SETTINGS}
    now["lr"] = finetune_lr(cfg)
    diff = [f"rpg.prune.{k} {record[k]} (now {now[k]})" for k in SETTINGS if record[k] != now[k]]
    if record["trained_epochs"] != cfg.trainer.epochs:  # pruned after these
        diff.append(f"trainer.epochs {record['trained_epochs']} (now {cfg.trainer.epochs})")
    if diff:
        raise ckpt.error("was pruned with " + ", ".join(diff) + "; resume with the same values "
                         "or prune the unpruned run's checkpoint")
    return record


def prune(model: nn.Module, ema: nn.Module | None, cfg) -> dict:
    """Zero rpg.prune.amount of the ring entries of `model` (and restart `ema`, the EMA copy,
    from the pruned weights); returns the record without its test figures."""
    entries = sum(r.weight.numel() for r in rings_of(model))
    pruned = prune_ring(model, cfg.rpg.prune.amount)
    if ema is not None:  # the average restarts from the pruned weights
        ema.load_state_dict(model.state_dict())
        masks = ring_masks(model)
        assert masks is not None  # prune_ring gave every ring a mask (it fails without rings)
        set_ring_masks(ema, masks)
    return dict(amount=cfg.rpg.prune.amount, finetune_epochs=cfg.rpg.prune.finetune_epochs,
                trained_epochs=cfg.trainer.epochs, lr=finetune_lr(cfg), entries=entries,
                pruned=pruned)


def results(record: dict) -> dict:
    """What results.json keeps of the record (not the masks)."""
    return {k: v for k, v in record.items() if k != "masks"}
