"""The full engine's training throughput against a bare PyTorch loop. One JSON line.

    python scripts/bench_train.py [--device cpu|cuda] [--steps 20] [--pairs 4] [OVERRIDES...]

Both train the same model (the engine builds it: RPG included), from the same in-memory
loader, at the same batch and precision, with the same optimizer and schedule; the bare loop
is forward, loss, backward, step, zero_grad, schedule step and nothing else. The engine's
epoch adds what a real run has: the divergence guard, the metric sums, the between-step check
for stop signals and recovery checkpoints. ratio: median over ABBA-ordered pairs of the
engine's images/second over the bare loop's (>= 0.95 is the target). OVERRIDES are Hydra
overrides of the run (default: ResNet-20, ring 25,000, synthetic 32x32 data, batch 128).
The bare loop has no GradScaler: compare with trainer.amp off or bf16, not fp16.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from rpg_train.config import register
from rpg_train.engine import phases
from rpg_train.engine.distributed import setup
from rpg_train.engine.loop import train_one_epoch
from rpg_train.engine.trainer import prepare
from rpg_train.paths import CONF


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_epoch(run, steps: int) -> None:
    model, opt, sched = run.model, run.optimizer, run.scheduler
    model.train()
    run.train_loader.set_epoch(0)
    for i, (x, y) in enumerate(run.train_loader):
        if i >= steps:
            break
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with run.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def engine_epoch(run, steps: int) -> None:
    run.begin_epoch(0)
    train_one_epoch(run)


def timed(fn, run, steps: int, batch: int) -> float:
    """Images per second of one epoch of `steps` steps."""
    _sync(run.device)
    start = time.perf_counter()
    fn(run, steps)
    _sync(run.device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    register()
    batch = 128
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=synthetic", f"data.batch_size={batch}", "data.image_size=32",
            f"data.num_train={batch * a.steps}", "data.num_val=64", "trainer.progress=false",
            f"trainer.device={a.device}", f"trainer.limit_batches={a.steps}", *a.overrides])
    batch = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out_dir = tmp
        run = prepare(cfg, setup(cfg.trainer.device), Path(tmp), time.perf_counter())
        phases.enter(phases.of(cfg)[0], run, None)  # training's optimizer and schedule
        steps = min(a.steps, run.batches_per_epoch)
        for fn in (bare_epoch, engine_epoch):  # warm-up: allocator, kernels, caches
            fn(run, steps)
        engine, bare = [], []
        for i in range(a.pairs):  # ABBA: the machine's drift cancels
            order = (engine_epoch, bare_epoch) if i % 2 == 0 else (bare_epoch, engine_epoch)
            for fn in order:
                (engine if fn is engine_epoch else bare).append(timed(fn, run, steps, batch))
    ratios = [e / b for e, b in zip(engine, bare)]
    print(json.dumps(dict(
        device=str(run.device), model=cfg.model.name, rpg=cfg.rpg.scope, batch=batch,
        steps=steps, amp=str(run.amp_dtype), pairs=a.pairs,
        engine_img_s=round(statistics.median(engine), 1),
        bare_img_s=round(statistics.median(bare), 1),
        ratio=round(statistics.median(ratios), 3), pair_ratios=[round(r, 3) for r in ratios],
        overrides=a.overrides)))


if __name__ == "__main__":
    main()
