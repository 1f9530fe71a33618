"""Export a trained checkpoint: `python -m rpg_train.export ckpt=PATH format=F out=PATH`.

Formats:
- compact: the ring-and-seed safetensors file (rpg_train.rpg.save_compact): trainable
  tensors and the recipe that rebuilds every index table; any backbone. A ring pruned in
  training (rpg.prune) is stored as a bitmask and its kept entries; `bits=8|4` (and
  `block=N`) stores the rings as integer codes (quantize_ring).
- dense: the materialised plain backbone's state dict (safetensors), which the backbone built
  without RPG loads with strict=True (the torchvision ResNets themselves where the model is
  one, i.e. without the small-input stem or a width multiplier), and OUT.json naming the
  model and its arguments.
- torchscript: torch.jit.trace of the materialised model.
- onnx: torch.onnx.export of the materialised model; checked with onnxruntime where it is
  installed, otherwise the command says that check was skipped.

Every export checks itself before its file is kept: the exported model's outputs on a fixed
batch match the trained model's within 1e-5 (float32, CPU). Nothing is written on failure.
The model is rebuilt from the checkpoint alone: no dataset is read.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import sys
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils import prune

from .engine import checkpoint
from .engine.build import model_from_checkpoint
from .engine.dense_pruning import pruned_layers
from .errors import UserError, check_choice
from .evaluate import checkpoint_config
from .models import create_model
from .rpg import load_compact, materialize, quantize_ring, rings_of, save_compact
from .rpg.quant import BITS
from .validation import validate

FORMATS = ("compact", "dense", "torchscript", "onnx")
ATOL = 1e-5


def load_trained(path) -> tuple[nn.Module, dict]:
    """The checkpoint's model in eval mode on the CPU, and its create_model arguments."""
    ckpt = checkpoint.load(path, key="ckpt")
    cfg = checkpoint_config(ckpt)
    validate(cfg)
    rebuilt = model_from_checkpoint(ckpt, cfg)  # a ring pruned in training keeps its masks
    model = rebuilt.model
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point()
           and not torch.isfinite(v).all()]
    if bad:
        raise ckpt.error(f"holds non-finite weights ({bad[0]}{' and others' if bad[1:] else ''}"
                         "): the run diverged; export an earlier checkpoint")
    return model.eval(), rebuilt.spec


def example_batch(spec: dict) -> torch.Tensor:
    """A fixed batch of the model's input shape (32 px for small-input models, else 224)."""
    size = 32 if spec.get("small_input") else 224
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, spec["in_chans"], size, size, generator=g)


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    err = (got.float() - want.float()).abs().max().item()
    if not err <= ATOL:
        raise RuntimeError(f"the {name} export's outputs differ from the trained model's by "
                           f"{err:.3g} (> {ATOL}); nothing was written")
    return err


def _write(fmt: str, model: nn.Module, spec: dict, x: torch.Tensor, want, out: Path) -> dict:
    """Write `fmt` to `out` (a temporary path) and check it; returns what to report."""
    if fmt == "compact":
        save_compact(model, out)
        return dict(max_abs_err=_check(fmt, load_compact(out).eval()(x), want))
    plain = materialize(model).eval()
    if fmt == "dense":
        from safetensors.torch import load_file, save_file

        save_file({k: v.detach().contiguous() for k, v in plain.state_dict().items()}, str(out))
        fresh = create_model(**spec).eval()
        fresh.load_state_dict(load_file(str(out)), strict=True)
        return dict(max_abs_err=_check(fmt, fresh(x), want))
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates jit; still asked for
            torch.jit.save(torch.jit.trace(plain, x), str(out))
            got = torch.jit.load(str(out))(x)
        return dict(max_abs_err=_check(fmt, got, want))
    with torch.no_grad(), warnings.catch_warnings():  # onnx, torch's TorchScript exporter
        warnings.simplefilter("ignore", UserWarning)  # constant-folding notes: not actionable
        torch.onnx.export(plain, (x,), str(out), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    try:
        import onnxruntime as ort
    except ImportError:
        return dict(checked="skipped: onnxruntime is not installed (pip install onnxruntime "
                            "to check the file)")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    return dict(max_abs_err=_check(fmt, got, want), checked="onnxruntime")


def export(ckpt_path, fmt: str, out, bits: int | None = None, block: int | None = None) -> dict:
    """Export and check; the file (and dense's JSON) appear only once the check passed.
    `bits` (compact only) quantizes the rings first (quantize_ring, one scale per ring or per
    `block` entries): the file is checked against the quantized model, and the report gives
    how far that moved the outputs."""
    check_choice("format", fmt, FORMATS, says="is not one of")
    if bits is not None and fmt != "compact":
        raise UserError("bits", bits, f"quantizes the compact file's rings; format={fmt} "
                        "stores the generated float32 weights")
    if bits is not None and bits not in BITS:
        raise UserError("bits", bits, "must be 4 or 8")
    if block is not None and (bits is None or block < 1):
        raise UserError("block", block, "needs bits=4|8 and must be at least 1")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise UserError("format", fmt, "needs the onnx package: pip install 'rpg-train[export]'")
    out = check_out(out, ckpt_path, fmt)
    model, spec = load_trained(ckpt_path)
    for module in pruned_layers(model):  # the pruning baseline: plain weights, zeros kept
        prune.remove(module, "weight")
    if bits is not None and not rings_of(model):
        raise UserError("bits", bits, "quantizes RPG rings, and this checkpoint has none "
                        "(rpg=none); export it without bits")
    x = example_batch(spec)
    with torch.no_grad():
        want = model(x)
    quantized = {}
    if bits is not None:
        quantize_ring(model, bits=bits, block=block)
        with torch.no_grad():
            trained, want = want, model(x)
        quantized = dict(bits=bits, block=block,
                         quantization_err=(want - trained).abs().max().item())
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        report = _write(fmt, model, spec, x, want, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as any file is (0644 usually): writers may use 0600
        os.replace(tmp, out)
        if fmt == "dense":
            Path(f"{out}.json").write_text(json.dumps(dict(model=spec), indent=2) + "\n")
    except OSError as err:  # a read-only folder, a full disk
        raise UserError("out", str(out), f"cannot be written ({err.strerror or err})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dict(format=fmt, out=str(out), bytes=out.stat().st_size,
                checkpoint_bytes=Path(ckpt_path).stat().st_size, **report, **quantized)


# what a run writes into its directory: an export must not replace them
RUN_FILES = ("last.pt", "last.prev.pt", "best.pt", "results.json", "config.yaml",
             "metrics.jsonl", "train.log")


def check_out(out, ckpt_path, fmt: str) -> Path:
    """`out` as a path an export may write: a file name in a folder this user can write to,
    that is neither the checkpoint nor any other checkpoint, nor a file of the run."""
    def bad(reason: str) -> UserError:
        return UserError("out", str(out), reason)  # the value as given

    if not str(out).strip():
        raise bad("is empty; give the file to write")
    path = Path(out)
    if path.is_dir():
        raise bad("is a folder; give the file to write in it")
    if not path.parent.is_dir():
        raise bad("is in a folder that does not exist")
    if not os.access(path.parent, os.W_OK):
        raise bad("is in a folder this user cannot write to")
    run_dir = Path(ckpt_path).resolve().parent
    for p in (path, Path(f"{path}.json")) if fmt == "dense" else (path,):
        if not p.exists() and p.name not in RUN_FILES:
            continue
        if p.exists() and os.path.samefile(p, ckpt_path):
            raise bad("is the checkpoint being exported; write the export to another file")
        if _is_checkpoint(p) or (p.name in RUN_FILES and p.resolve().parent == run_dir):
            raise bad(f"would replace {p.name}, a file of the run (or a checkpoint); write the "
                      "export to another file")
    return path


def _is_checkpoint(path: Path) -> bool:
    """Whether `path` is a torch.save file (a zip holding data.pkl; a TorchScript archive
    holds constants.pkl too, and may be replaced)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = {name.rpartition("/")[2] for name in z.namelist()}
        return "data.pkl" in names and "constants.pkl" not in names
    except (zipfile.BadZipFile, OSError):
        return False


USAGE = ("usage: python -m rpg_train.export ckpt=PATH format=compact|dense|torchscript|onnx "
         "out=PATH [bits=8|4 [block=N]]")
KEYS = ("ckpt", "format", "out", "bits", "block")


def _int(key: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(key, value, "is not an integer") from None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    if not {"ckpt", "format", "out"} <= set(args):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        odd = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in KEYS]
        if odd:
            key, _, value = odd[0].partition("=")
            raise UserError(key, value, "is not an export option (" + ", ".join(KEYS) + ")")
        r = export(args["ckpt"], args["format"], args["out"], _int("bits", args.get("bits")),
                   _int("block", args.get("block")))
    except UserError as err:  # bad input: one line; anything else is a bug with a traceback
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    quant = (f"  int{r['bits']} rings move the outputs by up to {r['quantization_err']:.2g}"
             if "bits" in r else "")
    ref = "quantized model" if "bits" in r else "trained"
    print(f"{r['format']}: {r['out']}  {r['bytes']:,} bytes  (checkpoint "
          f"{r['checkpoint_bytes']:,} bytes)  max |out - {ref}| "
          f"{r.get('max_abs_err', float('nan')):.2g}{quant}  {r.get('checked', '')}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
