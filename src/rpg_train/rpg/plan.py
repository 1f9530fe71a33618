"""The plan: which weights a model's rings generate, how rings are sized, and the index tables.

Everything here is a pure function of the model's structure and a seed, drawn from CPU
`torch.Generator`s, so every process and machine builds identical tables.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError

SCOPES = ("network", "stage", "block", "layer", "none")
SAMPLINGS = ("even", "ring", "iid", "plain")
GENERATED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Target:
    """One weight that a ring generates: `path` owns it; `aliases` are other layers that
    share the same Parameter (tied weights stay tied: one target, counted once)."""

    path: str
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def fan_out(self) -> int:
        # torch's fan_out: out channels times the kernel's receptive field (1 for Linear)
        return self.numel // self.shape[1]


def _own_weight(module: nn.Module):
    w = module._parameters.get("weight")
    return w if isinstance(w, torch.Tensor) else None


def find_targets(model: nn.Module, share_stem: bool, share_head: bool) -> list[Target]:
    """Conv and linear weights in module order; the stem (first conv) and the head (last
    linear) are left out unless shared. Biases and norm layers are never generated. A weight
    that is also used where it cannot be generated (say, a head tied to an Embedding) is
    left alone rather than untied."""
    layers = [(p, m) for p, m in model.named_modules(remove_duplicate=False)
              if isinstance(m, GENERATED_TYPES) and _own_weight(m) is not None]
    convs = [p for p, m in layers if not isinstance(m, nn.Linear)]
    linears = [p for p, m in layers if isinstance(m, nn.Linear)]
    skip = set()
    if convs and not share_stem:
        skip.add(convs[0])
    if linears and not share_head:
        skip.add(linears[-1])
    users: dict[int, list[str]] = {}  # every (sub)module path that holds each weight
    for path, m in model.named_modules(remove_duplicate=False):
        for p in m._parameters.values():
            if p is not None:
                users.setdefault(id(p), []).append(path)
    generatable = {p for p, _ in layers} - skip
    targets, seen = [], set()
    for _, m in layers:
        w = _own_weight(m)
        if id(w) in seen:
            continue
        seen.add(id(w))
        holders = users[id(w)]
        if not set(holders) <= generatable:
            continue  # shared with the stem, the head or a layer type we do not generate
        targets.append(Target(holders[0], tuple(w.shape), tuple(holders[1:])))
    return targets


def ungenerated_weights(model: nn.Module) -> list[str]:
    """Trainable weights (2-D or more) that no ring can generate because of their layer type
    (ConvTranspose, Embedding, MultiheadAttention.in_proj_weight, position embeddings ...).
    The stem and head are not listed: they are conv/linear layers left out by choice."""
    names = []
    for name, p in model.named_parameters():
        module_path, _, attr = name.rpartition(".")
        module = model.get_submodule(module_path)
        if p.requires_grad and p.dim() >= 2 and not (isinstance(module, GENERATED_TYPES)
                                                      and attr == "weight"):
            names.append(name)
    return names


def scope_key(path: str, scope: str) -> str:
    """The ring a weight belongs to.

    stage: the path up to a `layerN` component (torchvision, CIFAR and timm ResNets) or to
    `stages.N` / `layers.N`; otherwise the model's top-level child. block: the stage plus the
    next numeric component within the two after it (`layer1.0`, `stages.0.blocks.1`,
    `blocks.3`); otherwise the stage itself.
    """
    if scope == "network":
        return "network"
    if scope == "layer":
        return path
    parts = path.split(".")
    end = 1
    for i, p in enumerate(parts):
        if re.fullmatch(r"layer\d+", p):
            end = i + 1
            break
        if p in ("stages", "layers") and i + 1 < len(parts) and parts[i + 1].isdigit():
            end = i + 2
            break
    if scope == "block":
        for j in range(end, min(end + 2, len(parts))):
            if parts[j].isdigit():
                return ".".join(parts[: j + 1])
    return ".".join(parts[:end])


def group_targets(targets: list[Target], scope: str) -> dict[str, list[Target]]:
    """Targets grouped by ring, rings in order of first appearance."""
    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(scope_key(t.path, scope), []).append(t)
    return groups


def ring_size(params, total: int) -> int:
    """The total ring size asked for: an integer (also a numpy integer, or an integral float
    such as 1e5, which is how Hydra reads `1e5`), or a fraction in (0, 1) meaning that share
    of the `total` generated weights, rounded to the nearest entry. The float 1.0 is refused:
    Hydra reads `1` as 1.0, and a one-entry ring is never what was meant."""
    if isinstance(params, bool) or not isinstance(params, numbers.Real):
        raise UserError("params", params, "is not a ring size; give an integer (25000, 1e5) "
                        "or a fraction in (0, 1) of the generated weights")
    if isinstance(params, float) and params == 1.0:  # the fraction 1, or a 1-entry ring?
        raise UserError("params", params, "is ambiguous (a fraction is in (0, 1)); give the "
                        f"exact count {total} for a ring as large as the layers")
    if 0 < float(params) < 1:
        return max(1, round(float(params) * total))
    if isinstance(params, numbers.Integral):  # (a numpy integer too, exactly)
        return int(params)
    if float(params).is_integer():
        return int(float(params))
    raise UserError("params", params, "is neither an integer nor a fraction in (0, 1)")


def split_params(total: int, sizes: dict[str, int], scope: str) -> dict[str, int]:
    """Split `total` ring entries over rings in proportion to the weights each generates,
    rounded by largest remainder so the sizes sum exactly to `total`."""
    grand = sum(sizes.values())
    base = {k: total * s // grand for k, s in sizes.items()}
    rema = {k: total * s % grand for k, s in sizes.items()}
    left = total - sum(base.values())
    for k in sorted(sizes, key=lambda k: -rema[k])[:left]:  # sorted() is stable: ties by order
        base[k] += 1
    empty = [k for k, n in base.items() if n == 0]
    if empty:
        need = -(-grand // min(sizes.values()))
        raise UserError("params", total, f"leaves the {scope} ring {empty[0]!r} "
                        f"({sizes[empty[0]]} weights) with 0 entries; scope={scope!r} needs "
                        f"params >= {need} (or a coarser scope)")
    return base


def ring_seeds(seed: int, count: int) -> list[int]:
    """One table seed per ring, drawn from `seed`: each ring's table can be rebuilt on its own
    (after `to_empty`, on another device) without drawing the rings before it."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2**62, (count,), generator=gen).tolist()


def draw_index(sizes: list[int], n: int, sampling: str, sign: bool,
               gen: torch.Generator) -> torch.Tensor:
    """The forward table of one ring: for every generated weight (layers concatenated in
    order) an index into `cat(ring, -ring)`, so entry j with a negative sign is `n + j`.

    even: floor(T/n) copies of every entry plus `T mod n` entries once more, shuffled over
    all positions. The extra entries are the first `T mod n`; since ring entries are drawn
    i.i.d. that is the same distribution as a random subset. ring: sequential fetch around
    the ring, each layer continuing where the previous stopped, positions permuted per layer.
    iid: every weight draws its entry uniformly with replacement (HashedNet). plain: plain
    recurrence, every layer reads the ring in order from its first entry (tiled when larger),
    no permutation, so layers of equal shape read the same entries.
    """
    total = sum(sizes)
    if sampling == "even":
        q, r = divmod(total, n)
        pool = torch.cat([torch.arange(n, dtype=torch.int32).repeat(q),
                          torch.arange(r, dtype=torch.int32)])
        index = pool[torch.randperm(total, generator=gen)]
    elif sampling == "ring":
        pieces, start = [], 0
        for m in sizes:
            pieces.append(((start + torch.randperm(m, generator=gen)) % n).to(torch.int32))
            start += m
        index = torch.cat(pieces)
    elif sampling == "plain":
        index = torch.cat([torch.arange(m, dtype=torch.int32) % n for m in sizes])
    else:
        index = torch.randint(n, (total,), generator=gen, dtype=torch.int32)
    if sign:
        index += n * torch.randint(2, (total,), generator=gen, dtype=torch.int32)
    return index
