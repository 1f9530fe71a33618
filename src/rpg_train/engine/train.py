"""train(cfg): the whole run, callable from Python and tests without sys.argv."""
from __future__ import annotations

import json
import logging
import random
import resource
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from omegaconf import OmegaConf

from ..config import ConfigError, validate
from ..data import build_loaders, dataset_info
from ..log import MetricsFile, WandbLogger
from ..rpg import param_report
from . import checkpoint
from .build import build_model, identity
from .distributed import Dist, barrier, setup, teardown
from .loop import EpochSums, Interrupted, evaluate, train_one_epoch
from .optim import build_optimizer, build_scheduler

log = logging.getLogger("rpg_train")
_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(amp: str, device: torch.device):
    """trainer.amp as a dtype (None = off); auto is bf16 on CUDA and off elsewhere."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def autocast_for(dtype, device: torch.device):
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class Run:
    """What one training run holds; the loop reads and advances it."""

    def __init__(self, cfg, dist: Dist):
        t = cfg.trainer
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.amp_dtype = amp_dtype(t.amp, self.device)
        self.channels_last, self.grad_clip = t.channels_last, t.grad_clip
        self.label_smoothing, self.max_steps = t.label_smoothing, t.max_steps
        self.show_progress = t.progress and dist.is_main
        self.step, self.batch = 0, 0
        self._stop = None

    def autocast(self):
        return autocast_for(self.amp_dtype, self.device)

    def steps_exhausted(self) -> bool:
        return self.max_steps > 0 and self.step >= self.max_steps

    def request_stop(self, signum, frame) -> None:
        """Signal handler: stop after the current step; a second Ctrl-C stops at once."""
        if self._stop is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop = signum

    def should_stop(self) -> bool:
        """Whether any rank was asked to stop: all ranks agree, so none waits in a collective."""
        flag = float(self._stop is not None)
        if self.dist.world_size > 1:
            t = torch.tensor([flag], device=self.device)
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
            flag = t.item()
        return flag > 0

    def stop_reason(self) -> str:
        return _SIGNALS.get(self._stop, "stop on another rank")


def resume_path(cfg, out_dir: Path):
    r = cfg.trainer.resume
    if r == "auto":
        last = out_dir / "last.pt"
        return last if last.exists() else None
    return Path(r) if r else None


def all_rng_states(dist: Dist) -> list:
    """Every rank's RNG states (a collective under DDP), so each rank resumes its own."""
    state = checkpoint.rng_state()
    if dist.world_size == 1:
        return [state]
    states = [None] * dist.world_size
    tdist.all_gather_object(states, state)
    return states


def train(cfg) -> dict:
    """Train as the config says; returns the results written to results.json."""
    validate(cfg)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)
    dist = setup(cfg.trainer.device)
    try:
        try:
            run, val_loader = _setup(cfg, dist, Path(cfg.out_dir))
        except ValueError as err:  # bad input found while building: one line, no traceback
            raise err if isinstance(err, ConfigError) else ConfigError(str(err)) from err
        return _fit(run, val_loader)
    finally:
        teardown()


def _setup(cfg, dist: Dist, out_dir: Path):
    """Everything before the first step: model, data, optimizer, and the resumed state."""
    run = Run(cfg, dist)
    run.t0, run.out_dir = time.perf_counter(), out_dir
    seed_everything(cfg.trainer.seed)
    ckpt_path = resume_path(cfg, out_dir)
    ckpt = checkpoint.load(ckpt_path) if ckpt_path else None
    info = dataset_info(cfg.data.name, cfg.data)
    model, run.spec = build_model(cfg, info)
    run.identity = identity(model, run.spec)
    if ckpt is not None:
        checkpoint.check_identity(ckpt, run.identity, ckpt_path)
    run.report = param_report(model)
    model.to(run.device)
    if run.channels_last:
        model.to(memory_format=torch.channels_last)
    run.train_loader, val_loader = build_loaders(cfg.data, run.device, cfg.trainer.seed,
                                                 dist.rank, dist.world_size)
    limit = cfg.trainer.limit_batches
    run.batches_per_epoch = min(len(run.train_loader), limit) if limit else len(run.train_loader)
    run.optimizer = build_optimizer(cfg.optim, model)
    run.scheduler = build_scheduler(cfg.sched, cfg.optim.lr, run.optimizer, cfg.trainer.epochs,
                                    run.batches_per_epoch)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)
    if dist.world_size > 1:  # identical init above; now dropout and the like differ per rank
        seed_everything(cfg.trainer.seed + dist.rank)
    run.start_epoch, run.start_batch, run.best, run.elapsed0, run.sums_state = 0, 0, -1.0, 0.0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        run.start_epoch, run.start_batch, run.step = ckpt["epoch"], ckpt["batch"], ckpt["step"]
        run.best, run.elapsed0, run.sums_state = ckpt["best_top1"], ckpt["elapsed"], ckpt["sums"]
        rng = ckpt["rng"]
        checkpoint.set_rng_state(rng[dist.rank] if len(rng) == dist.world_size else rng[0])
        log.info("resumed from %s at epoch %d batch %d", ckpt_path, run.start_epoch,
                 run.start_batch)
    run.plain_model = model
    run.model = model
    if dist.world_size > 1:
        run.model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if cfg.trainer.compile:
        run.model = torch.compile(run.model)
    return run, val_loader


def _fit(run: Run, val_loader) -> dict:
    cfg, dist, out_dir, report = run.cfg, run.dist, run.out_dir, run.report
    resolved = OmegaConf.to_container(cfg, resolve=True)
    main = dist.is_main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        metrics = MetricsFile(out_dir / "metrics.jsonl", run.start_epoch)
    wandb = WandbLogger(cfg.logger, resolved, out_dir, enabled=main)
    log.info("%s %s: ring %d, trainable %d, generated %d, dense %d (%.1fx) on %s",
             run.spec["name"], cfg.rpg.scope, report["ring"], report["trainable"],
             report["generated"], report["dense"], report["compression"], run.device)

    def elapsed() -> float:
        return run.elapsed0 + time.perf_counter() - run.t0

    def save(name: str, epoch: int, batch: int, sums) -> None:
        rng = all_rng_states(dist)
        if main:
            checkpoint.save(out_dir / name, dict(
                model=run.plain_model.state_dict(), optimizer=run.optimizer.state_dict(),
                scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(),
                epoch=epoch, batch=batch, step=run.step, best_top1=run.best, elapsed=elapsed(),
                sums=sums, rng=rng, identity=run.identity, config=resolved))
        barrier()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, run.request_stop) for s in _SIGNALS} if in_main_thread else {}
    limit = cfg.trainer.limit_batches
    row, epoch = None, run.start_epoch
    try:
        for epoch in range(run.start_epoch, cfg.trainer.epochs):
            first = epoch == run.start_epoch
            sums = EpochSums(run.device, run.sums_state if first else None)
            run.batch = run.start_batch if first else 0
            try:
                train_one_epoch(run, epoch, run.batch, sums)
            except Interrupted:
                save("last.pt", epoch, run.batch, sums.state())
                raise
            done = run.batch >= run.batches_per_epoch
            train_loss, train_top1, seen = sums.reduce()
            val = evaluate(run.model, val_loader, run.autocast, limit, run.channels_last)
            row = dict(epoch=epoch + 1, step=run.step, lr=run.scheduler.get_last_lr()[0],
                       train_loss=train_loss, train_top1=train_top1, **val,
                       images_per_sec=seen / max(sums.seconds, 1e-9), elapsed=elapsed())
            run.best = max(run.best, val["val_top1"])
            if main:
                metrics.write(row)
                log.info("epoch %d/%d  loss %.4f  train %.2f%%  val %.2f%% (top-5 %.2f%%)  "
                         "%.0f img/s  %.0fs", epoch + 1, cfg.trainer.epochs, train_loss,
                         train_top1, val["val_top1"], val["val_top5"], row["images_per_sec"],
                         row["elapsed"])
            wandb.log(row, run.step)
            position = (epoch + 1, 0, None) if done else (epoch, run.batch, sums.state())
            save("last.pt", *position)
            if run.best == val["val_top1"]:
                save("best.pt", *position)
            if run.should_stop():  # asked during evaluation or saving: last.pt is current
                raise Interrupted(run.stop_reason())
            if run.steps_exhausted():
                break
    except Interrupted as stop:
        wandb.finish()
        log.warning("interrupted (%s) at epoch %d, batch %d: saved %s; continue with "
                    "trainer.resume=auto hydra.run.dir=%s", stop, epoch + 1, run.batch,
                    out_dir / "last.pt", out_dir)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    if row is None:  # resumed a finished run: nothing to train, report the model as it is
        val = evaluate(run.model, val_loader, run.autocast, limit, run.channels_last)
        row = dict(epoch=run.start_epoch, val_top1=val["val_top1"], val_top5=val["val_top5"])
        run.best = max(run.best, val["val_top1"])
    results = dict(best_top1=run.best, final_top1=row["val_top1"], final_top5=row["val_top5"],
                   epochs=row["epoch"], steps=run.step, param_report=report, model=run.spec,
                   rpg=OmegaConf.to_container(cfg.rpg), data=cfg.data.name,
                   wall_time=elapsed(), peak_memory_mb=_peak_memory_mb(run.device),
                   out_dir=str(out_dir))
    if main:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        wandb.summary({"best/top1": run.best, "final/top1": results["final_top1"],
                       **{f"params/{k}": v for k, v in report.items()}})
    wandb.finish()
    return results


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
