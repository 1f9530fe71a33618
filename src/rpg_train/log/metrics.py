"""metrics.jsonl: one JSON object per epoch."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("rpg_train")


def _finite(obj):
    """`obj` with every float that is not finite replaced by None (JSON's null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def strict_json(obj, **kw) -> str:
    """JSON that any parser reads: null where Python would write a bare NaN or Infinity."""
    return json.dumps(_finite(obj), allow_nan=False, **kw)


class MetricsFile:
    def __init__(self, path: Path, start_epoch: int):
        """Keep the rows of the `start_epoch` epochs already done (rows count from 1). A line
        that is not JSON (cut by a crash mid-write) is dropped with a warning."""
        self.path = Path(path)
        kept = []
        if self.path.exists():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    epoch = json.loads(line)["epoch"]
                except (ValueError, TypeError, KeyError):
                    log.warning("warning: %s line %d is not a metrics row (cut by a crash?); "
                                "dropped", self.path, n)
                    continue
                if epoch <= start_epoch:
                    kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(strict_json(row) + "\n")
