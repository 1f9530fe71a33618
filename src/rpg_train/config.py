"""The config schema (dataclasses in Hydra's ConfigStore, so every key's type is checked when
the config is composed) and `validate`, which rejects bad values before any work starts."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A bad config value; its message is one line naming the key and the value."""


@dataclass
class ModelConfig:
    name: str = "resnet20"
    num_classes: Optional[int] = None  # null: from the dataset
    in_chans: Optional[int] = None  # null: from the dataset
    small_input: Optional[bool] = None  # null: from the dataset (CIFAR stem for small images)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # more create_model arguments


@dataclass
class RPGConfig:
    scope: str = "network"  # network | stage | block | layer | none
    params: float = 25000  # total ring size; float so that 1e5 works on the command line
    seed: int = 0  # seeds the index and sign tables
    sampling: str = "even"  # even | ring | iid
    sign: bool = True
    share_stem: bool = False
    share_head: bool = False


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: Optional[str] = None  # null: ./data/<name>
    batch_size: int = 128  # per process
    eval_batch_size: int = 512
    num_workers: int = 8  # ImageNet only; small datasets live on the device
    download: bool = True
    augment: bool = True
    # synthetic only
    num_train: int = 512
    num_val: int = 256
    in_chans: int = 3
    image_size: int = 32
    num_classes: int = 10


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4  # rings included, on purpose
    wd_norm: bool = False  # also decay norm parameters and biases


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | step | exp | constant
    warmup_epochs: float = 0.0
    warmup_start: float = 0.1  # first warmup lr as a fraction of optim.lr
    min_lr: float = 0.0  # cosine floor
    step_size: int = 30  # step: every step_size epochs multiply by gamma
    gamma: float = 0.1
    decay_epochs: float = 45.0  # exp: lr0 * 0.1 ** (epoch / decay_epochs), the authors'


@dataclass
class TrainerConfig:
    epochs: int = 5
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    label_smoothing: float = 0.0
    max_steps: int = 0  # stop after this many optimizer steps in total; 0 = no limit
    limit_batches: int = 0  # batches per epoch, train and val; 0 = all
    resume: Optional[str] = None  # auto (last.pt in the run directory) | PATH
    progress: bool = True  # tqdm bar, when the output is a terminal


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "rpg-train"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online with credentials, else offline) | online | offline | disabled
    group: Optional[str] = None  # null: the multirun's sweep directory name
    run_name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    rpg: RPGConfig = field(default_factory=RPGConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    out_dir: str = "???"  # the run directory; the app sets it to Hydra's output dir


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


CHOICES = {
    "rpg.scope": ("network", "stage", "block", "layer", "none"),
    "rpg.sampling": ("even", "ring", "iid"),
    "optim.name": ("sgd", "adamw"),
    "sched.name": ("cosine", "step", "exp", "constant"),
    "trainer.amp": ("auto", "off", "bf16", "fp16"),
    "logger.name": ("none", "wandb"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg) -> None:
    """Reject bad values with one line naming the key and the value, before any work."""
    from .data import DATASETS
    from .models import available, is_available

    for key, choices in CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not valid; choose one of: "
                              + ", ".join(choices))
    if not is_available(cfg.model.name):
        raise ConfigError(f"model.name={cfg.model.name!r} is not a known model; choose one of: "
                          + ", ".join(available()))
    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.data.name!r} is not a dataset; choose one of: "
                          + ", ".join(DATASETS))
    params = cfg.rpg.params
    if cfg.rpg.scope != "none" and not (params >= 1 and float(params).is_integer()):
        raise ConfigError(f"rpg.params={params!r} must be a positive integer (e.g. 20000 or 1e5)")
    for key in ("trainer.epochs", "data.batch_size", "data.eval_batch_size", "sched.step_size"):
        if _get(cfg, key) < 1:
            raise ConfigError(f"{key}={_get(cfg, key)} must be at least 1")
    for key in ("trainer.max_steps", "trainer.limit_batches", "trainer.grad_clip",
                "sched.warmup_epochs", "sched.min_lr", "optim.weight_decay", "data.num_workers"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must not be negative")
    for key in ("optim.lr", "sched.decay_epochs"):
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be positive")
    if not 0 <= cfg.trainer.label_smoothing < 1:
        raise ConfigError(f"trainer.label_smoothing={cfg.trainer.label_smoothing} must be in [0, 1)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.trainer.device):
        raise ConfigError(f"trainer.device={cfg.trainer.device!r} is not valid; use auto, cpu, "
                          "cuda, cuda:N or mps")
    if cfg.data.root is not None and not Path(cfg.data.root).is_dir() and not cfg.data.download:
        raise ConfigError(f"data.root={cfg.data.root!r} is not a directory (and data.download "
                          "is false)")
    resume = cfg.trainer.resume
    if resume not in (None, "auto") and not Path(resume).is_file():
        raise ConfigError(f"trainer.resume={resume!r} does not exist; give a checkpoint file "
                          "or 'auto'")
