"""Checkpoints: written atomically, with everything needed to continue bit for bit.

A checkpoint holds only tensors, numbers, strings and plain containers, and is read with
`torch.load(weights_only=True)`: loading a file is never running code, so a checkpoint from
elsewhere cannot do anything but fail to load.

This module owns the format: every file written carries `format` (FORMAT), and `load` turns
the older shapes into the current one (`migrate`), so readers take fields without defaults.
"""
from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError
from ..log import provenance
from .distributed import any_rank, barrier, gather_objects
from .guard import Diverged

if TYPE_CHECKING:
    from .state import Run

log = logging.getLogger("rpg_train")

REQUIRED = ("model", "optimizer", "scheduler", "epoch", "batch", "step", "identity", "config")
# 1: no version written (every file before it, in several shapes); 2: the version is written
# and every field below is present
FORMAT = 2
IDENTITY = ("model", "rpg", "fingerprint", "prune", "holdout")  # what a resume must match
# fields added after the first checkpoints, as a file without them means them
ADDED: dict[str, Any] = dict(ema=None, schedule={}, skipped_steps=0, loss_start=None,
                             selected=None, ring_prune=None, provenance=None)


@dataclass
class Checkpoint:
    """A loaded checkpoint and where it came from (errors name `key=path`)."""

    path: Path
    key: str  # the config key that named the file: trainer.resume or ckpt
    state: dict

    def error(self, reason: str) -> UserError:
        return UserError(self.key, str(self.path), reason)


def schedule(cfg, world_size: int) -> dict:
    """What the data order and the learning-rate schedule depend on: a resumed run must match
    (resume.check_schedule)."""
    return {"world size": world_size, "data.batch_size": cfg.data.batch_size,
            "trainer.accumulate": cfg.trainer.accumulate, "sched.name": cfg.sched.name,
            "trainer.epochs": cfg.trainer.epochs}


def save_run(run: Run, name: str) -> None:
    """Write a checkpoint of the run at its current position into its directory (a
    collective: every rank's RNG states and epoch sums). Weights that are not finite are
    never saved: the run diverged."""
    if any_rank(not _finite(run.plain_model), run.device):
        raise Diverged(run.pos.step, float("nan"), f"the weights are not finite after step "
                       f"{run.pos.step}")
    epoch, batch, sums = run.resume_point()
    rng = gather_objects(rng_state())  # every rank's, so each resumes its own
    sums = gather_objects(sums) if sums is not None else None
    assert run.optimizer is not None  # saves happen in a phase, which built the optimizer
    if run.dist.is_main:
        save(run.out_dir / name, dict(
            model=run.plain_model.state_dict(), optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(),
            epoch=epoch, batch=batch, step=run.pos.step, best_top1=run.pos.best,
            elapsed=run.elapsed(), sums=sums, rng=rng, identity=run.identity,
            schedule=schedule(run.cfg, run.dist.world_size), skipped_steps=run.guard.skipped,
            loss_start=run.guard.state(),
            ema=None if run.ema is None else run.ema.module.state_dict(),
            config=run.resolved, selected=run.pos.selected, ring_prune=run.ring_prune,
            provenance=provenance()),
            keep_previous=name == "last.pt", key="hydra.run.dir")
    run.last_save = time.monotonic()
    barrier()


def _finite(model) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all())


def rng_state() -> dict:
    """Every RNG's state as tensors, numbers and lists (what weights_only loads)."""
    version, internal, gauss = random.getstate()
    legacy = np.random.get_state()
    assert isinstance(legacy, tuple)  # the global RandomState is MT19937: the legacy tuple
    kind, keys, pos, has_gauss, cached = legacy
    state = dict(python=[version, list(internal), gauss],
                 numpy=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=pos,
                            has_gauss=has_gauss, cached_gaussian=cached),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def previous(path: Path) -> Path:
    """Where `save(..., keep_previous=True)` keeps the file it replaces: last.pt -> last.prev.pt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save(path: Path, state: dict, keep_previous: bool = False, key: str = "out_dir") -> None:
    """Write to a temporary file, then rename: a crash mid-write never leaves a torn file.
    With keep_previous the file it replaces becomes `previous(path)`, a fallback for a file
    that is damaged later (a full disk, a bad copy between machines). A write that fails (a
    full disk) removes the temporary file and is one line naming `key` and the folder."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                # torch.save needs only write() and flush(); its stubs ask for IO[bytes]
                torch.save({**state, "format": FORMAT}, sink)  # type: ignore[arg-type]
            except RuntimeError as err:  # torch reports the file's OSError as its own error
                raise (sink.error or err) from None
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        if keep_previous and path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        raise UserError(key, str(path.parent), f"{'is full' if full else 'cannot be written'}: "
                        f"saving {path.name} failed ({err.strerror or err}); the checkpoints "
                        "already there are unchanged. Free space (or fix the folder), then "
                        "continue with trainer.resume=auto") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Sink:
    """The file torch.save writes to, keeping the error of a failed write (torch replaces
    it by an 'unexpected pos' RuntimeError)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def load_latest(path: Path, key: str = "trainer.resume") -> Checkpoint | None:
    """`path`, or when it is missing or unreadable the one it replaced (`previous`), with a
    warning naming both; None when neither exists; the first file's error when none loads."""
    errors = []
    for p in (path, previous(path)):
        if not p.exists():
            continue
        try:
            ckpt = load(p, key)
        except UserError as err:
            errors.append(err)
            continue
        if errors:
            log.warning("warning: %s is unreadable (%s); resuming from %s, the checkpoint "
                        "before it", path, errors[0].reason, p)
        return ckpt
    if errors:
        raise errors[0]
    return None


def load(path, key: str = "trainer.resume") -> Checkpoint:
    """Read a checkpoint without running any code it may carry; refuse anything else,
    including a file whose bytes do not match the checksums stored in it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(key, str(path), "does not exist")
    if path.stat().st_size == 0:
        raise UserError(key, str(path), "is not a checkpoint (the file is empty)")
    _verify(path, key)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # it asks for objects other than tensors and containers
        raise UserError(key, str(path), "is not a safe rpg_train checkpoint: it holds objects "
                        f"other than tensors and plain containers{_globals(path)}; refused "
                        "without running them") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one line
        raise UserError(key, str(path), f"is not a checkpoint ({_why(err)})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise UserError(key, str(path), "is not an rpg_train checkpoint (missing keys)")
    if state.get("format", 1) > FORMAT:
        raise UserError(key, str(path), f"was written by a newer rpg_train (checkpoint format "
                        f"{state['format']}; this version reads up to {FORMAT})")
    return Checkpoint(path, key, migrate(state))


def migrate(state: dict) -> dict:
    """An older checkpoint in the current shape (the file is not changed): the fields added
    since then as their absence meant, the schedule's name (once in the config only), each
    rank's sums as a list (format 1 could hold rank 0's only), a ring-pruning record's
    training epochs (those of its config)."""
    if state.get("format", 1) == FORMAT:
        return state
    state = {**ADDED, **state, "format": FORMAT}
    state["identity"] = {**dict.fromkeys(IDENTITY), **state["identity"]}
    schedule, sched = state["schedule"], state["config"].get("sched", {})
    if schedule and "sched.name" not in schedule and "name" in sched:  # recorded later
        state["schedule"] = {**schedule, "sched.name": sched["name"]}
    sums = state.get("sums")
    if sums and not isinstance(sums[0], list):  # rank 0's only: every rank continues from it
        state["sums"] = [sums]
    record = state["ring_prune"]
    if record is not None and "trained_epochs" not in record:
        trained = state["config"].get("trainer", {}).get("epochs")
        state["ring_prune"] = {**record, "trained_epochs": trained}
    return state


def for_rank(per_rank: list, rank: int, world_size: int):
    """This rank's entry of a per-rank list (RNG states, epoch sums): its own when the file
    is of as many processes, else rank 0's."""
    return per_rank[rank] if len(per_rank) == world_size else per_rank[0]


def _verify(path: Path, key: str) -> None:
    """torch's zip format stores a CRC-32 of every entry but torch.load does not check them:
    a flipped bit inside a tensor would load silently. Files of torch's older format (not a
    zip) and torn ones are left to torch.load, which says what they are."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as err:  # noqa: BLE001 - a damaged directory: the same one line
        raise UserError(key, str(path), f"is not a checkpoint ({_why(err)})") from None
    if bad is not None:
        raise UserError(key, str(path), f"is damaged: its entry {bad} does not match the "
                        "checksum stored with it (a bit flipped on disk or in a copy)")


def _why(err: Exception) -> str:
    """`Type: first line` of an error, whose message may be empty."""
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0][:120]}" if lines else type(err).__name__


def _globals(path: Path) -> str:
    """The Python objects the file would build, when torch can list them without loading."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - older torch, or not torch's zip format: no names
        return ""
    return f" ({', '.join(names[:3])})" if names else ""


def check_schedule(ckpt: Checkpoint, schedule: dict) -> None:
    """Refuse to continue a run with another world size, batch size or epoch count: the data
    order and the learning-rate schedule depend on them (checkpoints without the record, from
    before it existed, are not checked)."""
    theirs = ckpt.state["schedule"]
    diff = [f"{k} {theirs[k]} (now {v})" for k, v in schedule.items()
            if k in theirs and theirs[k] != v]  # a key added later is not checked
    if diff:
        raise ckpt.error("was trained with " + ", ".join(diff) + "; resume with the same "
                         "values (the data order and the learning-rate schedule depend on "
                         "them), or start a new run")


def check_identity(ckpt: Checkpoint, identity: dict) -> None:
    """Refuse a checkpoint of another backbone, ring or table draw."""
    theirs = ckpt.state["identity"]
    for field in IDENTITY:
        if theirs[field] != identity[field]:
            raise ckpt.error(f"is a checkpoint of a different {field} ({theirs[field]} "
                             f"!= this run's {identity[field]})")
