"""Evaluate a checkpoint: `python -m rpg_train.evaluate ckpt=PATH [data.root=... ...]`.

Rebuilds the model and the validation data from the config stored in the checkpoint (any
`key=value` after ckpt overrides it), prints top-1/top-5 over the whole test set, the number
of samples and the parameter report as JSON.
The checkpoint is read with weights_only: a file that carries code is refused, not run.
"""
from __future__ import annotations

import sys
from functools import partial

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import Config
from .engine import checkpoint
from .engine.amp import amp_dtype, autocast_for
from .engine.build import build
from .engine.distributed import resolve_device
from .engine.loop import evaluate_loader
from .errors import UserError
from .log import strict_json
from .validation import validate


def checkpoint_config(ckpt: checkpoint.Checkpoint, overrides=()):
    """The checkpoint's config with the overrides, typed by the schema (a typo'd key fails)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), ckpt.state["config"])
    except OmegaConfBaseException as err:
        raise ckpt.error(f"holds a config this version cannot read "
                         f"({str(err).splitlines()[0]})") from None
    for override in overrides:
        key, eq, value = override.partition("=")
        if not eq:
            raise UserError("override", override, "is not key=value")
        try:
            cfg.merge_with(OmegaConf.from_dotlist([override]))
        except OmegaConfBaseException as err:
            raise UserError(key, value, f"is not valid: {str(err).splitlines()[0]}") from None
    cfg.trainer.resume = None
    return cfg


def evaluate_checkpoint(path, overrides=()) -> dict:
    ckpt = checkpoint.load(path, key="ckpt")
    cfg = checkpoint_config(ckpt, overrides)
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    built = build(cfg, device, ckpt=ckpt, with_train=False)
    autocast = partial(autocast_for, amp_dtype(cfg.trainer.amp, device), device)
    # the whole test set: the run's trainer.limit_batches (debug=fast: 2) shortened its own
    # evaluations only; a limit given here is used
    given = any(o.partition("=")[0].lstrip("+") == "trainer.limit_batches" for o in overrides)
    limit = cfg.trainer.limit_batches if given else 0
    loader = built.val_loader
    metrics = evaluate_loader(built.model, loader, autocast, limit, cfg.trainer.channels_last)
    samples = min(loader.num_samples, limit * loader.batch_size) if limit else loader.num_samples
    return dict(top1=metrics["val_top1"], top5=metrics["val_top5"], loss=metrics["val_loss"],
                samples=samples, epoch=ckpt.state["epoch"], param_report=built.report,
                checkpoint=str(path))


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ckpts = [a.split("=", 1)[1] for a in args if a.startswith("ckpt=")]
    if len(ckpts) != 1:
        print("usage: python -m rpg_train.evaluate ckpt=PATH [key=value ...]", file=sys.stderr)
        return 2
    try:
        result = evaluate_checkpoint(ckpts[0], [a for a in args if not a.startswith("ckpt=")])
    except UserError as err:  # bad input: one line; anything else is a bug with a traceback
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(strict_json(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
