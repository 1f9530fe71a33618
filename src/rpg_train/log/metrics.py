"""metrics.jsonl: one JSON object per epoch."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsFile:
    def __init__(self, path: Path, start_epoch: int):
        """Keep the rows of the `start_epoch` epochs already done (rows count from 1)."""
        self.path = Path(path)
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line)["epoch"] <= start_epoch:
                    kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
