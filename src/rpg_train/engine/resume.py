"""Resuming a run: which checkpoint (`load_resume`), what it must match (`check`), and the
state it brings back (`restore`; the phase it was in loads its optimizer and schedule).

Settings a resumed run must keep because the checkpoint holds them: the optimizer's state
dict brings back its own lr, momentum, betas and weight decay, and the data order follows
trainer.seed. A resume that changed one would record the new value in config.yaml and
results.json while training with the old one, so it is refused in one line."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from omegaconf import OmegaConf

from ..rpg import set_ring_masks
from . import checkpoint
from .checkpoint import Checkpoint
from .distributed import broadcast_object
from .state import Run

log = logging.getLogger("rpg_train")

KEPT = ("optim.name", "optim.lr", "optim.lr_batch", "optim.weight_decay", "optim.wd_norm",
        "optim.no_wd_1d", "trainer.seed")
BY_OPTIMIZER = {"sgd": ("optim.momentum", "optim.nesterov"), "adamw": ("optim.betas",)}


def check_kept(ckpt: Checkpoint, cfg) -> None:
    """Refuse a resume whose optimizer settings or seed differ from the checkpoint's config
    (a key the checkpoint's config lacks, from an older version, is not checked)."""
    theirs = ckpt.state["config"]
    mine = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    diff = []
    for key in KEPT + BY_OPTIMIZER.get(mine["optim"]["name"], ()):
        group, name = key.split(".")
        if name in theirs.get(group, {}) and theirs[group][name] != mine[group][name]:
            diff.append(f"{key} {theirs[group][name]} (now {mine[group][name]})")
        if diff and key == "optim.name":  # the others belong to another optimizer
            break
    if diff:
        raise ckpt.error("was trained with " + ", ".join(diff) + "; resume with the same "
                         "values (the checkpoint's optimizer state and data order hold them), "
                         "or start a new run")


def load_resume(cfg, out_dir: Path) -> Checkpoint | None:
    """trainer.resume: auto takes last.pt in the run directory (or, if that is damaged, the
    one before it), the file rank 0 found: on a shared file system another rank may see an
    older or half-copied file, and ranks resumed from different steps would wait on each
    other's collectives. A path is loaded as it is."""
    r = cfg.trainer.resume
    if r != "auto":
        return checkpoint.load(r) if r else None
    ckpt = checkpoint.load_latest(out_dir / "last.pt")
    mine = None if ckpt is None else str(ckpt.path)
    chosen = broadcast_object(mine)
    if chosen == mine:
        return ckpt
    return None if chosen is None else checkpoint.load(chosen)


def check_schedule(ckpt: Checkpoint, cfg, world_size: int) -> None:
    """Refuse a resume whose schedule differs. Only cosine's lr depends on the number of
    epochs: a step, exp or constant run may be resumed with more trainer.epochs (never fewer)
    to train on."""
    mine = checkpoint.schedule(cfg, world_size)
    theirs = ckpt.state["schedule"]  # a key added to it later is missing in older files
    name, before = theirs.get("sched.name"), theirs.get("trainer.epochs")
    longer = before is not None and mine["trainer.epochs"] > before
    if name in ("step", "exp", "constant") and longer:
        mine["trainer.epochs"] = before  # longer is fine
    checkpoint.check_schedule(ckpt, mine)


def restore(run: Run, ckpt: Checkpoint) -> None:
    """Position, scaler, EMA, divergence guard and RNGs; the model's weights and masks come
    with the model (build.model_from_checkpoint), the optimizer and schedule states with the
    phase the checkpoint was in. Each rank takes its own RNG states when the world size is
    the same."""
    s, pos = ckpt.state, run.pos
    run.scaler.load_state_dict(s["scaler"])
    if run.ema is not None:
        if s["ema"] is None:
            raise ckpt.error("holds no EMA of the weights; resume with the same "
                             "trainer.ema_decay as the run had")
        if s["ring_prune"] is not None:
            set_ring_masks(run.ema.module, s["ring_prune"]["masks"])
        run.ema.module.load_state_dict(s["ema"])
    run.ring_prune = s["ring_prune"]
    run.resumed_optimization = dict(optimizer=s["optimizer"], scheduler=s["scheduler"])
    pos.start_epoch, pos.start_batch, pos.step = s["epoch"], s["batch"], s["step"]
    pos.best, pos.elapsed0, pos.selected = s["best_top1"], s["elapsed"], s["selected"]
    rank, world = run.dist.rank, run.dist.world_size
    sums = s["sums"]  # None at an epoch's start
    pos.start_sums = None if sums is None else checkpoint.for_rank(sums, rank, world)
    run.guard.skipped = s["skipped_steps"]
    run.guard.load(s["loss_start"])
    checkpoint.set_rng_state(checkpoint.for_rank(s["rng"], rank, world))
    log.info("resumed from %s at epoch %d batch %d", ckpt.path, pos.start_epoch,
             pos.start_batch)
