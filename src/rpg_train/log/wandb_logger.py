"""Weights & Biases: config, per-epoch metrics and the accuracy-vs-parameters summary.

Precedence for each setting: the config key when the user set it, else W&B's own environment
variable, else this project's default (see `init_args` and conf/logger/wandb.yaml)."""
from __future__ import annotations

import logging
import netrc
import os
import uuid
from pathlib import Path
from typing import Any

from ..errors import UserError

log = logging.getLogger("rpg_train")
LOGGERS = ("none", "wandb")  # logger.name
WANDB_MODES = ("auto", "online", "offline", "disabled")  # logger.mode
# what WANDB_MODE may hold (dryrun and run: W&B's older names for offline and online)
ENV_MODES = {"online": "online", "offline": "offline", "disabled": "disabled",
             "dryrun": "offline", "run": "online"}


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str, env) -> str:
    """logger.mode when set; auto: WANDB_MODE if set, else online with credentials (never a
    login prompt), else offline."""
    if mode != "auto":
        return mode
    if env.get("WANDB_MODE"):
        value = env["WANDB_MODE"]
        if value not in ENV_MODES:
            raise UserError("WANDB_MODE", value, "is not a W&B mode; use online, offline "
                            "or disabled (or unset it and use logger.mode)")
        return ENV_MODES[value]
    return "online" if has_credentials() else "offline"


def init_args(cfg, env, out_dir: Path, name: str, tags: list[str]) -> dict:
    """wandb.init's arguments from the logger config, the environment and the run's own
    `name` and `tags` (the defaults; tags are added to the user's)."""
    user_tags = list(cfg.tags) or [t.strip() for t in env.get("WANDB_TAGS", "").split(",")
                                   if t.strip()]
    return dict(project=cfg.project or env.get("WANDB_PROJECT") or "rpg-train",
                entity=cfg.entity or env.get("WANDB_ENTITY") or None,
                group=cfg.group or env.get("WANDB_RUN_GROUP") or None,
                name=cfg.run_name or env.get("WANDB_NAME") or name or None,
                tags=list(dict.fromkeys(user_tags + tags)),
                dir=env.get("WANDB_DIR") or str(out_dir),
                mode=resolve_mode(cfg.mode, env))


class WandbLogger:
    """No-op unless logger.name == wandb on the main process and the mode is not disabled
    (then nothing is written). `extra` joins the config W&B records (method, parameters)."""

    def __init__(self, cfg, resolved: dict, out_dir: Path, enabled: bool, name: str = "",
                 tags: tuple = (), extra: dict | None = None):
        self.run: Any = None
        self.args: dict[str, Any] | None = None
        if cfg.name != "wandb" or not enabled:
            return
        args = init_args(cfg, os.environ, out_dir, name, list(tags))
        if args["mode"] == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        Path(args["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(**args, config={**resolved, **(extra or {})}, resume="allow",
                              id=_run_id(out_dir), settings=wandb.Settings(console="off"))
        self.args = args

    def record(self) -> dict | None:
        """Where the run went in W&B (results.json keeps it), None when nothing was logged."""
        if self.run is None or self.args is None:
            return None
        keys = ("project", "entity", "group", "name", "mode")
        return {k: self.args[k] for k in keys} | {"id": self.run.id}

    def log(self, row: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "epoch"} | {"epoch": row["epoch"]},
                         step=step)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is None or self.args is None:
            return
        run_dir = Path(self.run.dir).parent
        self.run.finish()
        if self.args["mode"] == "offline":
            log.info("W&B run saved offline; upload with: wandb sync %s", run_dir)


def _run_id(out_dir: Path) -> str:
    """One W&B run per run directory, so a resumed run continues the same W&B run."""
    path = Path(out_dir) / "wandb_id.txt"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
