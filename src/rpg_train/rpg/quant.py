"""Quantizing the rings: affine integer codes per ring or per block of ring entries
(quantize_ring). Pruning ring entries is in sparsity.py.

`quantize_ring(model, bits, block)` replaces every ring's entries by their dequantized values
and records the codes on the ring; `save_compact` then stores the codes (uint8, or two 4-bit
codes per byte) and each block's scale and offset instead of float32 entries, and
`load_compact` dequantizes. Every entry moves by at most half a quantization step.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .apply import rings_of

BITS = (4, 8)


class RingCodes:
    """One ring's quantization: codes (one int per entry, in [0, 2**bits - 1]) and per-block
    offset and step: entry = lo[block] + code * step[block]."""

    def __init__(self, codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, bits: int,
                 block: int):
        self.codes, self.lo, self.step, self.bits, self.block = codes, lo, step, bits, block

    def values(self) -> torch.Tensor:
        n = self.codes.numel()
        per = torch.arange(n) // self.block
        return self.lo[per] + self.codes.float() * self.step[per]

    def pack(self) -> torch.Tensor:
        """The codes as bytes: one per code, or two 4-bit codes per byte (low nibble first)."""
        c = self.codes.to(torch.uint8)
        if self.bits == 8:
            return c
        if c.numel() % 2:
            c = torch.cat([c, c.new_zeros(1)])
        return c[0::2] | (c[1::2] << 4)

    @staticmethod
    def unpack(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
        if bits == 8:
            return packed[:n].long()
        return torch.stack([packed & 15, packed >> 4], dim=1).flatten()[:n].long()


def quantize(w: torch.Tensor, bits: int, block: int) -> RingCodes:
    """Affine codes of a 1-D tensor, one (lo, step) per block of `block` entries."""
    w = w.detach().float().cpu()
    levels = 2 ** bits - 1
    pad = (-w.numel()) % block
    blocks = torch.cat([w, w.new_full((pad,), float(w[-1]) if w.numel() else 0.0)]).view(-1, block)
    lo, hi = blocks.min(1).values, blocks.max(1).values
    step = (hi - lo) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))  # a constant block: code 0
    codes = torch.round((blocks - lo[:, None]) / step[:, None]).clamp_(0, levels)
    return RingCodes(codes.flatten()[: w.numel()].to(torch.uint8), lo, step, bits, block)


def quantize_ring(model, bits: int = 8, block: int | None = None) -> dict:
    """Quantize every ring of `model` in place to `bits` (4 or 8) per entry, with one scale
    per ring (block=None) or per `block` entries; a pruned ring's kept entries only (its
    pruned ones stay 0). Returns {ring name: RingCodes}; the codes are also kept on each ring
    (`ring.codes`) for save_compact."""
    if bits not in BITS:
        raise UserError("bits", bits, "must be 4 or 8")
    if block is not None and block < 1:
        raise UserError("block", block, "must be at least 1 (or None: one block per ring)")
    out = {}
    for name, ring in _named_rings(model):
        w, keep = ring.weight.detach(), ring.keep_mask
        kept = None if keep is None else keep.bool()
        part = w if kept is None else w[kept]  # a pruned ring: only its kept entries
        codes = quantize(part, bits, block or max(part.numel(), 1))
        with torch.no_grad():
            if kept is None:
                ring.weight.copy_(codes.values().to(ring.weight))
            else:
                ring.weight.zero_().masked_scatter_(kept, codes.values().to(ring.weight))
        ring.codes = codes
        out[name] = codes
    return out


def _named_rings(model):
    rings = list(rings_of(model))
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(r)], r) for r in rings]
