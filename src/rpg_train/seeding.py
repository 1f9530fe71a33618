"""One way to seed the global random number generators, for the engine and the data workers."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, *, cpu_only: bool = False) -> None:
    """Seed Python's, NumPy's (seed mod 2**32) and torch's global RNGs. cpu_only leaves the
    accelerators' generators alone: a per-sample augmentation seed must not reseed the CUDA
    generator the training step draws from (torch.random.fork_rng(devices=[]) saves only the
    CPU one)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if cpu_only:
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
