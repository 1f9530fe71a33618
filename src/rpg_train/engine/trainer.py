"""train(cfg): the whole run, callable from Python and tests without sys.argv.

`prepare` builds the run's state (state.Run); `fit` walks its phases (phases.py: training,
then ring pruning's fine-tuning) and each phase's epochs (after DeiT's main.py): train one
epoch, evaluate, log, save.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import cast

import torch
from omegaconf import OmegaConf

from ..errors import UserError
from ..log import method_label, preparing
from ..seeding import seed_everything
from . import checkpoint, phases, resume, ring_pruning, rundir
from .amp import amp_dtype
from .build import build
from .distributed import Dist, RankLost, broadcast_object, lost_rank, setup, teardown
from .guard import Diverged
from .loop import evaluate_run, perform, train_one_epoch
from .outputs import RunLogger
from .signals import Interrupted
from .state import At, Run, check

log = logging.getLogger("rpg_train")


def train(cfg, *, checker=None) -> dict:
    """Train as the config says; returns the results written to results.json. `checker`:
    the cross-rank check between steps (state.check; a test passes one that wraps it)."""
    from ..validation import validate  # the top layer (it reads the engine's registries)

    t0 = time.perf_counter()
    validate(cfg)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)
    dist = setup(cfg.trainer.device, cfg.trainer.dist_timeout_s)
    if not dist.is_main:  # one voice: rank 0 logs, the others only warn
        log.setLevel(logging.WARNING)
    try:
        # one run directory, rank 0's (every rank composed its own config, and a timestamped
        # default can differ between them)
        cfg.out_dir = broadcast_object(str(cfg.out_dir))
        log.info("run directory: %s", cfg.out_dir)  # first: where to look while it runs
        with rundir.claimed(Path(cfg.out_dir), cfg.trainer, dist.is_main):
            return fit(prepare(cfg, dist, Path(cfg.out_dir), t0, checker))
    except RuntimeError as err:
        if dist.world_size > 1 and lost_rank(err):
            raise RankLost(str(err).splitlines()[0][:300]) from err
        raise
    finally:
        teardown()


def prepare(cfg, dist: Dist, out_dir: Path, t0: float, checker=None) -> Run:
    """Everything before the first step: model, data, and the resumed state (each phase
    builds its optimizer when it is entered)."""
    seed_everything(cfg.trainer.seed)
    log.info(preparing(cfg.model.name,
                       method_label(cast(dict, OmegaConf.to_container(cfg, resolve=True))),
                       cfg.data.name))
    ckpt = resume.load_resume(cfg, out_dir)
    if ckpt is not None:
        resume.check_schedule(ckpt, cfg, dist.world_size)
        resume.check_kept(ckpt, cfg)
    t, accumulate = cfg.trainer, cfg.trainer.accumulate
    if t.sync_bn and dist.world_size > 1 and dist.device.type != "cuda":
        raise UserError("trainer.sync_bn", True, f"needs CUDA devices (SyncBatchNorm); this run "
                        f"is on {dist.device.type}. Use a model without BatchNorm statistics "
                        "across the batch instead (model.kwargs.norm=group for the CIFAR ResNets)")
    built = build(cfg, dist.device, ckpt=ckpt, rank=dist.rank, world_size=dist.world_size)
    if t.sync_bn and dist.world_size > 1:
        built.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(built.model)
    # micro-batches per epoch, a whole number of optimizer steps
    batches = min(len(built.train_loader), t.limit_batches or len(built.train_loader))
    batches -= batches % accumulate
    if batches == 0:
        raise UserError("trainer.accumulate", accumulate, "is more than the batches of an "
                        f"epoch ({min(len(built.train_loader), t.limit_batches or 10**12)} "
                        "per process)")
    dtype = amp_dtype(cfg.trainer.amp, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=dtype == torch.float16)
    if dist.world_size > 1:  # identical init above; now dropout and the like differ per rank
        seed_everything(cfg.trainer.seed + dist.rank)
    model = built.model
    if dist.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if cfg.trainer.compile:
        # a compiled Module is an OptimizedModule, a Module; torch.compile's stubs say Callable
        model = cast(torch.nn.Module, torch.compile(model))
    d, mixup, ema = cfg.data, None, None
    if d.mixup or d.cutmix:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=d.mixup, cutmix_alpha=d.cutmix,
                      label_smoothing=t.label_smoothing, num_classes=built.spec["num_classes"])
    if t.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(built.model, decay=t.ema_decay)
    run = Run(cfg=cfg, dist=dist, out_dir=out_dir, model=model, plain_model=built.model,
              spec=built.spec, identity=built.identity, report=built.report,
              train_loader=built.train_loader, val_loader=built.val_loader,
              holdout_loader=built.holdout_loader, batches_per_epoch=batches, scaler=scaler,
              amp_dtype=dtype, t0=t0, dense_prune=built.prune, ema=ema, mixup=mixup,
              checker=check if checker is None else checker)
    if ckpt is not None:
        if ckpt.state["ring_prune"] is not None:  # pruned with the same settings
            ring_pruning.check_resume(ckpt, cfg)
        resume.restore(run, ckpt)
    return run


def fit(run: Run) -> dict:
    """Each phase in turn, each epoch of it: train, evaluate, log, save. On a stop signal,
    last.pt holds the last whole step and Interrupted propagates."""
    row, logger = None, RunLogger(run)
    with run.stop:
        try:
            exhausted = False  # trainer.max_steps reached: no more epochs
            for phase in phases.of(run.cfg):
                if phases.left(phase, run):
                    continue
                if not phases.ready(phase, run):
                    break
                row = phases.enter(phase, run, row)
                first = max(run.pos.start_epoch, phase.first)
                for epoch in () if exhausted else range(first, phase.end):
                    row = run_epoch(run, logger, epoch)
                    exhausted = run.steps_exhausted()
                    if exhausted:
                        break
        except Interrupted as stop:
            try:
                if not run.pos.evaluated:  # stopped inside the epoch: save its last whole step
                    checkpoint.save_run(run, "last.pt")
            except Diverged as bad:
                logger.diverged(run, bad)
                raise
            logger.interrupted(run, stop)
            raise
        except Diverged as bad:  # last.pt keeps the last good state: nothing is saved
            logger.diverged(run, bad)
            raise
    if row is None:  # resumed a finished run: nothing to train, report the model as it is
        row = dict(epoch=run.pos.start_epoch, **evaluate_run(run))
        run.pos.best = max(run.pos.best, row["val_top1"])
    return logger.finish(run, row)


def run_epoch(run: Run, logger: RunLogger, epoch: int) -> dict:
    """One epoch: train, evaluate, log, save; then a stop asked meanwhile is honoured."""
    run.begin_epoch(epoch)
    train_one_epoch(run)
    val = evaluate_run(run)
    row = logger.epoch(run, val)
    save_epoch(run, val)
    perform(run, run.checker(run, At.SAVED))  # a stop asked during evaluation or saving
    return row


def save_epoch(run: Run, val: dict) -> None:
    """last.pt always; best.pt when the selection metric improves: held-out top-1 when
    data.val_split > 0, else test top-1 (optimistic, and labelled so in the results)."""
    pos, top1 = run.pos, val["val_top1"]
    pos.best, pos.evaluated = max(pos.best, top1), True
    improved = pos.best == top1
    if "heldout_top1" in val:
        improved = pos.selected is None or val["heldout_top1"] > pos.selected[0]
        if improved:
            pos.selected = [val["heldout_top1"], pos.epoch + 1, top1]
    checkpoint.save_run(run, "last.pt")
    if improved:
        checkpoint.save_run(run, "best.pt")
