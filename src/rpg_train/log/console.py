"""What the console shows while a run trains: a tqdm bar per epoch and evaluation on a
terminal; without one (SLURM, nohup) a status line every trainer.log_every_s seconds."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(iterable, total: int, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (enabled and on_terminal()))


def preparing(model: str, method: str, data: str) -> str:
    """The line said before the model is built and the data loaded (both can take minutes)."""
    return f"preparing: building {model} ({method}), loading {data} ..."


def duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Heartbeat:
    """Says every `every_s` seconds where training is, when no bar shows it (0 = never)."""

    def __init__(self, every_s: float, enabled: bool):
        self.every_s = every_s if enabled else 0
        self.last = time.monotonic()

    def due(self) -> bool:
        if not self.every_s or time.monotonic() - self.last < self.every_s:
            return False
        self.last = time.monotonic()
        return True


def status(epoch: int, epochs: int, batch: int, batches: int, loss: float, images_per_s: float,
           eta_s: float) -> str:
    """The heartbeat's line: where training is, and how long it has left at this pace."""
    return (f"epoch {epoch}/{epochs}  batch {batch}/{batches}  loss {loss:.4f}  "
            f"{images_per_s:.0f} img/s  eta {duration(eta_s)}")
