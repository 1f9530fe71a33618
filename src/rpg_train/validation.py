"""`validate(cfg)`: every bad value refused with one line naming the key and the value, before
any work. The top layer, beside the entry points: it reads the registries of the subsystems
that act on the keys (so a value accepted here is one the code can build), the machine, the
files, and the model against the dataset; the checks the values alone decide are `config`'s.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from . import config
from .config import value_of
from .data import DATASETS, dataset_info
from .data.loaders import auto_augment
from .data.transforms import MEAN_STD
from .engine.amp import AMP
from .engine.build import model_spec
from .engine.guard import POLICIES
from .engine.optim import OPTIMIZERS, SCHEDULES
from .errors import UserError, check_choice
from .log import LOGGERS, WANDB_MODES
from .log.wandb_logger import resolve_mode
from .models import available, is_available, smallest_input
from .rpg import SAMPLINGS, SCOPES


def choices() -> dict:
    """Every key with a fixed set of values and the registry that acts on it."""
    return {"rpg.scope": SCOPES, "rpg.sampling": SAMPLINGS, "data.name": DATASETS,
            "optim.name": OPTIMIZERS, "sched.name": SCHEDULES, "trainer.amp": AMP,
            "trainer.nan_policy": POLICIES, "logger.name": LOGGERS, "logger.mode": WANDB_MODES}


def validate(cfg) -> None:
    """Refuse bad values, in this order: a missing key, a name outside its registry, every
    numeric key against its interval, settings that contradict each other, what the machine
    and the files say, then the model against the dataset."""
    config.check_given(cfg)
    for key, registry in choices().items():
        check_choice(key, value_of(cfg, key), registry)
    if not is_available(cfg.model.name):
        raise UserError.choice("model.name", cfg.model.name, available(),
                               says="is not a known model; choose one of")
    config.check_numbers(cfg)
    config.check_augment(cfg)
    if cfg.data.auto_augment:
        auto_augment(cfg.data.auto_augment, MEAN_STD["imagenet"])  # a bad policy: one line
    config.check_combinations(cfg)
    _check_device(cfg.trainer.device)
    if cfg.data.root is not None and not Path(cfg.data.root).is_dir() and not cfg.data.download:
        raise UserError("data.root", cfg.data.root,
                        "is not a directory (and data.download is false)")
    if cfg.match.model is not None and not is_available(cfg.match.model):
        raise UserError("match.model", cfg.match.model, "is not a known model")
    config.check_baselines(cfg)
    config.check_ring_prune(cfg)
    if cfg.logger.name == "wandb":  # a bad WANDB_MODE: on every rank, before any work
        resolve_mode(cfg.logger.mode, os.environ)
    resume = cfg.trainer.resume
    if resume not in (None, "auto") and not Path(resume).is_file():
        raise UserError("trainer.resume", resume, "does not exist; give a checkpoint file "
                        "or 'auto'")
    _check_model_fits_data(cfg)


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise UserError("trainer.device", device,
                        "is not valid; use auto, cpu, cuda, cuda:N or mps")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.device", "mps", "is not available here (this torch has no "
                        "MPS backend or no Apple GPU); use auto or cpu")


def _check_model_fits_data(cfg) -> None:
    """The model against the dataset's channels, classes and image size, read from the
    dataset's table (no data is loaded) and a forward pass on the meta device (models)."""
    m, d = cfg.model, cfg.data
    info = dataset_info(d.name, d)
    if m.num_classes is not None and m.num_classes < info["num_classes"]:
        raise UserError("model.num_classes", m.num_classes, f"is below the "
                        f"{info['num_classes']} classes of data.name={d.name} (null: the "
                        "dataset's)")
    if m.in_chans is not None and m.in_chans != info["in_chans"]:
        raise UserError("model.in_chans", m.in_chans, f"does not match the {info['in_chans']} "
                        f"image channel(s) of data.name={d.name} (null: the dataset's)")
    size = info["image_size"]
    try:
        smallest = smallest_input(model_spec(cfg, info), size)
    except UserError as err:  # a bad model argument, found here first
        raise err.under("model") from None
    if smallest is not None:
        raise UserError("model.name", m.name, f"cannot take the {size} px images of "
                        f"data.name={d.name}: the smallest size it takes is {smallest} px; "
                        "choose another model or larger images")
