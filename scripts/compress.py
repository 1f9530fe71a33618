"""Compressing a trained RPG model and its dense twin: test top-1 against file size.

    python scripts/compress.py --rpg RUN_DIR --dense RUN_DIR [--out docs/results/compress.md]
                               [--work runs/compress] [--amounts 0.5 0.8] [--finetune-epochs 1]

RUN_DIRs are finished training runs (their last.pt) of the same backbone and data: one RPG
model, one rpg=none model. Rows, each measured on the test set:
- RPG: the float32 ring; int8 and int4 rings (quantize_ring: one scale per ring, and per block
  of 64 entries); ring pruning by each amount (prune_ring), before and after fine-tuning
  (the engine's rpg.prune: its own optimizer at optim.finetune_lr, a tenth of optim.lr, no
  warm-up), and the fine-tuned pruned ring with its kept entries quantized to int8.
- dense: float32; the weights of the layers RPG would generate quantized per output channel
  to int8 / int4 (the same affine rounding, one scale per output channel); the same layers
  magnitude-pruned (global L1) by each amount, before and after the same fine-tuning
  (the pruning baseline, prune.init).
Every size is a file written here: compact files (rpg_train.rpg.save_compact: pruned rings
as a bitmask and their kept entries, quantized rings as packed codes) for RPG, safetensors of
the state dict (quantized layers as packed codes plus per-channel offsets and steps, pruned
layers as a bitmask and kept values) for dense. Parameters outside the compressed layers
(stem, classifier, norms) stay float32 in both. Fine-tuning runs go to --work and resume.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from functools import cache, partial
from pathlib import Path

import torch
from safetensors.torch import save_file

from rpg_train.data import build_data
from rpg_train.engine import checkpoint, optim, train
from rpg_train.engine.amp import autocast_for
from rpg_train.engine.dense_pruning import prunable_layers, prune_to, pruned_layers
from rpg_train.engine.loop import evaluate_loader
from rpg_train.evaluate import checkpoint_config
from rpg_train.export import load_trained
from rpg_train.rpg import prune_ring, quantize_ring, rings_of, save_compact
from rpg_train.rpg.quant import quantize
from rpg_train.rpg.sparsity import pack_bits
from rpg_train.validation import validate

PROG = "compress.py"
QUANT = [(8, None), (4, None), (4, 64)]  # (bits, block) of the ring rows; None: one per ring


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--rpg", type=Path, required=True, help="a finished RPG run directory")
    p.add_argument("--dense", type=Path, required=True, help="its dense twin (rpg=none)")
    p.add_argument("--out", type=Path, default=Path("docs/results/compress.md"))
    p.add_argument("--work", type=Path, default=Path("runs/compress"),
                   help="fine-tuning runs and the files whose sizes are reported")
    p.add_argument("--amounts", type=float, nargs="+", default=[0.5, 0.8])
    p.add_argument("--finetune-epochs", type=int, default=1)
    args = p.parse_args(argv)
    for key in ("rpg", "dense"):
        if not (getattr(args, key) / "last.pt").is_file():
            p.error(f"--{key} {getattr(args, key)} holds no last.pt")
    if not all(0 < a < 1 for a in args.amounts):
        p.error(f"--amounts {args.amounts}: each must be in (0, 1)")
    data = [_config(getattr(args, k))["data"]["name"] for k in ("rpg", "dense")]
    if data[0] != data[1]:
        p.error(f"--rpg trained on {data[0]} and --dense on {data[1]}: give twins")
    world = _trained(args.rpg).state["schedule"].get("world size", 1)  # older: one
    if world != 1:  # its fine-tuning resumes it here, in one process
        p.error(f"--rpg {args.rpg} was trained by {world} processes; this script fine-tunes "
                "in one (train the RPG model in one process, or prune it with torchrun and "
                "rpg.prune.amount)")
    return args


def finetune_lr(run_dir: Path) -> float:
    """The fine-tuning lr of the engine's one rule (optim.finetune_lr: a tenth of the run's
    own optim.lr), for ring pruning and for the pruning baseline alike."""
    return optim.finetune_lr(checkpoint_config(_trained(run_dir)))


@cache
def _trained(run_dir: Path) -> checkpoint.Checkpoint:
    """A run's last.pt, read once (an ImageNet checkpoint is large)."""
    return checkpoint.load(run_dir / "last.pt", key=str(run_dir))


def _config(run_dir: Path) -> dict:
    return _trained(run_dir).state["config"]


class Scorer:
    """Test top-1 of a model on its checkpoint's test split (built once)."""

    def __init__(self, run_dir: Path):
        cfg = checkpoint_config(_trained(run_dir))
        loaders = build_data(cfg.data, torch.device("cpu"), cfg.trainer.seed, with_train=False)
        self.loader = loaders.val
        self.autocast = partial(autocast_for, None, torch.device("cpu"))

    def __call__(self, model) -> float:
        return evaluate_loader(model, self.loader, self.autocast)["val_top1"]


def finetune(run_dir: Path, work: Path, overrides: list[str], start: Path | None = None) -> Path:
    """A fine-tuning run with `run_dir`'s config and `overrides`, in `work`, starting from
    checkpoint `start` (None: from scratch) or, if it was cut, from its own last.pt. A run
    already in `work` is reused only if it was made from the same checkpoint and overrides."""
    ckpt = _trained(run_dir)
    overrides = ["trainer.progress=false", "logger.name=none", "trainer.max_steps=0",
                 *overrides]
    stamp = dict(source=str((run_dir / "last.pt").resolve()), source_step=ckpt.state["step"],
                 overrides=overrides)
    made = work / "compress-stamp.json"
    if work.is_dir() and any(work.iterdir()):
        if not made.is_file() or json.loads(made.read_text()) != stamp:
            raise SystemExit(f"{PROG}: {work} holds a fine-tuning run of another checkpoint or "
                             "other settings; remove it or give another --work")
    else:
        work.mkdir(parents=True, exist_ok=True)
        made.write_text(json.dumps(stamp, indent=2) + "\n")
    if not (work / "results.json").is_file():
        cfg = checkpoint_config(ckpt, overrides)
        resume = "auto" if (work / "last.pt").is_file() else start
        cfg.trainer.resume = None if resume is None else str(resume)
        cfg.out_dir = str(work)
        validate(cfg)
        train(cfg)
    return work / "last.pt"


def state_bytes(tensors: dict, path: Path) -> int:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    return path.stat().st_size


def dense_quantized(model, bits: int, path: Path) -> tuple[torch.nn.Module, int]:
    """The generated layers' weights quantized per output channel; the model and file size."""
    model = copy.deepcopy(model)
    tensors = dict(model.state_dict())
    for name, layer in _named(model, prunable_layers(model, False, False)):
        w = layer.weight.detach()
        codes = quantize(w.flatten(), bits, block=w[0].numel())  # one block per out channel
        with torch.no_grad():
            layer.weight.copy_(codes.values().view_as(w))
        del tensors[f"{name}.weight"]
        tensors.update({f"{name}.weight.codes": codes.pack(), f"{name}.weight.lo": codes.lo,
                        f"{name}.weight.step": codes.step})
    return model, state_bytes(tensors, path)


def dense_sparse_bytes(model, path: Path) -> int:
    """A pruned dense model's file: pruned layers as bitmask + kept values."""
    tensors = {k: v for k, v in model.state_dict().items()
               if not k.endswith((".weight_orig", ".weight_mask"))}
    for name, layer in _named(model, pruned_layers(model)):
        keep = layer.weight_mask.bool().flatten()
        w = (layer.weight_orig * layer.weight_mask).detach().flatten()
        tensors.update({f"{name}.weight.mask": pack_bits(keep), f"{name}.weight.kept": w[keep]})
    return state_bytes(tensors, path)


def _named(model, layers):
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(m)], m) for m in layers]


def nonzero_ring(model) -> int:
    return int(sum((r.weight != 0).sum() for r in rings_of(model)))


def rpg_rows(args) -> list[dict]:
    model, _ = load_trained(args.rpg / "last.pt")
    score, ft_lr = Scorer(args.rpg), finetune_lr(args.rpg)
    entries = sum(r.weight.numel() for r in rings_of(model))
    w = args.work

    def row(variant, m, path, stored):
        save_compact(m, path)
        return dict(model="RPG", variant=variant, stored=stored, bytes=path.stat().st_size,
                    top1=score(m))

    rows = [row("float32 ring", model, w / "rpg-float32.st", entries)]
    for bits, block in QUANT:
        m = copy.deepcopy(model)
        quantize_ring(m, bits=bits, block=block)
        per = "per ring" if block is None else f"per {block} entries"
        rows.append(row(f"int{bits} ring ({per})", m, w / f"rpg-int{bits}-{block}.st", entries))
    for a in args.amounts:
        m = copy.deepcopy(model)
        prune_ring(m, a)
        rows.append(row(f"{a:.0%} ring pruned", m, w / f"rpg-prune{a}.st", nonzero_ring(m)))
        last = finetune(args.rpg, w / f"rpg-prune{a}-ft{args.finetune_epochs}", [
            f"rpg.prune.amount={a}", f"rpg.prune.finetune_epochs={args.finetune_epochs}",
            f"rpg.prune.lr={ft_lr}"], start=args.rpg / "last.pt")
        tuned, _ = load_trained(last)  # the masks come with it
        rows.append(row(f"{a:.0%} ring pruned + {args.finetune_epochs} epoch fine-tuning",
                        tuned, w / f"rpg-prune{a}-ft.st", nonzero_ring(tuned)))
        quantize_ring(tuned, bits=8)  # both: the kept entries' codes and the bitmask
        rows.append(row(f"{a:.0%} ring pruned + {args.finetune_epochs} epoch fine-tuning, "
                        "int8 kept entries (per ring)", tuned, w / f"rpg-prune{a}-ft-int8.st",
                        nonzero_ring(tuned)))
    return rows


def dense_rows(args) -> list[dict]:
    model, _ = load_trained(args.dense / "last.pt")
    score, ft_lr = Scorer(args.dense), finetune_lr(args.dense)
    layers = prunable_layers(model, False, False)
    generated = sum(m.weight.numel() for m in layers)
    w = args.work
    rows = [dict(model="dense", variant="float32", stored=generated,
                 bytes=state_bytes(model.state_dict(), w / "dense-float32.st"), top1=score(model))]
    for bits in (8, 4):
        m, size = dense_quantized(model, bits, w / f"dense-int{bits}.st")
        rows.append(dict(model="dense", variant=f"int{bits} weights (per output channel)",
                         stored=generated, bytes=size, top1=score(m)))
    for a in args.amounts:
        m = copy.deepcopy(model)
        keep = prune_to(m, round(1 - a, 9))
        rows.append(dict(model="dense", variant=f"{a:.0%} weights pruned", stored=keep,
                         bytes=dense_sparse_bytes(m, w / f"dense-prune{a}.st"), top1=score(m)))
        last = finetune(args.dense, w / f"dense-prune{a}-ft{args.finetune_epochs}", [
            f"prune.init={args.dense / 'last.pt'}", f"prune.params={round(1 - a, 9)}",
            f"trainer.epochs={args.finetune_epochs}", f"optim.lr={ft_lr}",
            "sched.warmup_epochs=0"])
        tuned, _ = load_trained(last)
        rows.append(dict(model="dense", variant=f"{a:.0%} weights pruned + "
                         f"{args.finetune_epochs} epoch fine-tuning", stored=keep,
                         bytes=dense_sparse_bytes(tuned, w / f"dense-prune{a}-ft.st"),
                         top1=score(tuned)))
    return rows


def markdown(rows: list[dict], args, command: str) -> str:
    head = ("| model | variant | stored weights | file bytes | vs float32 | test top-1 % |\n"
            "| --- | --- | ---: | ---: | ---: | ---: |\n")
    base = {r["model"]: r["bytes"] for r in rows if "float32" in r["variant"]}
    body = "".join(f"| {r['model']} | {r['variant']} | {r['stored']:,} | {r['bytes']:,} | "
                   f"{r['bytes'] / base[r['model']]:.2f}x | {r['top1']:.2f} |\n" for r in rows)
    return (f"# Compressing a trained RPG model and its dense twin\n\nMade by:\n\n"
            f"    {command}\n\nRPG run: `{args.rpg}`; dense run: `{args.dense}`.\n"
            f"\"stored weights\": the entries of the compressed part kept (ring entries for "
            f"RPG, generated-layer weights for dense); \"file bytes\": the file written.\n\n"
            + head + body)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = rpg_rows(args) + dense_rows(args)
    command = "python scripts/compress.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, args, command))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(markdown(rows, args, command))
    print(f"{PROG}: wrote {args.out} and {args.out.with_suffix('.json')} in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
