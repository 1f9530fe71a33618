"""One run per run directory: a lock while a run is in progress, and no fresh run on top of
an earlier run's records unless asked (trainer.overwrite)."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from .distributed import broadcast_object

log = logging.getLogger("rpg_train")

LOCK = "run.lock"
RECORDS = ("last.pt", "best.pt", "results.json", "metrics.jsonl")  # a run has been here
# what trainer.overwrite=true removes (wandb_id.txt: the new run is a new W&B run)
REPLACED = (*RECORDS, "last.prev.pt", "wandb_id.txt", "failed.txt")


def holder(out_dir) -> str | None:
    """Who holds the run directory's lock ("pid N on host"), None when nobody does. The
    lock is an flock: the OS drops it when its process ends, however it ends."""
    path = Path(out_dir, LOCK)
    if not path.is_file():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return f.read().strip() or "another process"
        except OSError:  # a file system without flock: nothing to say
            return None
    return None


def busy(out_dir, who: str) -> UserError:
    return UserError("hydra.run.dir", str(out_dir), f"has a run in progress ({who}); wait for "
                     "it to end or stop it, or give another hydra.run.dir")


def lock(out_dir: Path):
    """Take the run directory's lock for this process (an open file; closing it releases)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    f = open(out_dir / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise busy(out_dir, who) from None
    except OSError as err:  # e.g. Lustre mounted without flock: run, but say it is unguarded
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            f.close()
            raise
        log.warning("warning: %s cannot be locked (%s); nothing stops a second run from "
                    "starting in it", out_dir, err.strerror)
        return f
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def check_fresh(out_dir: Path, resume: str | None, overwrite: bool) -> None:
    """A run that does not continue (trainer.resume unset, or a checkpoint from elsewhere) in
    a directory holding another run's records is refused; with trainer.overwrite those
    records are removed first, so nothing of the old run is mixed into the new one."""
    used = [n for n in RECORDS if (out_dir / n).exists()]
    if not used or resume == "auto":
        return
    if resume is not None and Path(resume).resolve().parent == out_dir.resolve():
        return  # a checkpoint of this directory: the run continues
    if not overwrite:
        raise UserError("hydra.run.dir", str(out_dir), f"holds a run already ({', '.join(used)})"
                        "; continue it with trainer.resume=auto, or start this run in a new "
                        "hydra.run.dir (trainer.overwrite=true replaces it)")
    for name in REPLACED:
        (out_dir / name).unlink(missing_ok=True)
    log.warning("warning: trainer.overwrite=true: removed the earlier run's %s from %s",
                ", ".join(used), out_dir)


@contextmanager
def claimed(out_dir: Path, trainer, is_main: bool):
    """The run directory for this run, on every rank: rank 0 takes the lock and applies the
    fresh-run rule, and every rank raises its verdict (so none waits in a collective)."""
    f, err = None, None
    if is_main:
        try:
            f = lock(out_dir)
            check_fresh(out_dir, trainer.resume, trainer.overwrite)
        except UserError as e:
            err = e
    err = broadcast_object(err)
    try:
        if err is not None:
            raise err
        yield
    finally:
        if f is not None:
            f.close()
