"""apply_rpg, param_report and materialize: the public face of the method."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .plan import SAMPLINGS, SCOPES, as_count, draw_index, find_targets, group_targets, split_params
from .ring import NewForwardHook, Ring, RingBank, is_generated, make_generated, make_plain

RINGS_ATTR = "rpg_rings"


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def apply_rpg(model: nn.Module, scope: str, params, seed: int = 0, sampling: str = "even",
              sign: bool = True, share_stem: bool = False, share_head: bool = False) -> nn.Module:
    """Replace the model's conv/linear weights by weights generated from rings, in place.

    `scope` picks one ring for the network, or one per stage / block / layer; `params` is the
    total ring size over all rings. Tables come from `seed` alone; the rings are initialised
    from torch's global RNG, like any other parameter.
    """
    _check_choice("scope", scope, SCOPES)
    _check_choice("sampling", sampling, SAMPLINGS)
    if scope == "none":
        return model
    if hasattr(model, RINGS_ATTR):
        raise ValueError("apply_rpg: this model already has RPG rings; build a fresh model")
    targets = find_targets(model, share_stem, share_head)
    if not targets:
        raise ValueError(f"apply_rpg: {type(model).__name__} has no conv or linear weight to "
                         "generate (stem and head are left out unless share_stem/share_head)")
    total = sum(t.numel for t in targets)
    params = as_count(params)
    if not 1 <= params < total:
        raise ValueError(f"params={params} is out of range: scope={scope!r} generates {total} "
                         f"weights, so params must be in [1, {total - 1}]")
    groups = group_targets(targets, scope)
    ring_sizes = split_params(params, {k: sum(t.numel for t in g) for k, g in groups.items()},
                              scope)
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    rings = RingBank()
    for key, group in groups.items():
        first = modules[group[0].path].weight
        index = draw_index([t.numel for t in group], ring_sizes[key], sampling, sign, gen)
        ring = Ring(ring_sizes[key], index, [t.path for t in group], [t.shape for t in group],
                    [t.fan_out for t in group], device=first.device, dtype=first.dtype)
        rings[key.replace(".", "_")] = ring
        for position, t in enumerate(group):
            make_generated(modules[t.path], ring, position)
    setattr(model, RINGS_ATTR, rings)
    model.rpg_spec = dict(scope=scope, params=params, seed=seed, sampling=sampling, sign=sign,
                          share_stem=share_stem, share_head=share_head)
    model.register_forward_pre_hook(NewForwardHook(rings))
    return model


def rings_of(model: nn.Module) -> list[Ring]:
    return [m for m in model.modules() if isinstance(m, Ring)]


def param_report(model: nn.Module) -> dict:
    """Parameter counts, one definition everywhere (DESIGN.md):
    trainable = ring + unshared = timm's count; dense = the backbone without RPG."""
    rings = rings_of(model)
    ring_ids = {id(r.weight) for r in rings}
    params = list(model.parameters())  # shared tensors once, as timm counts them
    ring = sum(r.weight.numel() for r in rings)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    generated = sum(r.generated for r in rings)
    dense = sum(p.numel() for p in params if id(p) not in ring_ids) + generated
    return dict(ring=ring, unshared=trainable - sum(r.weight.numel() for r in rings
                                                    if r.weight.requires_grad),
                trainable=trainable, generated=generated, dense=dense,
                compression=dense / trainable if trainable else float("inf"))


def materialize(model: nn.Module) -> nn.Module:
    """A plain copy of the backbone: generated weights become ordinary Parameters, the rings
    and hooks are gone, and state_dict() matches the backbone built without RPG."""
    was_training = model.training
    plain = copy.deepcopy(model)
    plain.eval()  # generate once, without autograd
    with torch.no_grad():
        for module in plain.modules():
            if is_generated(module):
                make_plain(module)
    for key, hook in list(plain._forward_pre_hooks.items()):
        if isinstance(hook, NewForwardHook):
            del plain._forward_pre_hooks[key]
    if hasattr(plain, RINGS_ATTR):
        delattr(plain, RINGS_ATTR)
        del plain.rpg_spec
    return plain.train(was_training)
