"""Benchmark of the RPG core against the plain backbone. One JSON line per case.

    python scripts/bench_rpg.py [--steps 7] [--batch 128] [--device cpu|cuda|all]
        [--model resnet18] [--image-size 32] [--amp off|bf16] [--channels-last]
        [--params 1e5[,2359296...]] [--stem auto|cifar|imagenet] [--profile]
        [--parts steps,generate,plan,leak]

train_step_ratio / eval_ratio: median over interleaved pairs of the RPG step time over the
plain one, pairs in ABBA order so the machine's drift cancels (eval takes 3x the steps).
eval_ratio runs inside `rpg.cached(model)`, as the engine evaluates; eval_uncached_ratio is a
plain no_grad forward, which generates every weight again.
plan_seconds_resnet50: apply_rpg on resnet50 and drawing its tables.
table_bytes_per_generated_weight: all the generator keeps besides the rings (index and inverse
tables) over the generated weights. plan_seconds: apply_rpg on resnet50 (tables drawn, rings built).
Images under 64 px get the CIFAR stem and 10 classes, larger ones the ImageNet stem and 1000
(the case name says which; --stem picks one). --params takes a list: one row per ring size.
--amp bf16 runs every step under autocast, --channels-last converts models and batch.
table_bytes_per_generated_weight_with_inverse: the same once every layer's inverse blocks (the
CUDA backward's) exist, on any device. *_ratio_range: the smallest and largest pair ratio;
*_ratio_ci95: a distribution-free 95 % interval of the median ratio (6 pairs or more).
peak_mem_ratio (CUDA): peak allocated memory of one training step, RPG over plain.
--profile adds profile_rpg_train_step: torch.profiler's table of one RPG training step.
leak_mib_20_cycles: growth of the process's resident memory over 20 cycles of building a
ResNet18-RPG, one training step and dropping it (after one warm-up cycle).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
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


MODES = ("train_step", "eval", "eval_uncached")


def _is_small(size: int, stem: str = "auto") -> bool:
    return size < 64 if stem == "auto" else stem == "cifar"


def _case(model: str, size: int, stem: str = "auto") -> str:
    return f"{model}-{'cifar-stem' if _is_small(size, stem) else 'imagenet'}-{size}px"


def profile_table(step, device, rows: int = 12) -> str:
    """The top operators and kernels of one call of `step`, by their own time on the device."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    step()  # warm
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
        _sync(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def bench_steps(device, steps, batch, params, model="resnet18", size=32, amp=None,
                channels_last=False, profile=False, stem="auto", modes=MODES):
    torch.manual_seed(0)
    small = _is_small(size, stem)
    classes = 10 if small else 1000
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def build():
        return create_model(model, classes, small_input=small)

    plain = build().to(device, memory_format=fmt)
    rpg = apply_rpg(build(), "network", params).to(device, memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(classes, (batch,), device=device)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (plain, rpg)}

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    def train(model):
        def step():
            opt = opts[id(model)]
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = model(x)
            F.cross_entropy(out.float(), y).backward()
            opt.step()
        return step

    def infer(model):
        def step():
            with torch.no_grad(), autocast():
                model(x)
        return step

    out = {}
    # eval: one cached() block around all its steps, as the engine wraps its evaluation loop
    # (weights generated once); eval_uncached: every forward generates every weight again
    for mode, make in (("train_step", train), ("eval", infer), ("eval_uncached", infer)):
        if mode not in modes:
            continue
        for m in (plain, rpg):
            m.train(mode == "train_step")
        scope = cached(rpg) if mode == "eval" else contextlib.nullcontext()
        with scope:
            _pairs(mode, make, plain, rpg, steps, device, out)
    if profile:
        rpg.train()
        out["profile_rpg_train_step"] = profile_table(train(rpg), device)
    if device.type == "cuda":
        peak = {}
        for name, m in (("plain", plain), ("rpg", rpg)):
            m.train()
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            train(m)()
            torch.cuda.synchronize(device)
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_mib_plain"], out["peak_mib_rpg"] = round(peak["plain"]), round(peak["rpg"])
        out["peak_mem_ratio"] = round(peak["rpg"] / peak["plain"], 4)
    rep = param_report(rpg)
    table = sum(r.table_bytes() for r in rings_of(rpg))
    out["table_bytes_per_generated_weight"] = round(table / rep["generated"], 4)
    for ring in rings_of(rpg):  # the CUDA backward's tables, made here on any device
        for position in range(len(ring.sizes)):
            ring.inverse(position)
    table = sum(r.table_bytes() for r in rings_of(rpg))
    out["table_bytes_per_generated_weight_with_inverse"] = round(table / rep["generated"], 4)
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
    ratios = [r / p for r, p in zip(times["rpg"], times["plain"])]
    out[f"{mode}_ratio"] = round(statistics.median(ratios), 4)
    out[f"{mode}_ratio_range"] = [round(min(ratios), 4), round(max(ratios), 4)]
    ci = median_ci(ratios)
    if ci is not None:
        out[f"{mode}_ratio_ci95"] = [round(ci[0], 4), round(ci[1], 4)]


def median_ci(values, level=0.95):
    """A distribution-free interval for the median (the binomial order-statistic one): the
    k-th smallest and k-th largest value, k as large as the coverage allows. None when there
    are too few values for `level` (fewer than 6 at 95 %). It takes the pair ratios as
    independent draws, which the ABBA order only roughly makes them."""
    if not 0 < level < 1:
        raise ValueError(f"level={level} is not in (0, 1)")
    xs, n = sorted(values), len(values)
    tail = (1 - level) / 2
    below, k = 0.0, 0  # below: P(Binomial(n, 1/2) <= k - 1)
    while below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    return None if k == 0 else (xs[k - 1], xs[n - k])


def bench_generate(device, params, steps):
    """Seconds to generate every weight from the ring, and for the backward into it."""
    rpg = apply_rpg(create_model("resnet18", 10, small_input=True), "network", params).to(device)
    ring = rings_of(rpg)[0]

    def weights():
        return [ring.generate(i) for i in range(len(ring.sizes))]

    ones = [torch.ones_like(w) for w in weights()]
    fwd, bwd = [], []
    for _ in range(steps + 2):
        fwd.append(_timed(weights, device))
        bwd.append(_timed(functools.partial(torch.autograd.backward, weights(), ones), device))
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
        _ = ring.index  # the tables are drawn on first use: count that too
    return round(time.perf_counter() - start, 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=11)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--params", type=_floats, default=[1e5],
                    help="ring sizes, comma-separated: one row each")
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--stem", default="auto", choices=["auto", "cifar", "imagenet"],
                    help="auto: the CIFAR stem under 64 px, else ImageNet's")
    ap.add_argument("--amp", default="off", choices=sorted(AMP))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="add the top kernels of one RPG training step (profile_rpg_train_step)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="the steps part's timings, comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--parts", type=_parts, default=list(PARTS),
                    help="comma-separated subset of " + ",".join(PARTS))
    args = ap.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for name in devices:
        if name == "cuda" and not torch.cuda.is_available():
            continue
        device = torch.device(name)
        for params in map(int, args.params):
            print(json.dumps(bench_case(device, params, args)), flush=True)


AMP = {"off": None, "bf16": torch.bfloat16}
PARTS = ("steps", "generate", "plan", "leak")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _parts(text: str) -> list[str]:
    parts = text.split(",")
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown part {bad[0]!r}; choose from {','.join(PARTS)}")
    return parts


def bench_case(device, params: int, args) -> dict:
    row = dict(case=_case(args.model, args.image_size, args.stem), device=device.type,
               batch=args.batch, params=params, threads=torch.get_num_threads(),
               torch=torch.__version__)
    if args.amp != "off" or args.channels_last:  # the default rows stay as they were
        row.update(amp=args.amp, channels_last=args.channels_last)
    if "steps" in args.parts:
        row.update(bench_steps(device, args.steps, args.batch, params, args.model,
                               args.image_size, AMP[args.amp], args.channels_last,
                               args.profile, args.stem, args.modes.split(",")))
    if "generate" in args.parts:
        row["generate_s"], row["generate_backward_s"] = bench_generate(device, params,
                                                                      args.steps)
    if "plan" in args.parts:
        row["plan_seconds_resnet50"] = bench_plan(device)
    if "leak" in args.parts:
        row["leak_mib_20_cycles"] = bench_leak(device)
    return row


if __name__ == "__main__":
    main()
