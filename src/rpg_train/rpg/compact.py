"""Compact files: only trainable parameters and buffers plus the recipe that rebuilds every
index table (safetensors, the recipe and a fingerprint of the tables in its JSON header)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UserError
from .apply import apply_rpg, rings_of
from .quant import RingCodes, mask_ring, pack_bits, unpack_bits

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
        codes, keep = getattr(module, "codes", None), getattr(module, "prune_keep", None)
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
    model = builder(**json.loads(meta["model"]))
    rpg = json.loads(meta["rpg"])
    if rpg is not None:
        apply_rpg(model, **rpg)
    found = tables_fingerprint(model)
    if found != meta["fingerprint"]:
        raise UserError("path", str(path), f"rebuilds different index tables from its recipe "
                        f"(fingerprint {found[:12]} != stored {meta['fingerprint'][:12]}); the "
                        "file comes from another rpg_train version or was edited")
    codes, sparse = {}, json.loads(meta.get("sparse", "{}"))
    for key, q in json.loads(meta.get("quant", "{}")).items():  # dequantize
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
            mask_ring(module, masks[f"{name}.weight"])
    return model
