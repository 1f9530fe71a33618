"""Benchmark of the RPG core against the plain backbone. One JSON line per case.

    python scripts/bench_rpg.py [--steps 7] [--batch 128] [--device cpu|cuda|all]

train_step_ratio / eval_ratio: median over interleaved pairs of the RPG step time over the
plain one, pairs in ABBA order so the machine's drift cancels (eval takes 3x the steps).
eval_ratio runs inside `rpg.cached(model)`, as the engine evaluates; eval_uncached_ratio is a
plain no_grad forward, which generates every weight again.
plan_seconds_resnet50: apply_rpg on resnet50 and drawing its tables. table_bytes_per_generated_weight:
all the generator keeps besides the rings (index and inverse tables) over the generated
weights. plan_seconds: apply_rpg on resnet50 (tables drawn, rings built).
leak_mib_20_cycles: growth of the process's resident memory over 20 cycles of building a
ResNet18-RPG, one training step and dropping it (after one warm-up cycle).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from rpg_train.models import create_model
from rpg_train.rpg import apply_rpg, cached, param_report, rings_of


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_steps(device, steps, batch, params):
    torch.manual_seed(0)
    plain = create_model("resnet18", 10, small_input=True).to(device)
    rpg = apply_rpg(create_model("resnet18", 10, small_input=True), "network", params).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(10, (batch,), device=device)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, rpg)}

    def train(model):
        def step():
            opt = opts[id(model)]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return step

    def infer(model):
        def step():
            with torch.no_grad():
                model(x)
        return step

    out = {}
    # eval: one cached() block around all its steps, as the engine wraps its evaluation loop
    # (weights generated once); eval_uncached: every forward generates every weight again
    for mode, make in (("train_step", train), ("eval", infer), ("eval_uncached", infer)):
        for m in (plain, rpg):
            m.train(mode == "train_step")
        scope = cached(rpg) if mode == "eval" else contextlib.nullcontext()
        with scope:
            _pairs(mode, make, plain, rpg, steps, device, out)
    rep = param_report(rpg)
    table = sum(r.table_bytes() for r in rings_of(rpg))
    out["table_bytes_per_generated_weight"] = round(table / rep["generated"], 4)
    return out


def _pairs(mode, make, plain, rpg, steps, device, out):
    """Median RPG/plain time ratio over ABBA-interleaved pairs of steps, into `out`."""
    times = {"plain": [], "rpg": []}
    n = steps if mode == "train_step" else 3 * steps  # eval steps are cheap and noisier
    for i in range(n + 2):  # two warm-up steps each
        pair = (("plain", plain), ("rpg", rpg))
        for name, m in (pair if i % 2 == 0 else pair[::-1]):  # ABBA: drift cancels
            t = _timed(make(m), device)
            if i >= 2:
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out[f"{mode}_plain_s"] = round(med["plain"], 4)
    out[f"{mode}_rpg_s"] = round(med["rpg"], 4)
    # median of the per-pair ratios: each pair ran back to back, so slow drift cancels
    out[f"{mode}_ratio"] = round(statistics.median(
        r / p for r, p in zip(times["rpg"], times["plain"])), 4)


def bench_generate(device, params, steps):
    """Seconds to generate every weight from the ring, and for the backward into it."""
    rpg = apply_rpg(create_model("resnet18", 10, small_input=True), "network", params).to(device)
    ring = rings_of(rpg)[0]

    def weights():
        return [ring.generate(i) for i in range(len(ring.sizes))]

    ones = [torch.ones_like(w) for w in weights()]
    fwd, bwd = [], []
    for i in range(steps + 2):
        fwd.append(_timed(weights, device))
        outs = weights()
        bwd.append(_timed(lambda: torch.autograd.backward(outs, ones), device))
    return round(statistics.median(fwd[2:]), 4), round(statistics.median(bwd[2:]), 4)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_leak(device, cycles=20):
    """Resident memory growth over `cycles` build/train-step/drop cycles of ResNet18-RPG."""
    def cycle():
        model = apply_rpg(create_model("resnet18", 10, small_input=True), "network", 10**5)
        model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(8, 3, 32, 32, device=device)
        F.cross_entropy(model(x), torch.randint(10, (8,), device=device)).backward()
        opt.step()
        del model, opt
        gc.collect()

    def used():
        if device.type == "cuda":
            return torch.cuda.memory_allocated(device) / 2**20
        return _rss_mib()

    cycle()
    start = used()
    for _ in range(cycles):
        cycle()
    return round(used() - start, 1)


def bench_plan(device):
    model = create_model("resnet50", 1000).to(device)
    start = time.perf_counter()
    apply_rpg(model, "network", 10**5)
    for ring in rings_of(model):
        ring.index  # the tables are drawn on first use: count that too
    return round(time.perf_counter() - start, 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=11)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--params", type=float, default=1e5)
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    args = ap.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for name in devices:
        if name == "cuda" and not torch.cuda.is_available():
            continue
        device = torch.device(name)
        row = dict(case="resnet18-cifar-stem-32px", device=name, batch=args.batch,
                   params=int(args.params), threads=torch.get_num_threads(),
                   torch=torch.__version__)
        row.update(bench_steps(device, args.steps, args.batch, int(args.params)))
        row["generate_s"], row["generate_backward_s"] = bench_generate(device, int(args.params),
                                                                      args.steps)
        row["plan_seconds_resnet50"] = bench_plan(device)
        row["leak_mib_20_cycles"] = bench_leak(device)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
