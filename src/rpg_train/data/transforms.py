"""Batched on-device normalisation and augmentation for the small datasets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# per-channel mean/std of the training split on the [0, 1] pixel scale
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# (zero padding of the random crop, random horizontal flip); mnist digits are not mirror-symmetric
AUGMENT = {
    "mnist": (2, False),
    "fashion_mnist": (2, True),
    "cifar10": (4, True),
    "cifar100": (4, True),
}


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 ((x / 255) - mean) / std; mean/std are float32 (C,1,1)."""
    return (x.float() / 255.0 - mean) / std


def crop_flip(x: torch.Tensor, pad: int, oy: torch.Tensor, ox: torch.Tensor,
              flip: torch.Tensor) -> torch.Tensor:
    """Per-sample crop of the zero-padded batch at offsets (oy, ox) in [0, 2*pad], then mirror
    where flip is True. One gather for the whole batch, no Python loop over samples."""
    n, _, h, w = x.shape
    if pad:
        # zero = black in raw pixel space, like torchvision's RandomCrop
        x = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = oy[:, None] + ar_h  # (N, H)
    cols = ox[:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # (N, W)
    b = torch.arange(n, device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool,
                     generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding `pad`) and optional random horizontal flip; randomness only from
    `generator`, which must live on x.device."""
    n = x.shape[0]
    if n == 0 or (pad == 0 and not flip):
        return x
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
    if flip:
        fl = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
    else:
        fl = torch.zeros(n, dtype=torch.bool, device=dev)
    return crop_flip(x, pad, oy, ox, fl)
