"""train(cfg): the whole run, callable from Python and tests without sys.argv.

`prepare` builds a `Run`; `fit` is the epoch loop (after DeiT's main.py): each epoch is train
one epoch, evaluate, log, save.
"""
from __future__ import annotations

import logging
import math
import random
import resource
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ..config import validate
from ..errors import UserError
from ..log import (MetricsFile, WandbLogger, method_label, preparing, provenance, run_name,
                   strict_json)
from . import checkpoint, resume, ring_prune, rundir
from .amp import amp_dtype, autocast_for
from .build import build
from .distributed import (Dist, RankLost, Vote, any_rank, barrier, broadcast_buffers,
                          broadcast_object,
                          gather_objects, lost_rank, max_rank, setup, teardown)
from .guard import Diverged, LossGuard
from .loop import EpochSums, evaluate, train_one_epoch
from .optim import applied_lr, build_optimizer, build_scheduler
from .signals import Interrupted, StopSignals

log = logging.getLogger("rpg_train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What one training run holds: built by `prepare`, read and advanced by the loop."""

    cfg: Any
    dist: Dist
    out_dir: Path
    model: nn.Module  # what the loop calls: the model, or its DDP / torch.compile wrapper
    plain_model: nn.Module  # the model itself, whose state_dict is saved
    spec: dict  # create_model's arguments
    identity: dict  # what a checkpoint must match to resume this run
    report: dict  # param_report
    train_loader: Any
    val_loader: Any
    batches_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: Any  # autocast dtype, None = off
    t0: float  # perf_counter at the start of this process's run
    resolved: dict = field(init=False)  # the config as plain containers (saved, logged)
    # the position: where training continues (a resumed run starts at the checkpoint's)
    epoch: int = 0
    batch: int = 0
    step: int = 0
    sums: EpochSums | None = None  # the current epoch's running sums
    evaluated: bool = False  # the current epoch is evaluated, logged and saved
    start_epoch: int = 0
    start_batch: int = 0
    start_sums: list | None = None  # the resumed epoch's sums so far
    best: float = -1.0
    elapsed0: float = 0.0  # seconds spent by the processes before a resume
    stop: StopSignals = field(default_factory=StopSignals)
    prune: dict | None = None  # the pruning baseline's record (build.Built.prune)
    ring_prune: dict | None = None  # rpg.prune: the ring pruning's record, once pruned
    holdout_loader: Any = None  # data.val_split > 0: the best epoch is picked on it
    # the best held-out epoch so far: [held-out top-1, epoch (1-based), test top-1 then]
    selected: list | None = None
    ema: Any = None  # trainer.ema_decay: timm's ModelEmaV3 of plain_model
    mixup: Any = None  # data.mixup / data.cutmix: timm's Mixup (soft targets)
    guard: LossGuard = field(init=False)  # divergence: trainer.nan_policy
    vote: Vote = field(init=False)  # the ranks' agreement on stop / save / diverged
    last_save: float = field(init=False)  # monotonic time of the last checkpoint

    def __post_init__(self):
        self.resolved = OmegaConf.to_container(self.cfg, resolve=True)
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

    def autocast(self):
        return autocast_for(self.amp_dtype, self.device)

    def steps_exhausted(self) -> bool:
        max_steps = self.cfg.trainer.max_steps
        return max_steps > 0 and self.step >= max_steps

    def stop_signal(self) -> int:
        """The stop signal any rank got (the largest number if several), 0 if none; a
        collective under DDP."""
        return max_rank(self.stop.signum or 0, self.device)

    def recovery_due(self) -> bool:
        """Rank 0's clock says a recovery checkpoint is due (trainer.checkpoint_every_min)."""
        every = self.cfg.trainer.checkpoint_every_min
        return (every > 0 and self.dist.is_main
                and time.monotonic() - self.last_save >= every * 60)

    def check(self, end_of_epoch: bool = False) -> None:
        """Between steps: all ranks agree (a step late under DDP, see Vote) whether one got a
        stop signal, the loss went bad, or a recovery checkpoint is due, and act on it
        together. At the end of an epoch the vote is settled and the loss read."""
        flags = (self.stop.signum or 0, self.recovery_due(),
                 self.guard.poll(self.step, force=end_of_epoch))
        stop, save_now, diverged = self.vote(*flags)
        if end_of_epoch:
            stop, save_now, diverged = (max(a, b) for a, b in
                                        zip((stop, save_now, diverged), self.vote.settle()))
        if (save_now or stop) and not diverged:  # never save a state that may hold a bad step
            diverged = any_rank(self.guard.poll(self.step, force=True), self.device)
        if diverged or stop:
            self.vote.settle()  # nothing left in flight when the run leaves the loop
        if diverged:
            raise self.guard.error()
        if stop:
            raise Interrupted(stop, self.stop.signum)
        if save_now and not end_of_epoch:  # the epoch's own save follows at its end
            save(self, "last.pt")

    @property
    def base_lr(self) -> float:
        """The lr applied before the schedule (optim.lr scaled to the global batch)."""
        return self.optimizer.param_groups[0]["initial_lr"]

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    def begin_epoch(self, epoch: int) -> None:
        first = epoch == self.start_epoch
        self.epoch, self.batch = epoch, self.start_batch if first else 0
        self.sums = EpochSums(self.device, self.start_sums if first else None)
        self.evaluated = False

    def position(self) -> tuple:
        """(epoch, batch, sums) that a resumed run continues from: the next epoch once this
        one is trained and evaluated, else this one's batch (it is then evaluated on resume)."""
        if self.evaluated and self.batch >= self.batches_per_epoch:
            return self.epoch + 1, 0, None
        return self.epoch, self.batch, self.sums.state()

    def resume_from(self, ckpt: checkpoint.Checkpoint) -> None:
        """Optimizer, schedule, scaler, position and RNGs; the model's weights are loaded by
        `build`. Each rank takes its own RNG states when the world size is the same."""
        s = ckpt.state
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        if self.ema is not None:
            if s["ema"] is None:
                raise ckpt.error("holds no EMA of the weights; resume with the same "
                                 "trainer.ema_decay as the run had")
            self.ema.module.load_state_dict(s["ema"])
        self.start_epoch, self.start_batch, self.step = s["epoch"], s["batch"], s["step"]
        self.best, self.elapsed0 = s["best_top1"], s["elapsed"]
        rank, world = self.dist.rank, self.dist.world_size
        sums = s["sums"]  # None at an epoch's start
        self.start_sums = None if sums is None else checkpoint.for_rank(sums, rank, world)
        self.guard.skipped = s["skipped_steps"]
        self.guard.load(s["loss_start"])
        self.selected = s["selected"]
        checkpoint.set_rng_state(checkpoint.for_rank(s["rng"], rank, world))
        log.info("resumed from %s at epoch %d batch %d", ckpt.path, self.start_epoch,
                 self.start_batch)


def train(cfg) -> dict:
    """Train as the config says; returns the results written to results.json."""
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
            return fit(prepare(cfg, dist, Path(cfg.out_dir), t0))
    except RuntimeError as err:
        if dist.world_size > 1 and lost_rank(err):
            raise RankLost(str(err).splitlines()[0][:300]) from err
        raise
    finally:
        teardown()


def load_resume(cfg, out_dir: Path) -> checkpoint.Checkpoint | None:
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


def schedule(cfg, dist: Dist) -> dict:
    """What the data order and the learning-rate schedule depend on: a resumed run must match
    (see check_schedule for trainer.epochs)."""
    return {"world size": dist.world_size, "data.batch_size": cfg.data.batch_size,
            "trainer.accumulate": cfg.trainer.accumulate, "sched.name": cfg.sched.name,
            "trainer.epochs": cfg.trainer.epochs}


def check_schedule(ckpt: checkpoint.Checkpoint, cfg, dist: Dist) -> None:
    """Refuse a resume whose schedule differs. Only cosine's lr depends on the number of
    epochs: a step, exp or constant run may be resumed with more trainer.epochs (never fewer)
    to train on."""
    mine = schedule(cfg, dist)
    theirs = ckpt.state["schedule"]  # a key added to it later is missing in older files
    name, before = theirs.get("sched.name"), theirs.get("trainer.epochs")
    longer = before is not None and mine["trainer.epochs"] > before
    if name in ("step", "exp", "constant") and longer:
        mine["trainer.epochs"] = before  # longer is fine
    checkpoint.check_schedule(ckpt, mine)


def global_batch(cfg, dist: Dist) -> int:
    """Images per optimizer step over all processes (what optim.lr is scaled by)."""
    return cfg.data.batch_size * dist.world_size * cfg.trainer.accumulate


def prepare(cfg, dist: Dist, out_dir: Path, t0: float) -> Run:
    """Everything before the first step: model, data, optimizer, and the resumed state."""
    seed_everything(cfg.trainer.seed)
    log.info(preparing(cfg.model.name, method_label(OmegaConf.to_container(cfg, resolve=True)),
                       cfg.data.name))
    ckpt = load_resume(cfg, out_dir)
    if ckpt is not None:
        check_schedule(ckpt, cfg, dist)
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
    optimizer = build_optimizer(cfg.optim, built.model, global_batch(cfg, dist))
    scheduler = build_scheduler(cfg.sched, cfg.optim.lr, optimizer, t.epochs,
                                batches // accumulate)
    dtype = amp_dtype(cfg.trainer.amp, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=dtype == torch.float16)
    if dist.world_size > 1:  # identical init above; now dropout and the like differ per rank
        seed_everything(cfg.trainer.seed + dist.rank)
    model = built.model
    if dist.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if cfg.trainer.compile:
        model = torch.compile(model)
    run = Run(cfg, dist, out_dir, model, built.model, built.spec, built.identity, built.report,
              built.train_loader, built.val_loader, batches, optimizer, scheduler, scaler,
              dtype, t0)
    run.prune, run.holdout_loader = built.prune, built.holdout_loader
    d = cfg.data
    if d.mixup or d.cutmix:
        from timm.data import Mixup

        run.mixup = Mixup(mixup_alpha=d.mixup, cutmix_alpha=d.cutmix,
                          label_smoothing=t.label_smoothing,
                          num_classes=built.spec["num_classes"])
    if t.ema_decay is not None:
        from timm.utils import ModelEmaV3

        run.ema = ModelEmaV3(built.model, decay=t.ema_decay)
    if ckpt is not None:
        if ckpt.state["ring_prune"] is not None:  # pruned: the fine-tuning's masks and optimizer
            ring_prune.resume(run, ckpt, global_batch(cfg, dist))
        run.resume_from(ckpt)
    return run


def fit(run: Run) -> dict:
    """The epoch loop: train one epoch, evaluate, log, save. On a stop signal, last.pt holds
    the last whole step and Interrupted propagates."""
    cfg, row = run.cfg, None
    logger = RunLogger(run)
    prune = partial(ring_prune.begin, evaluate_all=evaluate_all, save=save,
                    global_batch=global_batch(cfg, run.dist))
    with run.stop:
        try:
            for epoch in range(run.start_epoch, ring_prune.total_epochs(cfg)):
                if epoch == cfg.trainer.epochs:  # rpg.prune: training done, fine-tuning next
                    row = prune(run, row)
                run.begin_epoch(epoch)
                train_one_epoch(run)
                val = evaluate_all(run)
                row = logger.epoch(run, val)
                save_epoch(run, val)
                signum = run.stop_signal()  # asked during evaluation or saving
                if signum:
                    raise Interrupted(signum, run.stop.signum)
                if run.steps_exhausted():
                    break
            if run.start_epoch >= cfg.trainer.epochs or run.position()[0] >= cfg.trainer.epochs:
                row = prune(run, row)  # rpg.prune without fine-tuning, or cut by max_steps
        except Interrupted as stop:
            try:
                if not run.evaluated:  # stopped inside the epoch: save its last whole step
                    save(run, "last.pt")
            except Diverged as bad:
                logger.diverged(run, bad)
                raise
            logger.interrupted(run, stop)
            raise
        except Diverged as bad:  # last.pt keeps the last good state: nothing is saved
            logger.diverged(run, bad)
            raise
    if row is None:  # resumed a finished run: nothing to train, report the model as it is
        row = dict(epoch=run.start_epoch, **evaluate_all(run))
        run.best = max(run.best, row["val_top1"])
    return logger.finish(run, row)


def save(run: Run, name: str) -> None:
    """Write a checkpoint of the current position (a collective: every rank's RNG states).
    Weights that are not finite are never saved: the run diverged."""
    if any_rank(not _finite(run.plain_model), run.device):
        raise Diverged(run.step, float("nan"), f"the weights are not finite after step "
                       f"{run.step}")
    epoch, batch, sums = run.position()
    rng = gather_objects(checkpoint.rng_state())  # every rank's, so each resumes its own
    sums = gather_objects(sums) if sums is not None else None
    if run.dist.is_main:
        checkpoint.save(run.out_dir / name, dict(
            model=run.plain_model.state_dict(), optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(),
            epoch=epoch, batch=batch, step=run.step, best_top1=run.best,
            elapsed=run.elapsed(), sums=sums, rng=rng, identity=run.identity,
            schedule=schedule(run.cfg, run.dist), skipped_steps=run.guard.skipped,
            loss_start=run.guard.state(),
            ema=None if run.ema is None else run.ema.module.state_dict(),
            config=run.resolved, selected=run.selected, ring_prune=run.ring_prune,
            provenance=provenance()),
            keep_previous=name == "last.pt", key="hydra.run.dir")
    run.last_save = time.monotonic()
    barrier()


def _finite(model: nn.Module) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all())


def evaluate_all(run: Run) -> dict:
    """Test metrics (val_*), and the held-out part's (heldout_*) when there is one. A loss
    that is not finite is divergence: the last update broke the model (the training loss
    of a step is judged before that step's update)."""
    args = (run.autocast, run.cfg.trainer.limit_batches, run.channels_last, run.show_progress)
    val = evaluate(run.model, run.val_loader, *args)
    if run.ema is not None:
        # each rank's EMA followed its own BatchNorm statistics; rank 0's are the ones saved
        broadcast_buffers(run.ema.module)
        ema = evaluate(run.ema.module, run.val_loader, *args)
        val.update({k.replace("val_", "ema_"): v for k, v in ema.items()})
    if run.holdout_loader is not None:
        held = evaluate(run.model, run.holdout_loader, *args)
        val.update({k.replace("val_", "heldout_"): v for k, v in held.items()})
    for key, loss in val.items():  # the same on every rank (all-reduced)
        if key.endswith("_loss") and not math.isfinite(loss):
            what = {"val": "test", "ema": "EMA's test", "heldout": "held-out"}[key[:-5]]
            raise Diverged(run.step, loss, f"the {what} loss was {loss:.4g} after step "
                           f"{run.step}")
    return val


def save_epoch(run: Run, val: dict) -> None:
    """last.pt always; best.pt when the selection metric improves: held-out top-1 when
    data.val_split > 0, else test top-1 (optimistic, and labelled so in the results)."""
    top1 = val["val_top1"]
    run.best, run.evaluated = max(run.best, top1), True
    improved = run.best == top1
    if "heldout_top1" in val:
        improved = run.selected is None or val["heldout_top1"] > run.selected[0]
        if improved:
            run.selected = [val["heldout_top1"], run.epoch + 1, top1]
    save(run, "last.pt")
    if improved:
        save(run, "best.pt")


class RunLogger:
    """The run's outputs besides checkpoints: config.yaml, metrics.jsonl, results.json, the
    console and W&B. Files are written by the main process only."""

    def __init__(self, run: Run):
        self.main = run.dist.is_main
        if self.main:
            run.out_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(run.cfg, run.out_dir / "config.yaml", resolve=True)
            self.metrics = MetricsFile(run.out_dir / "metrics.jsonl", run.start_epoch)
        self.method, r = method_label(run.resolved), run.report
        self.wandb = WandbLogger(
            run.cfg.logger, run.resolved, run.out_dir, enabled=self.main,
            name=run_name(self.method, run.spec["name"], r["trainable"], run.cfg.trainer.seed),
            tags=(self.method, run.spec["name"], run.cfg.data.name),
            extra=dict(method=self.method, params=r))
        kind = "pruned" if run.prune else run.cfg.rpg.scope
        log.info("%s %s: ring %d, trainable %d, generated %d, dense %d (%.1fx) on %s",
                 run.spec["name"], kind, r["ring"], r["trainable"], r["generated"], r["dense"],
                 r["compression"], run.device)
        o, t = run.cfg.optim, run.cfg.trainer
        per = "as given" if o.lr_batch is None else f"optim.lr {o.lr:g} per {o.lr_batch} images"
        log.info("batch %d x %d process%s x %d micro-batch%s = %d images per step; lr %.4g (%s)",
                 run.cfg.data.batch_size, run.dist.world_size,
                 "es" if run.dist.world_size > 1 else "", t.accumulate,
                 "es" if t.accumulate > 1 else "", global_batch(run.cfg, run.dist),
                 run.base_lr, per)

    def record(self) -> dict:
        """What results.json says about the run besides its numbers: its method label, the
        code that ran it, and where W&B has it (when it logged)."""
        where = self.wandb.record()
        return dict(method=self.method, provenance=provenance(),
                    **({} if where is None else {"wandb": where}))

    def epoch(self, run: Run, val: dict) -> dict:
        """One metrics row per epoch (the train sums' reduction is a collective)."""
        train_loss, train_top1, seen = run.sums.reduce()
        row = dict(epoch=run.epoch + 1, step=run.step, lr=run.scheduler.get_last_lr()[0],
                   train_loss=train_loss, train_top1=train_top1, **val,
                   images_per_sec=seen / max(run.sums.seconds, 1e-9), elapsed=run.elapsed())
        if self.main:
            self.metrics.write(row)
            held = f"  held-out {val['heldout_top1']:.2f}%" if "heldout_top1" in val else ""
            held += f"  EMA {val['ema_top1']:.2f}%" if "ema_top1" in val else ""
            log.info("epoch %d/%d  loss %.4f  train %.2f%%  val %.2f%% (top-5 %.2f%%)%s  "
                     "%.0f img/s  %.0fs", row["epoch"], ring_prune.total_epochs(run.cfg),
                     train_loss, train_top1, val["val_top1"], val["val_top5"], held,
                     row["images_per_sec"], row["elapsed"])
        self.wandb.log(row, run.step)
        return row

    def interrupted(self, run: Run, stop: Interrupted) -> None:
        self.wandb.finish()
        log.warning("interrupted (%s) at epoch %d, batch %d: saved %s; continue with "
                    "trainer.resume=auto hydra.run.dir=%s", stop, run.epoch + 1, run.batch,
                    run.out_dir / "last.pt", run.out_dir)

    def diverged(self, run: Run, bad: Diverged) -> None:
        """results.json says what happened; the checkpoints are those of the last good state."""
        t = run.cfg.trainer
        results = dict(status="diverged", diverged_step=bad.step, diverged_loss=bad.loss,
                       nan_policy=t.nan_policy, max_loss=t.max_loss,
                       max_loss_factor=t.max_loss_factor, steps=run.step,
                       epochs=run.epoch, param_report=run.report, model=run.spec,
                       rpg=run.resolved["rpg"], data=run.cfg.data.name, seed=t.seed,
                       wall_time=run.elapsed(), out_dir=str(run.out_dir), **self.record())
        if self.main:
            (run.out_dir / "results.json").write_text(strict_json(results, indent=2) + "\n")
        self.wandb.summary(dict(diverged_step=bad.step))
        self.wandb.finish()

    def finish(self, run: Run, row: dict) -> dict:
        """results.json. The headline is the final epoch's test top-1; best_top1 picks its
        epoch on the test set (optimistic, kept because papers report it); selected_top1 is
        the test top-1 of the epoch picked on held-out training data (data.val_split)."""
        results = dict(final_top1=row["val_top1"], final_top5=row["val_top5"], status="finished",
                       best_top1=run.best, epochs=row["epoch"], steps=run.step,
                       param_report=run.report, model=run.spec, rpg=run.resolved["rpg"],
                       data=run.cfg.data.name, seed=run.cfg.trainer.seed,
                       world_size=run.dist.world_size,
                       global_batch=global_batch(run.cfg, run.dist),
                       lr=applied_lr(run.cfg.optim, global_batch(run.cfg, run.dist)),
                       wall_time=run.elapsed(), peak_memory_mb=_peak_memory_mb(run.device),
                       out_dir=str(run.out_dir), **self.record())
        summary = {"final/top1": results["final_top1"], "best_on_test/top1": run.best,
                   "method": self.method}
        if run.selected is not None:
            results.update(selected_top1=run.selected[2], selected_epoch=run.selected[1],
                           heldout_top1=run.selected[0])
            summary["selected/top1"] = run.selected[2]
        if "ema_top1" in row:  # trainer.ema_decay: the EMA weights' final test top-1
            results.update(ema_final_top1=row["ema_top1"], ema_final_top5=row["ema_top5"])
            summary["final/ema_top1"] = row["ema_top1"]
        if run.guard.skipped:  # nan_policy=skip
            results["skipped_steps"] = run.guard.skipped
        if run.prune is not None:  # the epochs it spent: the dense run's, then fine-tuning
            results["prune"] = dict(run.prune, finetune_epochs=run.cfg.trainer.epochs)
        if run.ring_prune is not None:  # before and right after pruning; final_top1 is after
            results["ring_prune"] = ring_prune.results(run.ring_prune)  # fine-tuning
            summary["ring_prune/pruned_top1"] = run.ring_prune["pruned_top1"]
        if self.main:
            (run.out_dir / "results.json").write_text(strict_json(results, indent=2) + "\n")
            picked = (f", held-out pick {results['selected_top1']:.2f}% (epoch "
                      f"{results['selected_epoch']})" if run.selected else "")
            log.info("final test top-1 %.2f%% (best epoch picked on test: %.2f%%%s); "
                     "trainable %d", results["final_top1"], run.best, picked,
                     run.report["trainable"])
            self.wandb.summary({**summary,
                                **{f"params/{k}": v for k, v in run.report.items()}})
        self.wandb.finish()
        return results


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
