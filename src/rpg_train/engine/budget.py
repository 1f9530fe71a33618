"""Equal-DoF points: the trainable count of a dense backbone at some width, and the RPG ring or
pruning target that spends exactly that many trainable parameters.

One rule for both: RPG and pruning act on the same weights (rpg.plan.find_targets); everything
else stays trainable. So trainable = (ring or non-zero kept weights) + unshared, and the size
that hits a target count T is T - unshared, exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from ..models import create_model
from ..rpg.plan import find_targets


def trainable_count(model: nn.Module) -> int:
    """Trainable parameters, shared tensors once (timm's count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unshared_count(model: nn.Module, share_stem: bool, share_head: bool) -> tuple[int, int]:
    """(trainable parameters outside the generated weights, generated weights) of a plain model."""
    generated = sum(t.numel for t in find_targets(model, share_stem, share_head))
    return trainable_count(model) - generated, generated


def width_target(spec: dict, width: float, name: str | None = None) -> int:
    """Trainable count of the dense backbone `name` (default: spec's) at channel multiplier
    `width`, built on the meta device (no memory, no init cost)."""
    ref = {k: v for k, v in spec.items() if k != "width"}
    ref["name"] = name or spec["name"]
    if width != 1:
        ref["width"] = width
    try:
        with torch.device("meta"):
            return trainable_count(create_model(**ref))
    except UserError as err:  # e.g. a backbone without a width multiplier: match.width
        raise err.under("match") from None


def solve(cfg, spec: dict, model: nn.Module) -> int:
    """The ring size (or pruning target) at which `model` has exactly as many trainable
    parameters as the dense match.model at match.width."""
    m, r = cfg.match, cfg.rpg
    target = width_target(spec, m.width, m.model)
    unshared, generated = unshared_count(model, r.share_stem, r.share_head)
    size = target - unshared
    if not 1 <= size < generated:
        raise UserError("match.width", m.width, f"gives {target:,} trainable parameters "
                        f"({m.model or spec['name']}), which this model can only match with "
                        f"{size:,} of its {generated:,} generated weights (it keeps "
                        f"{unshared:,} others); pick a width whose count is in "
                        f"[{unshared + 1:,}, {unshared + generated - 1:,}]")
    return size
