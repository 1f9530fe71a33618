"""The config schema (dataclasses in Hydra's ConfigStore, so every key's type is checked when
the config is composed) and `validate`, which rejects bad values before any work starts.

The schema holds every default; the YAML files in conf/ only change what their option selects.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, OmegaConf

from .errors import UserError

ConfigError = UserError  # the old name: a bad config value is a user error like any other


# torch.manual_seed takes [-2**63, 2**64)
SEED_RANGE, SEED_SAYS = "[-9223372036854775808, 18446744073709551616)", "a seed torch takes"


def within(default, interval: str, *, says: str = "", null: str = "", length: int = 0):
    """A numeric field and the interval its values must lie in, "[0, 1)", "(0, inf)", ...,
    checked by `validate` for every such field (each entry of a list; NaN lies in none).
    `says` words the message instead of the interval; `null` says what a null value means;
    `length` is a list's."""
    meta = dict(interval=interval, says=says, null=null, length=length)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = "resnet20"  # a key of models.MODELS, or timm:<name>
    num_classes: Optional[int] = within(None, "[1, inf)")  # null: from the dataset
    in_chans: Optional[int] = within(None, "[1, inf)")  # null: from the dataset
    small_input: Optional[bool] = None  # null: from the dataset (CIFAR stem for small images)
    # channel multiplier (torchvision and CIFAR ResNets): the width baseline
    width: float = within(1.0, "(0, inf)", says="a positive multiplier")
    kwargs: Dict[str, Any] = field(default_factory=dict)  # more create_model arguments


@dataclass
class RingPruneConfig:
    """Ring pruning after training: once trainer.epochs are trained, the `amount` fraction of
    ring entries with the smallest magnitudes is zeroed (with every weight they generate) and
    the model fine-tuned for `finetune_epochs` more epochs, pruned entries held at 0. `lr` is
    the fine-tuning's optim.lr (per optim.lr_batch images; null: optim.lr / 10), on the
    sched.name schedule without warm-up. A trained run is pruned by resuming it with these
    keys set (trainer.resume=PATH/last.pt)."""
    amount: float = within(0.0, "[0, 1)")  # 0 = off
    finetune_epochs: int = within(0, "[0, inf)")
    lr: Optional[float] = within(None, "(0, inf)", null="optim.lr / 10")


@dataclass
class RPGConfig:
    scope: str = "network"  # rpg.SCOPES: network | stage | block | layer | none
    # total ring size: an integer (float, so 1e5 works on the command line) or a fraction
    # in (0, 1) of the weights the rings generate; apply_rpg checks it
    params: float = field(default=25000, metadata=dict(checked_by="apply_rpg"))
    # seeds the index and sign tables; by default the run's seed, so a sweep over
    # trainer.seed redraws the tables too (runs before this default used 0)
    seed: int = within(II("trainer.seed"), SEED_RANGE, says=SEED_SAYS)
    sampling: str = "even"  # rpg.SAMPLINGS: even | ring | iid | plain
    sign: bool = True
    # a frozen random theta0 (each layer's Kaiming init, from rpg.seed) added to the generated
    # weights, the ring starting at 0: Li et al.'s random subspace; one float per weight
    offset: bool = False
    # ring entries per generated weight, summed and scaled by 1/sqrt(k); 1 = RPG
    k: int = within(1, "[1, inf)")
    share_stem: bool = False
    share_head: bool = False
    prune: RingPruneConfig = field(default_factory=RingPruneConfig)


@dataclass
class MatchConfig:
    """Equal-DoF baselines: with `width` set, the RPG ring (or the pruning target) is solved
    so the trainable count equals that of the dense `model` (null: model.name) at channel
    multiplier `width`; rpg.params (prune.params) is then ignored."""
    width: Optional[float] = within(None, "(0, inf)", says="a positive multiplier")
    model: Optional[str] = None


@dataclass
class PruneConfig:
    """The pruning baseline: a trained dense checkpoint, globally magnitude-pruned over the
    weights RPG would generate, then fine-tuned for trainer.epochs (needs rpg=none)."""
    init: Optional[str] = None  # the trained dense model's checkpoint; null = no pruning
    # non-zero weights kept (int or fraction); or match.width
    params: Optional[float] = field(default=None, metadata=dict(checked_by="prune_to"))


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # data.DATASETS
    root: Optional[str] = None  # null: ./data/<name>
    batch_size: int = within(128, "[1, inf)")  # per process
    eval_batch_size: int = within(512, "[1, inf)")
    num_workers: int = within(8, "[0, inf)")  # ImageNet only; small datasets live on the device
    download: bool = True
    augment: bool = True
    # held-out training samples to pick the best epoch on (results' selected_top1), so the
    # test set is not used for model selection; 0 = none (best_top1 is then picked on test)
    val_split: int = within(0, "[0, inf)")
    # the modern recipe's parts, from timm (all off: the authors' recipe). ImageNet only:
    # auto_augment, a timm policy (rand-m9-mstd0.5-inc1 = RandAugment, augmix-m5-w4-d2, v0 =
    # AutoAugment) or trivial (TrivialAugmentWide); re_prob, random erasing per image. Any
    # dataset: mixup / cutmix, their Beta alphas (timm's Mixup; 0 = off; soft-target loss)
    auto_augment: Optional[str] = None
    re_prob: float = within(0.0, "[0, 1]")
    mixup: float = within(0.0, "[0, inf)")
    cutmix: float = within(0.0, "[0, inf)")
    # synthetic only
    num_train: int = within(512, "[1, inf)")
    num_val: int = within(256, "[1, inf)")
    in_chans: int = within(3, "[1, inf)")
    image_size: int = within(32, "[1, inf)")
    num_classes: int = within(10, "[1, inf)")


@dataclass
class OptimConfig:
    name: str = "sgd"  # engine.optim.OPTIMIZERS: sgd | adamw
    # lr is for a global batch of lr_batch images: the run applies lr * global batch / lr_batch
    # (global batch = data.batch_size * processes * trainer.accumulate), so one recipe gives
    # the same training on 1 or 64 GPUs; lr_batch null applies lr as it is
    lr: float = within(0.2, "(0, inf)")
    lr_batch: Optional[int] = within(256, "[1, inf)")
    momentum: float = within(0.9, "[0, 1)")
    nesterov: bool = False
    betas: List[float] = within([0.9, 0.999], "[0, 1)", length=2)  # AdamW's
    weight_decay: float = within(5e-4, "[0, inf)")  # rings included, on purpose
    wd_norm: bool = False  # also decay norm parameters and biases
    no_wd_1d: bool = False  # timm's rule: no decay for 1-D and no_weight_decay() parameters (rings keep theirs)


@dataclass
class SchedConfig:
    name: str = "cosine"  # engine.optim.SCHEDULES: cosine | step | exp | constant
    warmup_epochs: float = within(0.0, "[0, inf)")
    warmup_start: float = within(0.1, "[0, 1]")  # first warmup lr as a fraction of optim.lr
    min_lr: float = within(0.0, "[0, inf)")  # cosine floor
    step_size: int = within(30, "[1, inf)")  # step: every step_size epochs multiply by gamma
    gamma: float = within(0.1, "(0, inf)")
    # exp: lr0 * 0.1 ** (epoch / decay_epochs), the authors'
    decay_epochs: float = within(45.0, "(0, inf)")


@dataclass
class TrainerConfig:
    epochs: int = within(5, "[1, inf)")
    seed: int = within(0, SEED_RANGE, says=SEED_SAYS)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = within(0.0, "[0, inf)")  # max global grad norm; 0 = off
    label_smoothing: float = within(0.0, "[0, 1)")
    # stop after this many optimizer steps in total; 0 = no limit
    max_steps: int = within(0, "[0, inf)")
    limit_batches: int = within(0, "[0, inf)")  # batches per epoch, train and val; 0 = all
    resume: Optional[str] = None  # auto (last.pt in the run directory) | PATH
    # a fresh run may replace an earlier run's records in its directory
    overwrite: bool = False
    progress: bool = True  # tqdm bars (training and evaluation), when the output is a terminal
    # without a bar (no terminal: SLURM, nohup; or progress=false): a line every this many
    # seconds saying epoch, batch, loss, img/s and the time left; 0 = none
    log_every_s: float = within(60.0, "[0, inf)")
    accumulate: int = within(1, "[1, inf)")  # micro-batches per optimizer step
    sync_bn: bool = False  # BatchNorm statistics over all processes (CUDA only)
    # an EMA of the weights (timm's ModelEmaV3), also evaluated
    ema_decay: Optional[float] = within(None, "(0, 1)")
    # faults: a recovery last.pt every N minutes mid-epoch (0 = at epoch ends only); a
    # collective that waits this long for a lost rank fails instead of hanging
    checkpoint_every_min: float = within(30.0, "[0, inf)")
    dist_timeout_s: float = within(600.0, "(0, inf)")
    # divergence: a non-finite loss, one above max_loss (null = no bound), or one above
    # max_loss_factor x the starting loss (the first step's, at least ln(classes); null = no
    # bound) stops the run (stop) or skips its step (skip, a host sync per step); stop reads
    # the loss every nan_check_every steps and before every checkpoint
    nan_policy: str = "stop"
    max_loss: Optional[float] = within(None, "(0, inf)")
    max_loss_factor: Optional[float] = within(100.0, "(1, inf)", null="no bound")
    nan_check_every: int = within(50, "[1, inf)")


@dataclass
class LoggerConfig:
    """W&B. A key set here wins; a key left at its default (null, auto, []) yields to W&B's
    own environment variable, then to the default named (conf/logger/wandb.yaml)."""
    name: str = "none"  # log.LOGGERS: none | wandb
    project: Optional[str] = None  # null: $WANDB_PROJECT, else rpg-train
    entity: Optional[str] = None  # null: $WANDB_ENTITY, else your W&B default
    # auto: $WANDB_MODE, else online with credentials, else offline | online | offline | disabled
    mode: str = "auto"
    group: Optional[str] = None  # null: $WANDB_RUN_GROUP, else the multirun's sweep directory
    run_name: Optional[str] = None  # null: $WANDB_NAME, else <method>-<model>-<trainable>-s<seed>
    tags: List[str] = field(default_factory=list)  # []: $WANDB_TAGS; method, model, data added


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


def numeric_keys(node=None, prefix: str = "") -> dict:
    """Every numeric key of the schema (int and float, also Optional or in a List), nested
    groups included: {key: (its field's metadata, whether it may be null)}."""
    node = node or Config
    keys, hints = {}, typing.get_type_hints(node)
    for f in dataclasses.fields(node):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys.update(numeric_keys(kind, f"{prefix}{f.name}."))
        elif any(t in (int, float) for t in typing.get_args(kind) or (kind,)):
            keys[prefix + f.name] = f.metadata, type(None) in typing.get_args(kind)
    return keys


_INTERVAL = re.compile(r"([\[(])(\S+), (\S+)([\])])")


def check_interval(key: str, value, meta, nullable: bool = False) -> None:
    """The one check of a numeric key against its field's `within` interval."""
    if "interval" not in meta or value is None:  # checked_by: the code that uses it checks it
        return
    low_end, low, high, high_end = _INTERVAL.fullmatch(meta["interval"]).groups()
    lo, hi = float(low), float(high)
    values = list(value) if meta["length"] else [value]
    inside = [(lo <= v if low_end == "[" else lo < v) and (v <= hi if high_end == "]" else v < hi)
              for v in values]  # False for NaN, whatever the interval
    if all(inside) and len(values) == (meta["length"] or 1):
        return
    words = meta["says"] or ("positive" if (low_end, low, high) == ("(", "0", "inf") else
                             "not negative" if (low_end, low, high) == ("[", "0", "inf") else
                             f"at least {low}" if low_end == "[" and high == "inf" else
                             f"above {low}" if high == "inf" else
                             f"in {meta['interval']}")
    if meta["length"]:
        reason = f"must be {meta['length']} numbers, each {words}"
    elif not math.isfinite(value):
        reason = f"must be finite and {words}"
    else:
        reason = "must not be negative" if words == "not negative" else f"must be {words}"
    if nullable:
        reason += f" (or null: {meta['null']})" if meta["null"] else " (or null)"
    raise UserError(key, value, reason)


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg) -> None:
    """Reject bad values with one line naming the key and the value, before any work: every
    numeric key against its interval (`within`), then what depends on several keys, then the
    model against the dataset. rpg.params is left to apply_rpg, the one place that knows how
    many weights a ring of that size generates (it accepts integers >= 1 and fractions in
    (0, 1))."""
    import torch

    from .models import available, is_available

    for key in sorted(OmegaConf.missing_keys(cfg) - {"out_dir"}):  # out_dir: set by the app
        raise UserError(key, "???", "must be given")
    for key, registry in choices().items():
        check_choice(key, _get(cfg, key), registry)
    if not is_available(cfg.model.name):
        raise UserError("model.name", cfg.model.name, "is not a known model; choose one of: "
                        + ", ".join(available()))
    keys = numeric_keys()  # trainer.seed first: rpg.seed follows it by default
    for key in sorted(keys, key=lambda k: k != "trainer.seed"):
        check_interval(key, _get(cfg, key), *keys[key])
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
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise UserError("optim.nesterov", True, "needs optim.momentum above 0 (it is a kind "
                        "of momentum)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.trainer.device):
        raise UserError("trainer.device", cfg.trainer.device,
                        "is not valid; use auto, cpu, cuda, cuda:N or mps")
    if cfg.trainer.device == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.device", "mps", "is not available here (this torch has no "
                        "MPS backend or no Apple GPU); use auto or cpu")
    if cfg.data.root is not None and not Path(cfg.data.root).is_dir() and not cfg.data.download:
        raise UserError("data.root", cfg.data.root,
                        "is not a directory (and data.download is false)")
    _validate_baselines(cfg)
    _validate_ring_prune(cfg.rpg)
    if cfg.logger.name == "wandb":  # a bad WANDB_MODE: on every rank, before any work
        import os

        from .log.wandb_logger import resolve_mode

        resolve_mode(cfg.logger.mode, os.environ)
    resume = cfg.trainer.resume
    if resume not in (None, "auto") and not Path(resume).is_file():
        raise UserError("trainer.resume", resume, "does not exist; give a checkpoint file "
                        "or 'auto'")
    _validate_model_fits_data(cfg)


def _validate_model_fits_data(cfg) -> None:
    """The model against the dataset's channels, classes and image size, read from the
    dataset's table (no data is loaded) and a forward pass on the meta device (models)."""
    from .data import dataset_info
    from .engine.build import model_spec
    from .models import smallest_input

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


def _validate_ring_prune(r) -> None:
    p = r.prune
    if p.amount and r.scope == "none":
        raise UserError("rpg.prune.amount", p.amount, "prunes ring entries and this model has "
                        "no ring (rpg.scope=none); a dense model is pruned with prune.init")
    if p.finetune_epochs and not p.amount:
        raise UserError("rpg.prune.finetune_epochs", p.finetune_epochs, "fine-tunes a pruned "
                        "ring: set rpg.prune.amount too")


def _validate_baselines(cfg) -> None:
    """model.width, match.* and prune.*: what the equal-DoF baselines need to be built."""
    from .models import is_available

    m, p = cfg.match, cfg.prune
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
