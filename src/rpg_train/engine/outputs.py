"""A run's outputs besides checkpoints: config.yaml, metrics.jsonl, results.json, the console
and W&B. Files are written by the main process only; results.json is built in one place
(`RunLogger.results`), whether the run finished or diverged."""
from __future__ import annotations

import logging
import resource

import torch
from omegaconf import OmegaConf

from ..log import MetricsFile, WandbLogger, method_label, provenance, run_name, strict_json
from . import ring_pruning
from .guard import Diverged
from .optim import applied_lr, global_batch
from .signals import Interrupted
from .state import Run

log = logging.getLogger("rpg_train")


class RunLogger:
    """Opened once a run is prepared: config.yaml, the metrics file, W&B, and the run's
    description on the console."""

    def __init__(self, run: Run):
        self.main = run.dist.is_main
        if self.main:
            run.out_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(run.cfg, run.out_dir / "config.yaml", resolve=True)
            self.metrics = MetricsFile(run.out_dir / "metrics.jsonl", run.pos.start_epoch)
        self.method, r = method_label(run.resolved), run.report
        self.wandb = WandbLogger(
            run.cfg.logger, run.resolved, run.out_dir, enabled=self.main,
            name=run_name(self.method, run.spec["name"], r["trainable"], run.cfg.trainer.seed),
            tags=(self.method, run.spec["name"], run.cfg.data.name),
            extra=dict(method=self.method, params=r))
        kind = "pruned" if run.dense_prune else run.cfg.rpg.scope
        log.info("%s %s: ring %d, trainable %d, generated %d, dense %d (%.1fx) on %s",
                 run.spec["name"], kind, r["ring"], r["trainable"], r["generated"], r["dense"],
                 r["compression"], run.device)
        o, t, batch = run.cfg.optim, run.cfg.trainer, global_batch(run.cfg, run.dist.world_size)
        per = "as given" if o.lr_batch is None else f"optim.lr {o.lr:g} per {o.lr_batch} images"
        log.info("batch %d x %d process%s x %d micro-batch%s = %d images per step; lr %.4g (%s)",
                 run.cfg.data.batch_size, run.dist.world_size,
                 "es" if run.dist.world_size > 1 else "", t.accumulate,
                 "es" if t.accumulate > 1 else "", batch, applied_lr(o, batch), per)

    def record(self) -> dict:
        """What results.json says about the run besides its numbers: its method label, the
        code that ran it, and where W&B has it (when it logged)."""
        where = self.wandb.record()
        return dict(method=self.method, provenance=provenance(),
                    **({} if where is None else {"wandb": where}))

    def epoch(self, run: Run, val: dict) -> dict:
        """One metrics row per epoch (the train sums' reduction is a collective)."""
        pos, sums = run.pos, run.pos.sums
        assert sums is not None  # the epoch was begun and trained (trainer.run_epoch)
        train_loss, train_top1, seen = sums.reduce()
        row = dict(epoch=pos.epoch + 1, step=pos.step, lr=run.scheduler.get_last_lr()[0],
                   train_loss=train_loss, train_top1=train_top1, **val,
                   images_per_sec=seen / max(sums.seconds, 1e-9), elapsed=run.elapsed())
        if self.main:
            self.metrics.write(row)
            held = f"  held-out {val['heldout_top1']:.2f}%" if "heldout_top1" in val else ""
            held += f"  EMA {val['ema_top1']:.2f}%" if "ema_top1" in val else ""
            log.info("epoch %d/%d  loss %.4f  train %.2f%%  val %.2f%% (top-5 %.2f%%)%s  "
                     "%.0f img/s  %.0fs", row["epoch"], run.total_epochs,
                     train_loss, train_top1, val["val_top1"], val["val_top5"], held,
                     row["images_per_sec"], row["elapsed"])
        self.wandb.log(row, pos.step)
        return row

    def interrupted(self, run: Run, stop: Interrupted) -> None:
        self.wandb.finish()
        log.warning("interrupted (%s) at epoch %d, batch %d: saved %s; continue with "
                    "trainer.resume=auto hydra.run.dir=%s", stop, run.pos.epoch + 1,
                    run.pos.batch, run.out_dir / "last.pt", run.out_dir)

    def results(self, run: Run, outcome: dict, epochs: int, **measured) -> dict:
        """results.json: how the run ended (`outcome`), then what every run reports: its
        epochs and steps, parameters, model, recipe, data, seed, `measured`, time, place."""
        return dict(outcome, epochs=epochs, steps=run.pos.step, param_report=run.report,
                    model=run.spec, rpg=run.resolved["rpg"], data=run.cfg.data.name,
                    seed=run.cfg.trainer.seed, **measured, wall_time=run.elapsed(),
                    out_dir=str(run.out_dir), **self.record())

    def _write(self, run: Run, results: dict) -> None:
        if self.main:
            (run.out_dir / "results.json").write_text(strict_json(results, indent=2) + "\n")

    def diverged(self, run: Run, bad: Diverged) -> None:
        """results.json says what happened; the checkpoints are those of the last good state."""
        t = run.cfg.trainer
        self._write(run, self.results(
            run, dict(status="diverged", diverged_step=bad.step, diverged_loss=bad.loss,
                      nan_policy=t.nan_policy, max_loss=t.max_loss,
                      max_loss_factor=t.max_loss_factor), epochs=run.pos.epoch))
        self.wandb.summary(dict(diverged_step=bad.step))
        self.wandb.finish()

    def finish(self, run: Run, row: dict) -> dict:
        """results.json. The headline is the final epoch's test top-1; best_top1 picks its
        epoch on the test set (optimistic, kept because papers report it); selected_top1 is
        the test top-1 of the epoch picked on held-out training data (data.val_split)."""
        batch = global_batch(run.cfg, run.dist.world_size)
        results = self.results(
            run, dict(final_top1=row["val_top1"], final_top5=row["val_top5"], status="finished",
                      best_top1=run.pos.best), epochs=row["epoch"],
            world_size=run.dist.world_size, global_batch=batch,
            lr=applied_lr(run.cfg.optim, batch), peak_memory_mb=_peak_memory_mb(run.device))
        summary = {"final/top1": results["final_top1"], "best_on_test/top1": run.pos.best,
                   "method": self.method}
        selected = run.pos.selected
        if selected is not None:
            results.update(selected_top1=selected[2], selected_epoch=selected[1],
                           heldout_top1=selected[0])
            summary["selected/top1"] = selected[2]
        if "ema_top1" in row:  # trainer.ema_decay: the EMA weights' final test top-1
            results.update(ema_final_top1=row["ema_top1"], ema_final_top5=row["ema_top5"])
            summary["final/ema_top1"] = row["ema_top1"]
        if run.guard.skipped:  # nan_policy=skip
            results["skipped_steps"] = run.guard.skipped
        if run.dense_prune is not None:  # the epochs it spent: the dense run's, then fine-tuning
            results["prune"] = dict(run.dense_prune, finetune_epochs=run.cfg.trainer.epochs)
        if run.ring_prune is not None:  # before and right after pruning; final_top1 is after
            results["ring_prune"] = ring_pruning.results(run.ring_prune)  # fine-tuning
            summary["ring_prune/pruned_top1"] = run.ring_prune["pruned_top1"]
        self._write(run, results)
        if self.main:
            picked = (f", held-out pick {results['selected_top1']:.2f}% (epoch "
                      f"{results['selected_epoch']})" if selected else "")
            log.info("final test top-1 %.2f%% (best epoch picked on test: %.2f%%%s); "
                     "trainable %d", results["final_top1"], run.pos.best, picked,
                     run.report["trainable"])
            self.wandb.summary({**summary,
                                **{f"params/{k}": v for k, v in run.report.items()}})
        self.wandb.finish()
        return results


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
