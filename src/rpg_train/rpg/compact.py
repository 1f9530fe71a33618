"""Compact files: only trainable parameters and buffers plus the recipe that rebuilds every
index table (safetensors, the recipe and a fingerprint of the tables in its JSON header)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UserError
from .apply import apply_rpg, rings_of
from .quant import BITS, RingCodes
from .ring import Ring
from .sparsity import pack_bits, unpack_bits

# 2: per-ring table seeds, one multiplier reference per network; 3: quantized rings (codes,
# offsets, steps) may replace a ring's float entries; 4: a pruned ring is stored as a bitmask
# and its kept entries (floats or codes). Files of 2 and 3 still load; files without a pruned
# ring are still written as 3, so older versions read them.
FORMAT = "rpg-compact/4"
READS = ("rpg-compact/2", "rpg-compact/3", FORMAT)


def tables_fingerprint(model: nn.Module) -> str:
    """sha256 over every ring's size, table and scales, and theta0 where the ring has an
    offset (drawn afresh in float32, whatever the model's dtype): equal iff they are equal."""
    h = hashlib.sha256()
    for ring in rings_of(model):
        h.update(json.dumps([ring.weight.numel(), ring.paths, ring.scales]).encode())
        table = ring.draw_table() if ring.weight.is_meta else ring.index.cpu()
        h.update(table.numpy().tobytes())
        if getattr(ring, "offset", False):
            h.update(ring.draw_theta0().numpy().tobytes())
    return h.hexdigest()


def save_compact(model: nn.Module, path) -> None:
    """Write `model` (built by `rpg_train.models.create_model`) as a compact file."""
    from safetensors.torch import save_file

    spec = getattr(model, "model_spec", None)
    if spec is None:
        raise ValueError("save_compact: the model has no model_spec; build it with "
                         "rpg_train.models.create_model so the file can rebuild it")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    quant, sparse = {}, {}
    for name, module in model.named_modules():
        key = f"{name}.weight"
        codes = getattr(module, "codes", None)
        keep = module.keep_mask if isinstance(module, Ring) else None
        if codes is None and keep is None:
            continue
        part, store = tensors.pop(key), key
        if keep is not None:  # pruned by prune_ring: a bitmask, then only the kept entries
            mask = keep.detach().bool().cpu()
            sparse[key] = dict(n=part.numel())
            part, store = part[mask], f"{key}.kept"
            tensors[f"{key}.mask"] = pack_bits(mask)
        if codes is not None and codes.codes.numel() == part.numel() and torch.equal(
                codes.values(), part.float()):  # quantized (and not trained since): codes
            tensors.update({f"{key}.codes": codes.pack(), f"{key}.lo": codes.lo,
                            f"{key}.step": codes.step})
            quant[key] = dict(bits=codes.bits, block=codes.block, n=codes.codes.numel())
        else:  # float entries: what the ring holds
            tensors[store] = part
    meta = {"format": FORMAT if sparse else "rpg-compact/3", "model": json.dumps(spec),
            "rpg": json.dumps(getattr(model, "rpg_spec", None)),
            "fingerprint": tables_fingerprint(model), "quant": json.dumps(quant),
            "sparse": json.dumps(sparse)}
    save_file(tensors, str(path), metadata=meta)


def load_compact(path, builder=None) -> nn.Module:
    """Rebuild the model from the file's recipe, check the tables' fingerprint, load tensors.
    The header is checked first, and its sizes against the file's tensors on a model built
    on the meta device, so a damaged or edited file is one line and never a huge allocation.

    `builder(**model_spec)` makes the plain backbone (default: rpg_train.models.create_model).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError("path", str(path), f"is not a readable compact RPG file ({err})") from None
    if meta.get("format") not in READS:
        raise UserError("path", str(path), f"is not a compact RPG file (format="
                        f"{meta.get('format')!r}, expected {FORMAT!r})")
    if builder is None:
        from ..models import create_model as builder
    head = read_header(path, meta)
    shapes = {k: v.shape for k, v in _build(path, head, builder, "meta").state_dict().items()}
    _check_sizes(path, head, tensors, shapes)
    model = _build(path, head, builder)
    found = tables_fingerprint(model)
    if found != head["fingerprint"]:
        raise UserError("path", str(path), f"rebuilds different index tables from its recipe "
                        f"(fingerprint {found[:12]} != stored {head['fingerprint'][:12]}); the "
                        "file comes from another rpg_train version or was edited")
    codes, sparse = {}, head["sparse"]
    for key, q in head["quant"].items():  # dequantize
        c = RingCodes(RingCodes.unpack(tensors.pop(f"{key}.codes"), q["n"], q["bits"]),
                      tensors.pop(f"{key}.lo"), tensors.pop(f"{key}.step"), q["bits"],
                      q["block"])
        tensors[f"{key}.kept" if key in sparse else key], codes[key] = c.values(), c
    masks = {}
    for key, q in sparse.items():  # scatter the kept entries
        masks[key] = unpack_bits(tensors.pop(f"{key}.mask"), q["n"])
        kept = tensors.pop(f"{key}.kept")
        tensors[key] = kept.new_zeros(q["n"]).masked_scatter_(masks[key], kept)
    model.load_state_dict(tensors, strict=True)
    for name, module in model.named_modules():  # saved again, it stays quantized / pruned
        if f"{name}.weight" in codes:
            module.codes = codes[f"{name}.weight"]
        if f"{name}.weight" in masks:
            module.set_keep_mask(masks[f"{name}.weight"])
    return model


def _int(v, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def read_header(path, meta: dict) -> dict:
    """The header's fields, parsed and checked in one place: types and ranges here, sizes
    against the tensors in _check_sizes, option values (scope, sampling, ...) by apply_rpg.
    Keys this version does not know are passed on, so the builder or apply_rpg names them."""
    def bad(what: str) -> UserError:
        return UserError("path", str(path), f"has a damaged header: {what}")

    head = {}
    for field, default in (("model", None), ("rpg", None), ("quant", "{}"), ("sparse", "{}")):
        text = meta.get(field, default)
        if text is None:
            raise bad(f"it lacks {field!r}")
        try:
            head[field] = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise bad(f"{field!r} is not JSON ({str(err)[:80]})") from None
    m, r = head["model"], head["rpg"]
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        raise bad("'model' is not an object with a 'name'")
    for key in ("num_classes", "in_chans"):
        if (key in m or key == "num_classes") and not _int(m.get(key), 1):
            raise bad(f"model {key}={m.get(key)!r} is not a positive integer")
    if not isinstance(m.get("small_input", False), bool):
        raise bad(f"model small_input={m['small_input']!r} is not true or false")
    width = m.get("width", 1)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise bad(f"model width={width!r} is not a positive number")
    if r is not None:
        if not isinstance(r, dict) or not isinstance(r.get("scope"), str) or "params" not in r:
            raise bad("'rpg' is neither null nor an object with 'scope' and 'params'")
        if "seed" in r and not _int(r["seed"], -2**63):  # its range: torch's, in _build
            raise bad(f"rpg seed={r['seed']!r} is not an integer")
        odd = [k for k in ("sign", "share_stem", "share_head")
               if not isinstance(r.get(k, False), bool)]
        if odd:
            raise bad(f"rpg {odd[0]}={r[odd[0]]!r} is not true or false")
    fingerprint = meta.get("fingerprint")
    if not isinstance(fingerprint, str) or len(fingerprint) != 64:
        raise bad(f"fingerprint={fingerprint!r} is not a sha256 hex digest")
    head["fingerprint"] = fingerprint
    for field in ("quant", "sparse"):
        if not isinstance(head[field], dict) or not all(
                isinstance(v, dict) and _int(v.get("n"), 0) for v in head[field].values()):
            raise bad(f"{field!r} is not an object of {{tensor: {{'n': count, ...}}}}")
    for key, q in head["quant"].items():
        if q.get("bits") not in BITS or not _int(q.get("block"), 1):
            raise bad(f"quant {key}: bits={q.get('bits')!r}, block={q.get('block')!r} (bits "
                      "must be 4 or 8, block at least 1)")
    return head


def _build(path, head: dict, builder, device: str | None = None) -> nn.Module:
    """The model the header describes; on the meta device, its shapes without memory."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # apply_rpg's notes were shown when it was saved
            with torch.device(device) if device else contextlib.nullcontext():
                model = builder(**head["model"])
            if head["rpg"] is not None:
                apply_rpg(model, **head["rpg"])
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:  # UserError included
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError("path", str(path), f"has a recipe this version cannot rebuild "
                        f"({why})") from None
    return model


def _check_sizes(path, head: dict, tensors: dict, shapes: dict) -> None:
    """Every tensor the model needs is in the file with the size the header gives, and no
    other: the sizes that allocate (quant / sparse `n`) are bounded by the file's bytes."""
    def bad(what: str) -> UserError:
        return UserError("path", str(path), f"does not match its header: {what}")

    seen = set()

    def take(name: str, shape: tuple, dtype=None) -> torch.Tensor:
        t = tensors.get(name)
        if t is None:
            raise bad(f"it lacks the tensor {name}")
        if tuple(t.shape) != tuple(shape) or (dtype is not None and t.dtype != dtype):
            raise bad(f"{name} is {t.dtype} {tuple(t.shape)}, the header's model needs "
                      f"{dtype or t.dtype} {tuple(shape)}")
        seen.add(name)
        return t

    quant, sparse = head["quant"], head["sparse"]
    for key in [*quant, *sparse]:
        if key not in shapes:
            raise bad(f"it names {key}, which the model has not")
    for key, shape in shapes.items():
        n, store = shape.numel(), key
        if key in sparse:
            if sparse[key]["n"] != n:
                raise bad(f"sparse {key} has n={sparse[key]['n']}, the model's has {n} entries")
            mask = take(f"{key}.mask", (-(-n // 8),), torch.uint8)
            n, store = int(unpack_bits(mask, n).sum()), f"{key}.kept"
            shape = (n,)
        if key not in quant:
            take(store, shape)
            continue
        q = quant[key]
        if q["n"] != n:
            raise bad(f"quant {key} has n={q['n']}, the model's has {n} entries")
        take(f"{key}.codes", (n if q["bits"] == 8 else -(-n // 2),), torch.uint8)
        for part in ("lo", "step"):
            take(f"{key}.{part}", (-(-n // q["block"]),), torch.float32)
    extra = sorted(set(tensors) - seen)
    if extra:
        raise bad(f"it holds {extra[0]}, which the model has not")
