"""Weights & Biases: config, per-epoch metrics and the accuracy-vs-parameters summary."""
from __future__ import annotations

import logging
import netrc
import os
import uuid
from pathlib import Path

log = logging.getLogger("rpg_train")
LOGGERS = ("none", "wandb")  # logger.name
WANDB_MODES = ("auto", "online", "offline", "disabled")  # logger.mode


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """No-op unless logger.name == wandb on the main process. `mode=auto` goes online when
    credentials exist and offline otherwise; W&B never prompts (offline needs no login)."""

    def __init__(self, cfg, resolved: dict, out_dir: Path, enabled: bool):
        self.run = None
        if cfg.name != "wandb" or not enabled:
            return
        import wandb

        mode = cfg.mode
        if mode == "auto":
            mode = "online" if has_credentials() else "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group,
                              name=cfg.run_name, tags=list(cfg.tags), config=resolved,
                              dir=str(out_dir), mode=mode, resume="allow",
                              id=_run_id(out_dir), settings=wandb.Settings(console="off"))
        self.mode = mode

    def log(self, row: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "epoch"} | {"epoch": row["epoch"]},
                         step=step)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is None:
            return
        run_dir = Path(self.run.dir).parent
        self.run.finish()
        if self.mode == "offline":
            log.info("W&B run saved offline; upload with: wandb sync %s", run_dir)


def _run_id(out_dir: Path) -> str:
    """One W&B run per run directory, so a resumed run continues the same W&B run."""
    path = Path(out_dir) / "wandb_id.txt"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
