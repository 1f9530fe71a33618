"""Mixed precision: trainer.amp as an autocast dtype, one rule for train and evaluate."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..errors import check_choice

# trainer.amp -> autocast dtype (None: full precision); auto picks per device in amp_dtype
AMP = {"auto": None, "off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str, device: torch.device):
    """auto is bf16 on CUDA and off elsewhere; an unknown name is an error, never "off"."""
    check_choice("trainer.amp", amp, AMP)
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    return AMP[amp]


def autocast_for(dtype, device: torch.device):
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
