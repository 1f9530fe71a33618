"""Pruning the rings: magnitude pruning of ring entries (prune_ring), the rings' keep masks
at model level (ring_masks, set_ring_masks; each ring owns its own, Ring.set_keep_mask), and
masks as bits for compact files (pack_bits, unpack_bits). docs/export.md.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .apply import rings_of


def prune_ring(model, amount: float) -> int:
    """Magnitude pruning of ring entries: the `amount` fraction of all ring entries of
    `model` with the smallest magnitudes (over all its rings) become 0, and with them every
    weight entry they generate. Each ring keeps its mask (Ring.set_keep_mask) and applies it
    in every forward, so pruned entries get no gradient and stay 0 while the model is
    fine-tuned. Returns the number of entries pruned."""
    if not 0 <= amount < 1:
        raise UserError("amount", amount, "must be in [0, 1)")
    rings = rings_of(model)
    flat = torch.cat([r.weight.detach().abs().flatten().cpu() for r in rings])
    k = round(amount * flat.numel())
    drop = torch.zeros(flat.numel(), dtype=torch.bool)
    if k:
        drop[torch.topk(flat, k, largest=False, sorted=False).indices] = True
    masks, start = [], 0
    for ring in rings:
        n = ring.weight.numel()
        masks.append(~drop[start: start + n])
        start += n
    set_ring_masks(model, masks)
    return k


def ring_masks(model) -> list[torch.Tensor] | None:
    """The keep masks of `model`'s rings (CPU bool tensors, in rings_of order), or None if
    its rings are not pruned."""
    masks = [r.keep_mask for r in rings_of(model)]
    kept = [m.detach().bool().cpu() for m in masks if m is not None]
    return kept if masks and len(kept) == len(masks) else None


def set_ring_masks(model, masks: list[torch.Tensor]) -> None:
    """Prune `model`'s rings by these keep masks (bool, in rings_of order), as prune_ring
    does; a model pruned again takes the new masks."""
    rings = rings_of(model)
    if len(masks) != len(rings) or any(m.numel() != r.weight.numel()
                                       for m, r in zip(masks, rings)):
        raise ValueError("the masks do not match this model's rings")
    for ring, keep in zip(rings, masks):
        ring.set_keep_mask(keep)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool vector as bytes, 8 entries per byte (entry i is bit i % 8 of byte i // 8)."""
    m = torch.cat([mask.bool(), mask.new_zeros((-mask.numel()) % 8, dtype=torch.bool)])
    return (m.view(-1, 8).to(torch.uint8) << torch.arange(8, dtype=torch.uint8)).sum(
        1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    return ((packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).flatten()[:n].bool()
