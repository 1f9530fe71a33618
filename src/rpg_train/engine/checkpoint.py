"""Checkpoints: written atomically, with everything needed to continue bit for bit."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError

REQUIRED = ("model", "optimizer", "scheduler", "epoch", "batch", "step", "identity", "config")


def rng_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict) -> None:
    """Write to a temporary file, then rename: a crash mid-write never leaves a torn file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)


def load(path, key: str = "trainer.resume") -> dict:
    try:
        # our own files: they hold Python/NumPy RNG states, which weights_only refuses
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one line
        raise ConfigError(f"{key}={str(path)!r} is not a checkpoint ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        raise ConfigError(f"{key}={str(path)!r} is not an rpg_train checkpoint (missing keys)")
    return ckpt


def check_identity(ckpt: dict, identity: dict, path, key: str = "trainer.resume") -> None:
    """Refuse a checkpoint of another backbone, ring or table draw."""
    theirs = ckpt["identity"]
    for field in ("model", "rpg", "fingerprint"):
        if theirs.get(field) != identity.get(field):
            raise ConfigError(f"{key}={str(path)!r} is a checkpoint of a different {field} "
                              f"({theirs.get(field)} != this run's {identity.get(field)})")
