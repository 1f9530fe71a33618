"""A ring: the trainable vector that generates a group of layers' weights, and the swap
that makes those layers read their `weight` from it.

Forward: every access to a generated layer's `weight` gathers it from the ring through the
layer's slice of an int32 table (4 bytes per generated weight; entry `i` or `N + i` for
-ring[i]) and multiplies it by its signed scale: each pass is over the layer's weights,
none over the ring, so a ring far larger than a layer costs nothing extra.
Nothing is cached outside `cached(model)`, so a weight is never stale, whatever changed the
ring (fused optimizers, `.data`, `load_state_dict`), and every forward builds its own graph.
With `k` > 1 every generated weight is the sum of k signed entries (k tables, one slot per
entry, 4k bytes per generated weight), scaled by 1/sqrt(k).
With `offset`, a frozen random theta0 (each layer's Kaiming init, drawn from the table seed,
never trained or saved; one float per generated weight) is added to every generated weight.
Backward, deterministic by construction: on the CPU `index_add_` of the signed, scaled
gradients runs serially into one ring-sized float32 accumulator; on other devices (where it
would use atomics) a per-layer inverse table, built once from the forward table, turns the
scatter-add into a gather plus a fixed-order sum (4 more bytes per generated weight: 8 in
all for k = 1).
The autograd graph holds only tensors and numbers, never the module, so a dropped model is
freed at once.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn

from .plan import draw_index

THETA0_SALT = 0x0FF5E7_7E7A0  # theta0's seed: the table seed XOR this, a stream of its own


def inverse_blocks(index: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The inverse of one layer's forward table: for every ring entry the layer uses, the
    positions it feeds, coded `pos` (+) or `M + pos` (-), M the layer's table slots (k per
    weight).

    Entries are grouped by how often the layer uses them, so each group is an exact
    (entries, uses) block of codes with no padding. The entry ids are not kept (they would
    add up to 8 bytes per generated weight): a row's entry is the forward table's entry at
    its first position, read again in the backward (`block_entries`).
    """
    m = index.numel()
    entry = (index % n).long()
    code = torch.arange(m, device=index.device) + m * (index >= n).long()
    code = code[torch.sort(entry, stable=True).indices]  # by entry, positions ascending
    counts = torch.bincount(entry, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    dtype = torch.int32 if 2 * m < 2**31 else torch.long
    blocks = []
    for uses in torch.unique(counts[counts > 0]).tolist():
        ids = torch.nonzero(counts == uses).flatten()
        pick = starts[ids, None] + torch.arange(uses, device=index.device)
        blocks.append(code[pick].to(dtype))
    return blocks


def block_entries(index: torch.Tensor, codes: torch.Tensor, n: int) -> torch.Tensor:
    """The ring entry of each row of an inverse block: the table's entry at the row's first
    position (int64, made when needed, not kept)."""
    first = codes[:, 0].long().remainder_(index.numel())
    return index.index_select(0, first).long().remainder_(n)


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    # sums of many bf16/fp16 gradients lose digits: accumulate in float32 at least
    return torch.promote_types(dtype, torch.float32)


def signed_entries(index: torch.Tensor, n: int, scale: float, dtype: torch.dtype):
    """A layer's table as (ring entry, its multiplier +-scale in `dtype`), one pass each over
    the layer: what the forward and the CPU backward use instead of a 2N copy of the ring."""
    negative = index >= n
    one = torch.ones((), dtype=dtype, device=index.device)
    return torch.remainder(index, n), torch.where(negative, one * -scale, one * scale)


def grad_serial(index: torch.Tensor, g: torch.Tensor, n: int, scale: float) -> torch.Tensor:
    """One layer's ring gradient by scatter-add (CPU: `index_add_` runs serially, so it is
    deterministic) of the signed, scaled gradients into N accumulators."""
    dtype = _accumulator_dtype(g.dtype)
    entry, multiplier = signed_entries(index, n, scale, dtype)
    acc = torch.zeros(n, dtype=dtype, device=g.device)
    return acc.index_add_(0, entry, g.reshape(-1).to(dtype) * multiplier)  # g is not ours


def grad_inverse(blocks, index: torch.Tensor, g: torch.Tensor, n: int,
                 scale: float) -> torch.Tensor:
    """One layer's ring gradient by gather and fixed-order sum: deterministic without atomics."""
    flat = g.reshape(-1).to(_accumulator_dtype(g.dtype))
    ext = torch.cat([flat, -flat]) * scale
    out = ext.new_zeros(n)
    for codes in blocks:  # every entry appears in one block once: no write races
        sums = ext.index_select(0, codes.view(-1)).view(codes.shape).sum(1)
        out.index_copy_(0, block_entries(index, codes, n), sums)
    return out


class _Gather(torch.autograd.Function):
    """ring -> one layer's weight: a gather through the table times the signed scale (k slots
    per weight, summed in a fixed order), then the frozen offset theta0 (`base`, or None)
    added in place."""

    @staticmethod
    def forward(ctx, ring, index, scale, shape, blocks, base):
        ctx.save_for_backward(index)
        ctx.n, ctx.scale, ctx.blocks = ring.numel(), scale, blocks
        ctx.k = index.numel() // math.prod(shape)
        # (-r) * s and r * (-s) are the same number: bit-equal to gathering from cat(r, -r)
        entry, multiplier = signed_entries(index, ring.numel(), scale,
                                           _accumulator_dtype(ring.dtype))
        out = ring.index_select(0, entry).mul_(multiplier)
        if ctx.k > 1:  # weight p reads slots p*k .. p*k + k - 1 (scale is per slot)
            out = out.view(-1, ctx.k).sum(1)
        if base is not None:
            out.add_(base)
        return out.view(shape)

    @staticmethod
    def backward(ctx, g):
        (index,) = ctx.saved_tensors
        if ctx.k > 1:  # every slot of a weight gets the weight's gradient
            g = g.reshape(-1, 1).expand(-1, ctx.k).reshape(-1)
        if ctx.blocks is None:
            grad = grad_serial(index, g, ctx.n, ctx.scale)
        else:
            grad = grad_inverse(ctx.blocks, index, g, ctx.n, ctx.scale)
        return grad.to(g.dtype), None, None, None, None, None


class Ring(nn.Module):
    """One ring of `size` entries generating the layers `paths` (weights of `shapes`).

    The table is a pure function of (sizes, size, sampling, sign, table_seed): it is drawn
    when first needed on the ring's device and never saved. `fan_ref` is the network-wide
    reference fan-out (the same for every ring of a model, see `apply_rpg`). With `offset`
    every generated weight gets its layer's entry of theta0 added (a pure function of the
    shapes and table_seed, drawn like the table, never saved) and the ring starts at 0.
    With `k` > 1 the table has k slots per generated weight (weight-major within a layer)
    and `scales` are the multipliers divided by sqrt(k): each slot's factor.
    """

    def __init__(self, size: int, paths: list[str], shapes: list[tuple[int, ...]],
                 fan_outs: list[int], fan_ref: int, sampling: str, sign: bool,
                 table_seed: int, offset: bool = False, k: int = 1, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, device=device, dtype=dtype))
        self.paths, self.shapes = list(paths), [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.sampling, self.sign, self.table_seed = sampling, sign, table_seed
        self.fan_ref, self.fan_outs, self.offset, self.k = fan_ref, list(fan_outs), offset, k
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self._theta0: torch.Tensor | None = None  # drawn when first needed, like the table
        # each layer starts at its own Kaiming fan-out std, with one reference for the network
        # (a sum of k entries has k times the variance: 1/sqrt(k); exact, / 1.0, for k = 1)
        self.scales = [math.sqrt(fan_ref / f) / math.sqrt(k) for f in fan_outs]
        # derived from the recipe
        self._index: torch.Tensor | None = None
        self._slices: list[torch.Tensor] | None = None
        self._inverse: list[list[torch.Tensor] | None] | None = None
        self._caching = 0
        self._cache: dict[int, tuple[tuple, torch.Tensor]] = {}
        # the keep mask (1 kept, 0 pruned; ring dtype), set by set_keep_mask only: applied in
        # every forward, so a pruned entry generates 0 and gets no gradient whatever its
        # stored value. A buffer, so it follows .to() and deepcopy; not persistent, so state
        # dicts are unchanged
        self.register_buffer("prune_keep", None, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.offset:  # the model starts at theta0
                self.weight.zero_()
            else:
                self.weight.normal_(0.0, math.sqrt(2.0 / self.fan_ref))

    @property
    def generated(self) -> int:
        return sum(self.sizes)

    @property
    def keep_mask(self) -> torch.Tensor | None:
        """The keep mask (1 kept, 0 pruned, in the ring's dtype), or None when unpruned."""
        return self._buffers.get("prune_keep")  # (absent from Rings pickled before it)

    def set_keep_mask(self, mask: torch.Tensor | None) -> None:
        """Prune the ring to the entries `mask` (bool or 0/1, one per entry) keeps: the
        dropped stored entries become 0 and every forward multiplies by the mask, so they
        stay 0 while training. None unprunes (the zeroed entries train again). The one way
        a mask is set on a ring."""
        if mask is None:
            self.register_buffer("prune_keep", None, persistent=False)
            return
        if mask.numel() != self.weight.numel():
            raise ValueError(f"a keep mask of {mask.numel()} entries for a ring of "
                             f"{self.weight.numel()}")
        keep = mask.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            self.weight.mul_(keep)
        self.register_buffer("prune_keep", keep, persistent=False)

    def draw_table(self, device="cpu") -> torch.Tensor:
        """The forward table, drawn afresh from the recipe."""
        gen = torch.Generator().manual_seed(self.table_seed)
        return draw_index(self.slots, self.weight.numel(), self.sampling, self.sign,
                          gen).to(device)

    @property
    def slots(self) -> list[int]:
        """Table entries per layer: k per generated weight."""
        return [getattr(self, "k", 1) * m for m in self.sizes]

    def draw_theta0(self, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """The offset theta0, drawn afresh: every layer's Kaiming fan-out normal init
        N(0, 2 / fan_out), layers concatenated, from its own stream of the table seed."""
        gen = torch.Generator().manual_seed(self.table_seed ^ THETA0_SALT)
        parts = [torch.randn(m, generator=gen).mul_(math.sqrt(2.0 / f))
                 for m, f in zip(self.sizes, self.fan_outs)]
        return torch.cat(parts).to(device=device, dtype=dtype)

    @property
    def theta0(self) -> torch.Tensor | None:
        """The offset on the ring's device in the ring's dtype (None without `offset`)."""
        if not getattr(self, "offset", False):  # (absent from Rings pickled before it)
            return None
        if self._theta0 is None:
            self._check_real()
            self._theta0 = self.draw_theta0(self.weight.device, self.weight.dtype)
        return self._theta0

    def _check_real(self) -> None:
        if self.weight.is_meta:
            raise RuntimeError("the ring is on the meta device; move the model to a real "
                               "device first (to_empty(device=...))")

    @property
    def index(self) -> torch.Tensor:
        """The forward table on the ring's device (drawn on first use)."""
        self._check_real()
        if self._index is None:
            self._index = self.draw_table(self.weight.device)
        return self._index

    def layer_index(self) -> list[torch.Tensor]:
        """The forward table cut into each layer's slice (views, no copies)."""
        if self._slices is None:  # reset with the table, in _apply
            self._slices = list(self.index.split(self.slots))
        return self._slices

    def inverse(self, position: int):
        """The inverse blocks of one layer (built once per device, for the gather backward)."""
        if self._inverse is None:
            self._inverse = [None] * len(self.sizes)
        if self._inverse[position] is None:
            self._inverse[position] = inverse_blocks(self.layer_index()[position],
                                                     self.weight.numel())
        return self._inverse[position]

    def table_bytes(self) -> int:
        """Memory the generator keeps besides the ring itself (tables, theta0)."""
        tensors = [t for t in (self._index, getattr(self, "_theta0", None)) if t is not None]
        for blocks in self._inverse or []:
            tensors += list(blocks or [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def generate(self, position: int) -> torch.Tensor:
        """The generated weight of layer `position`: made on every call, reused only inside
        `cached(model)`."""
        w = self.weight
        if self._caching:
            key = (torch.is_grad_enabled(), w._version, w.data_ptr(), w.dtype)
            hit = self._cache.get(position)
            if hit is not None and hit[0] == key:
                return hit[1]
        index = self.layer_index()[position]
        needs_grad = torch.is_grad_enabled() and w.requires_grad
        blocks = self.inverse(position) if needs_grad and index.device.type != "cpu" else None
        keep = self.keep_mask
        src = w if keep is None else w * keep
        theta0 = self.theta0
        base = (None if theta0 is None else
                theta0.narrow(0, self.starts[position], self.sizes[position]))
        out = _Gather.apply(src, index, self.scales[position], self.shapes[position], blocks,
                            base)
        if self._caching:
            self._cache[position] = (key, out)
        return out

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # the table never goes through `fn`: `to_empty` would replace it with garbage.
        # It follows the ring to its device; from or to the meta device it is drawn again.
        index = self._index
        if index is not None and index.device != self.weight.device:
            meta = index.is_meta or self.weight.is_meta
            self._index = None if meta else index.to(self.weight.device)
        # theta0 the same way, and drawn again in a new dtype (a cast back would not be exact)
        theta0, w = getattr(self, "_theta0", None), self.weight
        if theta0 is not None and (theta0.device != w.device or theta0.dtype != w.dtype):
            keep = not (w.is_meta or theta0.dtype != w.dtype)
            self._theta0 = theta0.to(w.device) if keep else None
        self._slices = self._inverse = None
        self._cache = {}
        return self

    def _replicate_for_data_parallel(self):
        raise RuntimeError("nn.DataParallel cannot replicate an RPG model: its layers read "
                           "their weights from the ring on the source device. Use "
                           "DistributedDataParallel (torchrun --nproc_per_node=N) instead.")

    def __getstate__(self):
        # cached weights may hold autograd graph nodes, which deepcopy and pickle refuse;
        # theta0 is never saved (drawn again from the seed when needed)
        state = self.__dict__.copy()
        state["_cache"], state["_caching"], state["_inverse"], state["_slices"] = {}, 0, None, None
        state["_theta0"] = None
        return state

    def extra_repr(self) -> str:
        offset = ", offset" if getattr(self, "offset", False) else ""
        offset += f", k={self.k}" if getattr(self, "k", 1) != 1 else ""
        return (f"size={self.weight.numel()}, generated={self.generated}, "
                f"layers={len(self.paths)}{offset}")


@contextmanager
def cached_rings(rings):
    """Inside, each generated weight is made once and reused while its ring is unchanged
    (like torch.nn.utils.parametrize.cached). Only for code that does not edit the ring
    through `.data` or a fused optimizer in between: evaluation loops."""
    for ring in rings:
        ring._caching += 1
    try:
        yield
    finally:
        for ring in rings:
            ring._caching -= 1
            if not ring._caching:
                ring._cache = {}


_GENERATED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _generated_weight(module):
    ring, position = module.__dict__["_rpg_source"]
    return ring.generate(position)


def generated_class(base: type[nn.Module]) -> type[nn.Module]:
    """The subclass of `base` whose `weight` is generated (one per base class)."""
    cls = _GENERATED_CLASSES.get(base)
    if cls is None:
        cls = type(f"Generated{base.__name__}", (base,), {
            "weight": property(_generated_weight),
            # a class made at run time cannot be pickled by name: rebuild it from its base
            "__reduce_ex__": lambda self, protocol: (_new_generated, (base,), self.__dict__)})
        _GENERATED_CLASSES[base] = cls
    return cls


def _new_generated(base: type[nn.Module]):
    cls = generated_class(base)
    return cls.__new__(cls)


def make_generated(module: nn.Module, ring: Ring, position: int) -> None:
    """Turn `module.weight` into a read-only view of `ring`'s generated weight.

    The module's class is swapped for a subclass whose `weight` is a property (the trick
    torch.nn.utils.parametrize uses), so the original Parameter is gone from `parameters()`
    and `state_dict()`. The ring is referenced from a plain tuple, not registered as a
    submodule, so it is counted once; `copy.deepcopy` keeps the reference pointing at the
    copy's ring.
    """
    cls = generated_class(type(module))
    del module._parameters["weight"]
    module.__dict__["_rpg_source"] = (ring, position)
    module.__class__ = cls


def is_generated(module: nn.Module) -> bool:
    return "_rpg_source" in module.__dict__


def make_plain(module: nn.Module, weight: nn.Parameter) -> None:
    """Undo `make_generated`: `weight` becomes the module's ordinary Parameter again (same
    key order in state_dict as the original layer: weight first)."""
    module.__class__ = module.__class__.__bases__[0]
    del module.__dict__["_rpg_source"]
    rest = dict(module._parameters)
    module._parameters.clear()
    module._parameters["weight"] = weight
    module._parameters.update(rest)


class RingBank(nn.ModuleDict):
    """The model's rings, registered as the model's first child `rpg_rings`, so the usual
    `nn.Sequential(*list(model.children())[:-1])` keeps them. Its forward passes its input
    through, so a root `nn.Sequential`, which calls every child, is unaffected."""

    def forward(self, x):
        return x
