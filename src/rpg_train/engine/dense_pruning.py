"""The pruning baseline: a trained dense model, globally magnitude-pruned over the weights RPG
would generate (torch.nn.utils.prune, L1 across all those layers at once), then fine-tuned
with its masks in place. Its DoF are counted as non-zero weights, not tensor sizes."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import prune

from ..errors import UserError
from ..rpg.plan import find_targets, ring_size
from . import checkpoint


def prunable_layers(model: nn.Module, share_stem: bool, share_head: bool) -> list[nn.Module]:
    """The layers RPG would generate (before pruning: a pruned weight is no longer a
    `weight` Parameter, so find_targets would skip it)."""
    modules = dict(model.named_modules())
    return [modules[t.path] for t in find_targets(model, share_stem, share_head)]


def pruned_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "weight_mask")]


def load_init(model: nn.Module, path: str, spec: dict) -> int:
    """Load the trained dense weights to prune; returns the epochs they were trained for."""
    init = checkpoint.load(path, key="prune.init")
    s, ident = init.state, init.state["identity"]
    if ident.get("rpg") is not None or ident.get("prune") or ident.get("model") != spec:
        raise init.error(f"is not a dense checkpoint of this backbone ({ident.get('model')}, "
                         f"rpg {ident.get('rpg')}, pruned {ident.get('prune')}); pruning starts "
                         f"from a trained rpg=none run of {spec}")
    epochs = s["config"]["trainer"]["epochs"]
    if s["batch"] != 0 or s["epoch"] < epochs:  # a run still training: finish it first
        raise init.error(f"is an unfinished run (epoch {s['epoch']} of {epochs}, batch "
                         f"{s['batch']}); prune its final checkpoint")
    model.load_state_dict(init.state["model"])
    return int(init.state["epoch"])


def prune_to(model: nn.Module, keep, share_stem: bool = False, share_head: bool = False) -> int:
    """Zero all but the `keep` largest-magnitude weights (an integer, or a fraction in (0, 1))
    over the generated layers together; returns `keep` as a count."""
    layers = prunable_layers(model, share_stem, share_head)
    total = sum(m.get_parameter("weight").numel() for m in layers)
    try:
        keep = ring_size(keep, total)
    except UserError as err:
        raise err.under("prune") from None
    if not 1 <= keep < total:
        raise UserError("prune.params", keep, f"is out of range: the generated layers hold "
                        f"{total:,} weights, so keep 1 to {total - 1:,}")
    prune.global_unstructured([(m, "weight") for m in layers],
                              pruning_method=prune.L1Unstructured, amount=total - keep)
    return keep


def nonzero_count(layers: list[nn.Module]) -> int:
    """Non-zero effective weights (weight_orig * weight_mask: current even right after a
    load_state_dict, when the module's `weight` attribute is stale until the next forward)."""
    with torch.no_grad():
        return sum(int(torch.count_nonzero(m.get_parameter("weight_orig")
                                           * m.get_buffer("weight_mask"))) for m in layers)


def pruned_report(model: nn.Module) -> dict:
    """param_report's fields for a pruned model: trainable = non-zero pruned-layer weights +
    every other parameter."""
    layers = pruned_layers(model)
    origs = {id(m.weight_orig) for m in layers}
    others = sum(p.numel() for p in model.parameters() if id(p) not in origs and p.requires_grad)
    generated = sum(m.get_parameter("weight_orig").numel() for m in layers)
    nonzero = nonzero_count(layers)
    trainable = nonzero + others
    return dict(ring=0, unshared=others, trainable=trainable, generated=generated,
                dense=others + generated, compression=(others + generated) / trainable,
                ungenerated=[], nonzero=nonzero)
