"""apply_rpg, param_report, materialize and cached: the public face of the method."""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError, check_choice
from .plan import (
    SAMPLINGS,
    SCOPES,
    find_targets,
    group_targets,
    ring_seeds,
    ring_size,
    split_params,
    ungenerated_weights,
)
from .ring import Ring, RingBank, cached_rings, is_generated, make_generated, make_plain

RINGS_ATTR = "rpg_rings"


def apply_rpg(model: nn.Module, scope: str, params, seed: int = 0, sampling: str = "even",
              sign: bool = True, share_stem: bool = False, share_head: bool = False,
              offset: bool = False, k: int = 1) -> nn.Module:
    """Replace the model's conv/linear weights by weights generated from rings, in place.

    `scope` picks one ring for the network, or one per stage / block / layer; `params` is the
    total ring size over all rings: an integer (1e5 works too) or a fraction in (0, 1) of the
    generated weights. Every layer's multiplier is sqrt(fan_ref / fan_out) with one fan_ref
    for the whole network (the largest fan-out of any generated layer) in every scope, so a
    layer's effective learning rate does not depend on the scope. Tables come from `seed`
    alone; the rings are initialised from torch's global RNG, like any other parameter.
    `offset` adds a frozen random theta0 (each layer's Kaiming init, drawn from the seed,
    never trained or saved) to the generated weights and starts the rings at 0: Li et al.'s
    random subspace with a sparse projection. It costs one float per generated weight.
    `k` makes every generated weight the sum of k signed ring entries scaled by 1/sqrt(k)
    (k = 1 is RPG); the tables grow to 4k bytes per generated weight.
    Works on a meta-device model: the tables are drawn after `to_empty(device=...)`.
    """
    check_choice("scope", scope, SCOPES)
    check_choice("sampling", sampling, SAMPLINGS)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError("k", k, "must be an integer of at least 1 (ring entries per weight)")
    if scope == "none":
        return model
    if hasattr(model, RINGS_ATTR):
        raise RuntimeError("apply_rpg: this model already has RPG rings; build a fresh model")
    targets = find_targets(model, share_stem, share_head)
    if not targets:
        raise UserError("scope", scope, f"finds no conv or linear weight to generate in "
                        f"{type(model).__name__} (stem and head are left out unless "
                        "share_stem/share_head)")
    total = sum(t.numel for t in targets)
    params = ring_size(params, total)
    if not 1 <= params <= total:  # = total: the ring as large as the layers (T/N = 1)
        raise UserError("params", params, f"is out of range: scope={scope!r} generates "
                        f"{total} weights, so params must be in [1, {total}] or a "
                        "fraction in (0, 1)")
    left_out = ungenerated_weights(model)
    if left_out:
        warnings.warn(f"apply_rpg: {len(left_out)} weights cannot be generated and stay "
                      f"unshared: {', '.join(left_out)}", stacklevel=2)
    groups = group_targets(targets, scope)
    sizes = split_params(params, {k: sum(t.numel for t in g) for k, g in groups.items()}, scope)
    fan_ref = max(t.fan_out for t in targets)
    modules = dict(model.named_modules(remove_duplicate=False))
    rings = RingBank()
    for (key, group), table_seed in zip(groups.items(), ring_seeds(seed, len(groups))):
        first = modules[group[0].path]._parameters["weight"]
        ring = Ring(sizes[key], [t.path for t in group], [t.shape for t in group],
                    [t.fan_out for t in group], fan_ref, sampling, sign, table_seed,
                    offset=offset, k=k, device=first.device, dtype=first.dtype)
        rings[key.replace(".", "_")] = ring
        for position, t in enumerate(group):
            for path in (t.path, *t.aliases):
                if not is_generated(modules[path]):  # one module may sit at two paths
                    make_generated(modules[path], ring, position)
    # first child, so `nn.Sequential(*list(model.children())[:-1])` (drop the head) keeps it
    children = dict(model._modules)
    model._modules.clear()
    model._modules[RINGS_ATTR] = rings
    model._modules.update(children)
    spec: dict[str, Any] = dict(scope=scope, params=params, seed=seed, sampling=sampling,
                                sign=sign, share_stem=share_stem, share_head=share_head)
    # recorded only when not the default, so checkpoints and files made before still match
    if offset:
        spec["offset"] = True
    if k != 1:
        spec["k"] = k
    # nn.Module.__setattr__ is typed for tensors and modules; a plain attribute is allowed
    model.rpg_spec = spec  # type: ignore[assignment]
    return model


def rings_of(model: nn.Module) -> list[Ring]:
    return [m for m in model.modules() if isinstance(m, Ring)]


@contextmanager
def cached(model: nn.Module):
    """Generate each weight once and reuse it inside the block (evaluation loops); outside,
    generated weights are made on every access and are never stale. Do not update the ring
    inside the block through `.data` or a fused optimizer: those do not mark it changed."""
    with cached_rings(rings_of(model)):
        yield model


def param_report(model: nn.Module) -> dict:
    """Parameter counts, one definition everywhere:
    trainable = ring + unshared = timm's count; dense = the backbone without RPG.
    `ungenerated` names the weights that no ring can generate because of their layer type."""
    rings = rings_of(model)
    ring_ids = {id(r.weight) for r in rings}
    params = list(model.parameters())  # shared tensors once, as timm counts them
    ring = sum(r.weight.numel() for r in rings)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    generated = sum(r.generated for r in rings)
    dense = sum(p.numel() for p in params if id(p) not in ring_ids) + generated
    trainable_ring = sum(r.weight.numel() for r in rings if r.weight.requires_grad)
    return dict(ring=ring, unshared=trainable - trainable_ring, trainable=trainable,
                generated=generated, dense=dense,
                compression=dense / trainable if trainable else float("inf"),
                ungenerated=ungenerated_weights(model))


def materialize(model: nn.Module) -> nn.Module:
    """A plain copy of the backbone: generated weights become ordinary Parameters (tied
    layers share one), the rings are gone, and state_dict() matches the backbone built
    without RPG."""
    was_training = model.training
    plain = copy.deepcopy(model)
    made: dict[tuple[int, int], nn.Parameter] = {}
    with torch.no_grad():
        for module in plain.modules():
            if is_generated(module):
                ring, position = module.__dict__["_rpg_source"]
                key = (id(ring), position)
                if key not in made:
                    made[key] = nn.Parameter(ring.generate(position).detach().clone())
                make_plain(module, made[key])
    if hasattr(plain, RINGS_ATTR):
        delattr(plain, RINGS_ATTR)
        del plain.rpg_spec
    return plain.train(was_training)
