"""Building a run from the config: model (with RPG), checkpoint weights and data, one path for
train and evaluate. `model_from_checkpoint` is the one way to rebuild the model a checkpoint
holds (training's resume, evaluate, export): weights, both pruning features' masks, and the
parameter report the run wrote."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ..data import build_data, dataset_info
from ..errors import UserError
from ..models import create_model
from ..rpg import apply_rpg, param_report, set_ring_masks
from ..rpg.compact import tables_fingerprint
from . import budget, checkpoint
from .dense_pruning import load_init, prune_to, pruned_report
from .ring_pruning import pruned_report as ring_pruned_report


@dataclass
class Built:
    model: nn.Module  # on the device, with the checkpoint's weights when one was given
    spec: dict  # create_model's arguments
    identity: dict  # what a checkpoint of this model must match
    report: dict  # param_report (pruned_report for the pruning baseline), before any wrapping
    train_loader: Any  # None when built without the training split
    val_loader: Any
    prune: dict | None = None  # the pruning baseline: non-zero weights kept, init checkpoint
    holdout_loader: Any = None  # data.val_split > 0: held-out training samples


def model_spec(cfg, info: dict) -> dict:
    """create_model's arguments: the dataset fills what the config leaves null. Plain
    containers only, since the spec is saved in checkpoints (read with weights_only)."""
    m = cfg.model
    if "width" in m.kwargs:  # once the CIFAR ResNets' base width; now model.width's key
        raise UserError("model.kwargs.width", m.kwargs.width, "is not a backbone argument: "
                        "use model.width, a channel multiplier (1 = the standard network)")
    return dict(name=m.name,
                num_classes=info["num_classes"] if m.num_classes is None else m.num_classes,
                in_chans=info["in_chans"] if m.in_chans is None else m.in_chans,
                small_input=info["small_input"] if m.small_input is None else m.small_input,
                **({} if m.width == 1 else {"width": m.width}),  # as create_model records it
                **cast(dict, OmegaConf.to_container(m.kwargs, resolve=True)))


def build_model(cfg, info: dict, ckpt: checkpoint.Checkpoint | None = None):
    """The backbone with RPG applied (or, for the pruning baseline, the trained dense model
    pruned); the library's argument errors get their config group. Returns (model, spec,
    prune_info), prune_info None unless pruning. A pruned checkpoint (`ckpt`) brings its own
    weights and masks, so resuming or evaluating it does not need prune.init's file."""
    spec = model_spec(cfg, info)
    try:
        model = create_model(**spec)
    except UserError as err:  # name, kwargs, width, ...
        raise err.under("model") from None
    r, p = cfg.rpg, cfg.prune
    size = budget.solve(cfg, spec, model) if cfg.match.width is not None else None
    if p.init is not None:
        saved = ckpt.state["identity"]["prune"] if ckpt is not None else None
        if isinstance(saved, dict):  # the masks' layout only: load_state_dict fills them
            prune_to(model, saved["nonzero"], r.share_stem, r.share_head)
            return model, spec, dict(saved, init=p.init)
        init_epochs = load_init(model, p.init, spec)
        keep = prune_to(model, p.params if size is None else size, r.share_stem, r.share_head)
        return model, spec, dict(nonzero=keep, init=p.init, init_epochs=init_epochs)
    try:
        apply_rpg(model, r.scope, r.params if size is None else size, seed=r.seed,
                  sampling=r.sampling, sign=r.sign, share_stem=r.share_stem,
                  share_head=r.share_head, offset=r.offset, k=r.k)
    except UserError as err:  # params, scope, sampling, ...
        raise err.under("rpg") from None
    return model, spec, None


def identity(model, spec: dict, prune_info: dict | None = None, holdout: int = 0) -> dict:
    """What a checkpoint must match to be loaded into this model: backbone, recipe, tables,
    for a pruned model the weights kept (and its dense run's epochs), and the held-out split
    (the training data differs without it; None when off, as in older checkpoints)."""
    prune = None if prune_info is None else {k: prune_info[k] for k in ("nonzero", "init_epochs")}
    return dict(model=spec, rpg=getattr(model, "rpg_spec", None),
                fingerprint=tables_fingerprint(model), prune=prune, holdout=holdout or None)


@dataclass
class Rebuilt:
    """A model as `model_from_checkpoint` (or, without a checkpoint, `build`) makes it."""

    model: nn.Module  # on the CPU
    spec: dict
    identity: dict
    report: dict  # param_report as the run's results.json has it
    prune: dict | None  # the pruning baseline's record


def model_from_checkpoint(ckpt: checkpoint.Checkpoint | None, cfg,
                          info: dict | None = None) -> Rebuilt:
    """The model of `cfg` with the checkpoint's weights and masks (the pruning baseline's
    through its state dict, ring pruning's from its record), refused if the checkpoint is of
    another model. `info`: the dataset's class count, channels and input size (default: the
    checkpoint's own, so no dataset is read). Without a checkpoint: the model as initialised."""
    if info is None:
        assert ckpt is not None, "info is needed without a checkpoint"
        spec = ckpt.state["identity"]["model"]
        info = {k: spec[k] for k in ("num_classes", "in_chans", "small_input")}
    model, spec, prune_info = build_model(cfg, info, ckpt)
    ident = identity(model, spec, prune_info, cfg.data.val_split)
    record = None
    if ckpt is not None:
        checkpoint.check_identity(ckpt, ident)
        model.load_state_dict(ckpt.state["model"])
        record = ckpt.state["ring_prune"]
        if record is not None:  # rpg.prune: pruned entries stay 0 and are not trainable
            set_ring_masks(model, record["masks"])
    report = param_report(model) if prune_info is None else pruned_report(model)
    if record is not None:
        report = ring_pruned_report(report, record["pruned"])
    return Rebuilt(model, spec, ident, report, prune_info)


def build(cfg, device: torch.device, *, ckpt: checkpoint.Checkpoint | None = None,
          rank: int = 0, world_size: int = 1, with_train: bool = True) -> Built:
    """Model and loaders as the config says. A checkpoint is checked against the model before
    the data is touched, then its weights are loaded."""
    info = dataset_info(cfg.data.name, cfg.data)
    rebuilt = model_from_checkpoint(ckpt, cfg, info)
    model, spec, ident, report = rebuilt.model, rebuilt.spec, rebuilt.identity, rebuilt.report
    prune_info = rebuilt.prune
    model.to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    data = build_data(cfg.data, device, cfg.trainer.seed, rank, world_size, with_train=with_train)
    return Built(model, spec, ident, report, data.train, data.val, prune_info, data.holdout)
