"""Evaluate a checkpoint: `python -m rpg_train.evaluate ckpt=PATH [data.root=... ...]`.

Rebuilds the model and the validation data from the config stored in the checkpoint (any
`key=value` after ckpt overrides it), prints top-1/top-5 and the parameter report as JSON.
"""
from __future__ import annotations

import json
import sys

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import Config, ConfigError, validate
from .data import build_loaders, dataset_info
from .engine import checkpoint
from .engine.build import build_model, identity
from .engine.distributed import resolve_device
from .engine.loop import evaluate as evaluate_loader
from .engine.train import amp_dtype, autocast_for
from .rpg import param_report


def evaluate_checkpoint(path, overrides=()) -> dict:
    ckpt = checkpoint.load(path, key="ckpt")
    try:  # the schema types the overrides: a typo'd key fails here
        cfg = OmegaConf.merge(OmegaConf.structured(Config), ckpt["config"],
                              OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    cfg.trainer.resume = None
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    info = dataset_info(cfg.data.name, cfg.data)
    model, spec = build_model(cfg, info)
    checkpoint.check_identity(ckpt, identity(model, spec), path, key="ckpt")
    model.load_state_dict(ckpt["model"])
    model.to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    _, val_loader = build_loaders(cfg.data, device, cfg.trainer.seed, with_train=False)
    dtype = amp_dtype(cfg.trainer.amp, device)
    metrics = evaluate_loader(model, val_loader, lambda: autocast_for(dtype, device),
                              cfg.trainer.limit_batches, cfg.trainer.channels_last)
    return dict(top1=metrics["val_top1"], top5=metrics["val_top5"], loss=metrics["val_loss"],
                epoch=ckpt["epoch"], param_report=param_report(model), checkpoint=str(path))


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ckpts = [a.split("=", 1)[1] for a in args if a.startswith("ckpt=")]
    if len(ckpts) != 1:
        print("usage: python -m rpg_train.evaluate ckpt=PATH [key=value ...]", file=sys.stderr)
        return 2
    try:
        result = evaluate_checkpoint(ckpts[0], [a for a in args if not a.startswith("ckpt=")])
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
