"""Whether a backbone takes images of a given size, found before any work by forward passes
on the meta device (shapes only: no memory, no arithmetic). A ConvNeXt's four stride-2 stages
need 32 px, a ViT its own size: such a model fails deep inside its forward otherwise."""
from __future__ import annotations

import warnings

import torch

LARGEST = 4096  # sizes tried up to this many pixels


def _build(spec: dict, device: str):
    from . import create_model

    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore")  # the real build warns; this one is only a probe
        return create_model(**spec).eval()


def _fails(model, in_chans: int, size: int) -> Exception | None:
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, size, size, device=device))
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:  # what shape errors raise
        return err
    return None


def smallest_input(spec: dict, size: int) -> int | None:
    """None when the model `create_model(**spec)` takes `size` px images; otherwise the
    smallest size it takes. A model failing at every size keeps its error (a bug, not a
    size)."""
    try:
        model = _build(spec, "meta")
    except (RuntimeError, NotImplementedError):  # an init that reads values: build it for real
        model = _build(spec, "cpu")
    if _fails(model, spec["in_chans"], size) is None:
        return None
    cpu = _build(spec, "cpu")  # the meta device may lack an op the model uses: ask the CPU
    error = _fails(cpu, spec["in_chans"], size)
    if error is None:
        return None
    # doublings, and the model's own size (timm records it; a ViT takes only that one)
    own = getattr(model, "pretrained_cfg", {}).get("input_size", (0, 0))[-1]
    sizes = sorted({size * 2 ** k for k in range(1, 12) if size * 2 ** k <= LARGEST} | {own})
    fails = size
    for works in sizes:
        if works > size and _fails(model, spec["in_chans"], works) is None:
            while works - fails > 1:  # bisect: the smallest that works after one that fails
                mid = (fails + works) // 2
                if _fails(model, spec["in_chans"], mid) is None:
                    works = mid
                else:
                    fails = mid
            return works
        fails = max(fails, works)
    raise error
