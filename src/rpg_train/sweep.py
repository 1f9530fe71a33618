"""A multirun's failed jobs, whichever launcher ran them (in this process, or as SLURM jobs
elsewhere): a job that fails leaves `failed.txt` in its directory (a rerun removes it), and
the launching process, when the sweep ends, collects the markers written since it began; the
app then exits 1 naming them (`rpg_train.__main__.cli`)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

MARKER = "failed.txt"
FAILED: list[str] = []  # the finished sweep's failed jobs: "<job dir>: <reason>"


def clear(out_dir) -> None:
    """A job starts: a marker from an earlier attempt no longer holds."""
    Path(out_dir, MARKER).unlink(missing_ok=True)


def mark(out_dir, reason: str) -> None:
    path = Path(out_dir, MARKER)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{MARKER}.{os.getpid()}")
    tmp.write_text(reason + "\n")
    os.replace(tmp, path)


class FailedJobs(Callback):
    """hydra.callbacks.failed_jobs in conf/config.yaml."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.start = time.time()
        FAILED.clear()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        # markers of this sweep only: older ones may belong to jobs it did not run
        for f in sorted(sweep.rglob(MARKER)):
            if f.stat().st_mtime >= self.start - 1:
                FAILED.append(f"{f.parent.relative_to(sweep)}: {f.read_text().strip()}")
