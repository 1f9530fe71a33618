"""Optimizer parameter groups and learning-rate schedules; `optimization` is the one factory
of a phase's optimizer and schedule (training, ring pruning's fine-tuning)."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ..errors import check_choice
from ..rpg import Ring

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, wd_norm: bool,
                 no_wd_1d: bool = False) -> list[dict]:
    """Explicit groups. Rings always get weight decay: they are 1-D, and the usual rule
    "no decay for 1-D tensors" (timm, nanoGPT) would silently drop it.
    Norm parameters and biases are decayed only with wd_norm. no_wd_1d adds timm's rule for
    everything else: no decay for any 1-D parameter (layer scales, ...) or one the model
    names in its no_weight_decay() (position embeddings, tokens)."""
    ring: list[nn.Parameter] = []
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen = set()
    named = getattr(model, "no_weight_decay", None)
    exempt = {id(p) for n, p in model.named_parameters() if n in set(named())} if (
        no_wd_1d and callable(named)) else set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, Ring):
                ring.append(p)
            elif isinstance(module, _NORMS) or name == "bias":
                (decay if wd_norm else no_decay).append(p)
            elif no_wd_1d and (p.ndim <= 1 or id(p) in exempt):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [dict(params=ring, weight_decay=weight_decay, group="ring"),
              dict(params=decay, weight_decay=weight_decay, group="decay"),
              dict(params=no_decay, weight_decay=0.0, group="no_decay")]
    return [g for g in groups if g["params"]]


def _sgd(groups, cfg, lr):
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def _adamw(groups, cfg, lr):
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))


OPTIMIZERS = {"sgd": _sgd, "adamw": _adamw}  # optim.name -> builder(groups, optim cfg, lr)


def global_batch(cfg, world_size: int) -> int:
    """Images per optimizer step over all processes (what optim.lr is scaled by)."""
    return cfg.data.batch_size * world_size * cfg.trainer.accumulate


def applied_lr(cfg, global_batch: int) -> float:
    """The linear scaling rule: optim.lr is for a global batch of optim.lr_batch images
    (null: optim.lr as it is)."""
    return cfg.lr if cfg.lr_batch is None else cfg.lr * global_batch / cfg.lr_batch


def build_optimizer(cfg, model: nn.Module, global_batch: int | None = None):
    """The optimizer at applied_lr(cfg, global_batch) (optim.lr itself when no batch is given)."""
    check_choice("optim.name", cfg.name, OPTIMIZERS)
    lr = cfg.lr if global_batch is None else applied_lr(cfg, global_batch)
    groups = param_groups(model, cfg.weight_decay, cfg.wd_norm, cfg.no_wd_1d)
    return OPTIMIZERS[cfg.name](groups, cfg, lr)


# After warmup, the multiplier of the base lr at fractional epoch t. Cosine is smooth; step
# and exp change once per epoch, as the authors' schedule does.
def _cosine(t, *, epochs, warmup_epochs, min_ratio, **_):
    progress = min((t - warmup_epochs) / max(epochs - warmup_epochs, 1e-12), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _step(t, *, step_size, gamma, **_):
    return gamma ** (math.floor(t) // step_size)


def _exp(t, *, decay_epochs, **_):
    return 0.1 ** (math.floor(t) / decay_epochs)


def _constant(t, **_):
    return 1.0


# sched.name -> the multiplier after warmup
SCHEDULES: dict[str, Callable[..., float]] = {"cosine": _cosine, "step": _step, "exp": _exp,
                                              "constant": _constant}


def lr_schedule(*, name: str, epochs: int, warmup_epochs: float, warmup_start: float,
                min_ratio: float, step_size: int, gamma: float, decay_epochs: float):
    """The multiplier of the base lr as a function of the fractional epoch t: linear warmup,
    then the schedule. The name is checked here, once; the function runs at every step."""
    check_choice("sched.name", name, SCHEDULES)
    after = partial(SCHEDULES[name], epochs=epochs, warmup_epochs=warmup_epochs,
                    min_ratio=min_ratio, step_size=step_size, gamma=gamma,
                    decay_epochs=decay_epochs)

    def factor(t: float) -> float:
        if t < warmup_epochs:
            return warmup_start + (1 - warmup_start) * t / warmup_epochs
        return after(t)
    return factor


def build_scheduler(cfg, base_lr: float, optimizer, epochs: int, steps_per_epoch: int):
    """A LambdaLR stepped once per optimizer step. sched.min_lr is in optim.lr's units
    (`base_lr`), so the floor scales with the batch as the lr does."""
    factor = lr_schedule(name=cfg.name, epochs=epochs, warmup_epochs=cfg.warmup_epochs,
                         warmup_start=cfg.warmup_start, min_ratio=cfg.min_lr / base_lr,
                         step_size=cfg.step_size, gamma=cfg.gamma,
                         decay_epochs=cfg.decay_epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda step: factor(step / steps_per_epoch))


def finetune_lr(cfg) -> float:
    """Fine-tuning's optim.lr (per optim.lr_batch images, as optim.lr is): rpg.prune.lr, by
    default a tenth of optim.lr, the recipe of ring pruning and of the pruning baseline."""
    p = cfg.rpg.prune
    return cfg.optim.lr / 10 if p.lr is None else p.lr


def optimization(cfg, model: nn.Module, world_size: int, steps_per_epoch: int,
                 phase: str = "train"):
    """(optimizer, scheduler) of a phase of a run: "train" as optim and sched say over
    trainer.epochs; "finetune" (ring pruning's) a fresh optimizer (its state starts at 0, so
    masked entries stay 0 under momentum and weight decay) at finetune_lr, its schedule over
    rpg.prune.finetune_epochs without warm-up."""
    optim, sched, epochs = cfg.optim, cfg.sched, cfg.trainer.epochs
    if phase == "finetune":
        lr = finetune_lr(cfg)
        optim = OmegaConf.merge(cfg.optim, {"lr": lr})
        # sched.min_lr is in optim.lr's units: scaled with the lr, the floor stays below it
        sched = OmegaConf.merge(cfg.sched, {"warmup_epochs": 0,
                                            "min_lr": cfg.sched.min_lr * lr / cfg.optim.lr})
        epochs = max(cfg.rpg.prune.finetune_epochs, 1)
    optimizer = build_optimizer(optim, model, global_batch(cfg, world_size))
    return optimizer, build_scheduler(sched, optim.lr, optimizer, epochs, steps_per_epoch)
