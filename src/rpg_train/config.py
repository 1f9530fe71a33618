"""The config schema (dataclasses in Hydra's ConfigStore, so every key's type is checked when
the config is composed) and `validate`, which rejects bad values before any work starts.

The schema holds every default; the YAML files in conf/ only change what their option selects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .errors import UserError

ConfigError = UserError  # the old name: a bad config value is a user error like any other


@dataclass
class ModelConfig:
    name: str = "resnet20"  # a key of models.MODELS, or timm:<name>
    num_classes: Optional[int] = None  # null: from the dataset
    in_chans: Optional[int] = None  # null: from the dataset
    small_input: Optional[bool] = None  # null: from the dataset (CIFAR stem for small images)
    width: float = 1.0  # channel multiplier (torchvision and CIFAR ResNets): the width baseline
    kwargs: Dict[str, Any] = field(default_factory=dict)  # more create_model arguments


@dataclass
class RingPruneConfig:
    """Ring pruning after training: once trainer.epochs are trained, the `amount` fraction of
    ring entries with the smallest magnitudes is zeroed (with every weight they generate) and
    the model fine-tuned for `finetune_epochs` more epochs, pruned entries held at 0. `lr` is
    the fine-tuning's optim.lr (per optim.lr_batch images; null: optim.lr / 10), on the
    sched.name schedule without warm-up. A trained run is pruned by resuming it with these
    keys set (trainer.resume=PATH/last.pt)."""
    amount: float = 0.0  # in [0, 1); 0 = off
    finetune_epochs: int = 0
    lr: Optional[float] = None


@dataclass
class RPGConfig:
    scope: str = "network"  # rpg.SCOPES: network | stage | block | layer | none
    # total ring size: an integer (float, so 1e5 works on the command line) or a fraction
    # in (0, 1) of the weights the rings generate; apply_rpg checks it
    params: float = 25000
    seed: int = 0  # seeds the index and sign tables
    sampling: str = "even"  # rpg.SAMPLINGS: even | ring | iid
    sign: bool = True
    share_stem: bool = False
    share_head: bool = False
    prune: RingPruneConfig = field(default_factory=RingPruneConfig)


@dataclass
class MatchConfig:
    """Equal-DoF baselines: with `width` set, the RPG ring (or the pruning target) is solved
    so the trainable count equals that of the dense `model` (null: model.name) at channel
    multiplier `width`; rpg.params (prune.params) is then ignored."""
    width: Optional[float] = None
    model: Optional[str] = None


@dataclass
class PruneConfig:
    """The pruning baseline: a trained dense checkpoint, globally magnitude-pruned over the
    weights RPG would generate, then fine-tuned for trainer.epochs (needs rpg=none)."""
    init: Optional[str] = None  # the trained dense model's checkpoint; null = no pruning
    params: Optional[float] = None  # non-zero weights kept (int or fraction); or match.width


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # data.DATASETS
    root: Optional[str] = None  # null: ./data/<name>
    batch_size: int = 128  # per process
    eval_batch_size: int = 512
    num_workers: int = 8  # ImageNet only; small datasets live on the device
    download: bool = True
    augment: bool = True
    # held-out training samples to pick the best epoch on (results' selected_top1), so the
    # test set is not used for model selection; 0 = none (best_top1 is then picked on test)
    val_split: int = 0
    # the modern recipe's parts, from timm (all off: the authors' recipe). ImageNet only:
    # auto_augment, a timm policy (rand-m9-mstd0.5-inc1 = RandAugment, augmix-m5-w4-d2, v0 =
    # AutoAugment) or trivial (TrivialAugmentWide); re_prob, random erasing per image. Any
    # dataset: mixup / cutmix, their Beta alphas (timm's Mixup; 0 = off; soft-target loss)
    auto_augment: Optional[str] = None
    re_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    # synthetic only
    num_train: int = 512
    num_val: int = 256
    in_chans: int = 3
    image_size: int = 32
    num_classes: int = 10


@dataclass
class OptimConfig:
    name: str = "sgd"  # engine.optim.OPTIMIZERS: sgd | adamw
    # lr is for a global batch of lr_batch images: the run applies lr * global batch / lr_batch
    # (global batch = data.batch_size * processes * trainer.accumulate), so one recipe gives
    # the same training on 1 or 64 GPUs; lr_batch null applies lr as it is
    lr: float = 0.2
    lr_batch: Optional[int] = 256
    momentum: float = 0.9
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4  # rings included, on purpose
    wd_norm: bool = False  # also decay norm parameters and biases
    no_wd_1d: bool = False  # timm's rule: no decay for 1-D and no_weight_decay() parameters (rings keep theirs)


@dataclass
class SchedConfig:
    name: str = "cosine"  # engine.optim.SCHEDULES: cosine | step | exp | constant
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
    overwrite: bool = False  # a fresh run may replace an earlier run's records in its directory
    progress: bool = True  # tqdm bar, when the output is a terminal
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    sync_bn: bool = False  # BatchNorm statistics over all processes (CUDA only)
    ema_decay: Optional[float] = None  # an EMA of the weights (timm's ModelEmaV3), also evaluated
    # faults: a recovery last.pt every N minutes mid-epoch (0 = at epoch ends only); a
    # collective that waits this long for a lost rank fails instead of hanging
    checkpoint_every_min: float = 30.0
    dist_timeout_s: float = 600.0
    # divergence: a non-finite loss, one above max_loss (null = no bound), or one above
    # max_loss_factor x the starting loss (the first step's, at least ln(classes); null = no
    # bound) stops the run (stop) or skips its step (skip, a host sync per step); stop reads
    # the loss every nan_check_every steps and before every checkpoint
    nan_policy: str = "stop"
    max_loss: Optional[float] = None
    max_loss_factor: Optional[float] = 100.0
    nan_check_every: int = 50


@dataclass
class LoggerConfig:
    name: str = "none"  # log.LOGGERS: none | wandb
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
    match: MatchConfig = field(default_factory=MatchConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    out_dir: str = "???"  # the run directory; the app sets it to Hydra's output dir


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def choices() -> dict:
    """Every key with a fixed set of values, read from the registry that acts on it, so a
    value the schema accepts is one the code can build (imported late: the registries import
    this module)."""
    from .data import DATASETS
    from .engine.amp import AMP
    from .engine.guard import POLICIES
    from .engine.optim import OPTIMIZERS, SCHEDULES
    from .log import LOGGERS, WANDB_MODES
    from .rpg import SAMPLINGS, SCOPES

    return {"rpg.scope": SCOPES, "rpg.sampling": SAMPLINGS, "data.name": DATASETS,
            "optim.name": OPTIMIZERS, "sched.name": SCHEDULES, "trainer.amp": AMP, "trainer.nan_policy": POLICIES,
            "logger.name": LOGGERS, "logger.mode": WANDB_MODES}


def check_choice(key: str, value, registry) -> None:
    """The one message for a value outside its registry: key, value and the choices."""
    if value not in registry:
        raise UserError(key, value, "is not valid; choose one of: " + ", ".join(registry))


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg) -> None:
    """Reject bad values with one line naming the key and the value, before any work.
    rpg.params is left to apply_rpg, the one place that knows how many weights a ring of
    that size generates (it accepts integers >= 1 and fractions in (0, 1))."""
    from .models import available, is_available

    for key in sorted(OmegaConf.missing_keys(cfg) - {"out_dir"}):  # out_dir: set by the app
        raise UserError(key, "???", "must be given")
    for key, registry in choices().items():
        check_choice(key, _get(cfg, key), registry)
    if not is_available(cfg.model.name):
        raise UserError("model.name", cfg.model.name, "is not a known model; choose one of: "
                        + ", ".join(available()))
    for key in ("trainer.epochs", "data.batch_size", "data.eval_batch_size", "sched.step_size",
                "trainer.nan_check_every", "trainer.accumulate", "data.num_train",
                "data.num_val"):
        if _get(cfg, key) < 1:
            raise UserError(key, _get(cfg, key), "must be at least 1")
    for key in ("trainer.max_steps", "trainer.limit_batches", "trainer.grad_clip",
                "sched.warmup_epochs", "sched.min_lr", "optim.weight_decay", "data.num_workers",
                "data.val_split", "trainer.checkpoint_every_min", "data.mixup", "data.cutmix"):
        if _get(cfg, key) < 0:
            raise UserError(key, _get(cfg, key), "must not be negative")
    for key in ("optim.lr", "sched.decay_epochs", "trainer.dist_timeout_s"):
        if _get(cfg, key) <= 0:
            raise UserError(key, _get(cfg, key), "must be positive")
    if not 0 <= cfg.trainer.label_smoothing < 1:
        raise UserError("trainer.label_smoothing", cfg.trainer.label_smoothing,
                        "must be in [0, 1)")
    if not 0 <= cfg.data.re_prob <= 1:
        raise UserError("data.re_prob", cfg.data.re_prob, "must be in [0, 1]")
    for key in ("data.auto_augment", "data.re_prob"):
        if _get(cfg, key) and cfg.data.name != "imagenet":
            raise UserError(key, _get(cfg, key), "is for data=imagenet only (the in-memory "
                            "datasets augment on the device: data.augment)")
        if _get(cfg, key) and not cfg.data.augment:
            raise UserError(key, _get(cfg, key), "needs data.augment=true")
    if cfg.data.auto_augment:
        from .data.loaders import auto_augment
        from .data.transforms import MEAN_STD

        auto_augment(cfg.data.auto_augment, MEAN_STD["imagenet"])  # a bad policy: one line
    if (cfg.data.mixup or cfg.data.cutmix) and cfg.data.batch_size % 2:
        raise UserError("data.batch_size", cfg.data.batch_size, "must be even with "
                        "data.mixup or data.cutmix (timm's Mixup pairs the batch with itself)")
    if cfg.trainer.ema_decay is not None and not 0 < cfg.trainer.ema_decay < 1:
        raise UserError("trainer.ema_decay", cfg.trainer.ema_decay, "must be in (0, 1) (or null)")
    if cfg.optim.lr_batch is not None and cfg.optim.lr_batch < 1:
        raise UserError("optim.lr_batch", cfg.optim.lr_batch, "must be at least 1 (or null)")
    if cfg.trainer.max_loss is not None and not cfg.trainer.max_loss > 0:
        raise UserError("trainer.max_loss", cfg.trainer.max_loss, "must be positive (or null)")
    if cfg.trainer.max_loss_factor is not None and not cfg.trainer.max_loss_factor > 1:
        raise UserError("trainer.max_loss_factor", cfg.trainer.max_loss_factor,
                        "must be above 1 (or null: no bound)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.trainer.device):
        raise UserError("trainer.device", cfg.trainer.device,
                        "is not valid; use auto, cpu, cuda, cuda:N or mps")
    if cfg.data.root is not None and not Path(cfg.data.root).is_dir() and not cfg.data.download:
        raise UserError("data.root", cfg.data.root,
                        "is not a directory (and data.download is false)")
    _validate_baselines(cfg)
    _validate_ring_prune(cfg.rpg)
    resume = cfg.trainer.resume
    if resume not in (None, "auto") and not Path(resume).is_file():
        raise UserError("trainer.resume", resume, "does not exist; give a checkpoint file "
                        "or 'auto'")


def _validate_ring_prune(r) -> None:
    p = r.prune
    if not 0 <= p.amount < 1:
        raise UserError("rpg.prune.amount", p.amount, "must be in [0, 1) (0 = no ring pruning)")
    if p.amount and r.scope == "none":
        raise UserError("rpg.prune.amount", p.amount, "prunes ring entries and this model has "
                        "no ring (rpg.scope=none); a dense model is pruned with prune.init")
    if p.finetune_epochs < 0:
        raise UserError("rpg.prune.finetune_epochs", p.finetune_epochs, "must be 0 or more")
    if p.finetune_epochs and not p.amount:
        raise UserError("rpg.prune.finetune_epochs", p.finetune_epochs, "fine-tunes a pruned "
                        "ring: set rpg.prune.amount too")
    if p.lr is not None and not p.lr > 0:
        raise UserError("rpg.prune.lr", p.lr, "must be positive (or null: optim.lr / 10)")


def _validate_baselines(cfg) -> None:
    """model.width, match.* and prune.*: what the equal-DoF baselines need to be built."""
    from .models import is_available

    if not cfg.model.width > 0:
        raise UserError("model.width", cfg.model.width, "must be a positive multiplier")
    m, p = cfg.match, cfg.prune
    if m.width is not None and not m.width > 0:
        raise UserError("match.width", m.width, "must be a positive multiplier")
    if m.model is not None and not is_available(m.model):
        raise UserError("match.model", m.model, "is not a known model")
    if m.model is not None and m.width is None:
        raise UserError("match.model", m.model, "needs match.width (the width of it to match)")
    if p.init is None:
        if p.params is not None:
            raise UserError("prune.params", p.params, "needs prune.init (the trained dense "
                            "checkpoint to prune)")
        if m.width is not None and cfg.rpg.scope == "none":
            raise UserError("match.width", m.width, "has nothing to solve: it sizes an RPG "
                            "ring (rpg.scope != none) or a pruning target (prune.init)")
        return
    if cfg.rpg.scope != "none":
        raise UserError("prune.init", p.init, "prunes a dense model: set rpg=none")
    if (p.params is None) == (m.width is None):
        raise UserError("prune.params", p.params, "give exactly one of prune.params and "
                        "match.width (the number of non-zero weights to keep)")
