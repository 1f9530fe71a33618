"""A run is a list of phases: training, then (rpg.prune.amount > 0) ring pruning's
fine-tuning. `trainer.fit` walks them; each is entered once, and entering it sets up what it
owns: its optimizer and schedule (optim.optimization, or the resumed checkpoint's states when
the run stopped in it) and, for the fine-tuning, the pruning itself with the position,
selection and checkpoints that go with it."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..rpg import ring_masks
from . import checkpoint, ring_pruning
from .loop import evaluate_run
from .optim import finetune_lr, optimization
from .state import Run

log = logging.getLogger("rpg_train")


@dataclass(frozen=True)
class Phase:
    name: str  # "train" or "finetune": optim.optimization's phase
    first: int  # its first epoch
    end: int  # one past its last


def of(cfg) -> list[Phase]:
    epochs, p = cfg.trainer.epochs, cfg.rpg.prune
    phases = [Phase("train", 0, epochs)]
    if p.amount:
        phases.append(Phase("finetune", epochs, epochs + p.finetune_epochs))
    return phases


def left(phase: Phase, run: Run) -> bool:
    """The run has left this phase (a resumed run that was pruned has left training)."""
    return phase.name == "train" and run.ring_prune is not None


def ready(phase: Phase, run: Run) -> bool:
    """The fine-tuning follows a training that is complete (not cut by trainer.max_steps)."""
    epochs = run.cfg.trainer.epochs
    return phase.name == "train" or (run.pos.start_epoch >= epochs
                                     or run.resume_point()[0] >= epochs)


def enter(phase: Phase, run: Run, row: dict | None) -> dict | None:
    """Set the phase up; returns the metrics row the run ends with if it ends here (the
    pruned model's, when the fine-tuning prunes), else `row`."""
    pruning = phase.name == "finetune" and run.ring_prune is None
    if pruning:
        row = _prune(run, row)
    run.optimizer, run.scheduler = optimization(
        run.cfg, run.plain_model, run.dist.world_size,
        run.batches_per_epoch // run.accumulate, phase.name)
    resumed = run.resumed_optimization
    if resumed is not None:  # the checkpoint was taken in this phase (the first entered)
        run.optimizer.load_state_dict(resumed["optimizer"])
        run.scheduler.load_state_dict(resumed["scheduler"])
        run.resumed_optimization = None
    if pruning:
        assert row is not None  # _prune returned it above
        _pruned(run, row)
    return row


def _prune(run: Run, row: dict | None) -> dict:
    """Prune now (the training epochs are done): the position is the end of training, also
    when a finished run was resumed to prune it; evaluated before and after."""
    cfg, epochs, pos = run.cfg, run.cfg.trainer.epochs, run.pos
    before = (row or evaluate_run(run))["val_top1"]
    record = ring_pruning.prune(run.plain_model, None if run.ema is None else run.ema.module,
                                cfg)
    pos.epoch, pos.batch, pos.evaluated = epochs - 1, run.batches_per_epoch, True
    val = evaluate_run(run)
    run.ring_prune = dict(record, before_top1=before, pruned_top1=val["val_top1"],
                          masks=ring_masks(run.plain_model))
    run.report = ring_pruning.pruned_report(run.report, record["pruned"])
    # best.pt and the held-out pick are of the pruned model from here on
    pos.best = val["val_top1"]
    pos.selected = ([val["heldout_top1"], epochs, val["val_top1"]]
                    if "heldout_top1" in val else None)
    return dict(epoch=epochs, **val)


def _pruned(run: Run, row: dict) -> None:
    """Say what pruning did and save the pruned model with the fine-tuning's optimizer."""
    cfg, p, rec = run.cfg, run.cfg.rpg.prune, run.ring_prune
    assert rec is not None  # _prune set it
    log.info("ring pruning: %d of %d ring entries zeroed (%.0f%%); test top-1 %.2f%% -> %.2f%%;"
             " fine-tuning %d epoch%s at optim.lr %g; trainable %d",
             rec["pruned"], rec["entries"], 100 * p.amount, rec["before_top1"], row["val_top1"],
             p.finetune_epochs, "" if p.finetune_epochs == 1 else "s", finetune_lr(cfg),
             run.report["trainable"])
    checkpoint.save_run(run, "last.pt")
    checkpoint.save_run(run, "best.pt")
    if run.steps_exhausted() and p.finetune_epochs:
        log.warning("trainer.max_steps=%d is reached: no fine-tuning steps are left for "
                    "rpg.prune.finetune_epochs=%d", cfg.trainer.max_steps, p.finetune_epochs)
