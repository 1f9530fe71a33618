"""A tqdm bar per epoch on the main process, only when stderr is a terminal."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable, total: int, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))
