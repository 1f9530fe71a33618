"""The config schema (dataclasses in Hydra's ConfigStore, so every key's type is checked when
the config is composed), each numeric field's interval beside it, and the checks the values
alone decide. The bottom layer: it imports nothing of the package but `errors`; the checks
against the registries, the machine and the files are in `validation`, which runs these too.

The schema holds every default; the YAML files in conf/ only change what their option selects.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, OmegaConf

from .errors import UserError

ConfigError = UserError  # the old name: a bad config value is a user error like any other


# torch.manual_seed takes [-2**63, 2**64)
SEED_RANGE, SEED_SAYS = "[-9223372036854775808, 18446744073709551616)", "a seed torch takes"


def within(default, interval: str, *, says: str = "", null: str = "", length: int = 0):
    """A numeric field and the interval its values must lie in, "[0, 1)", "(0, inf)", ...,
    checked by `check_numbers` for every such field (each entry of a list; NaN lies in none).
    `says` words the message instead of the interval; `null` says what a null value means;
    `length` is a list's."""
    meta = dict(interval=interval, says=says, null=null, length=length)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = "resnet20"  # a key of models.MODELS, or timm:<name>
    num_classes: int | None = within(None, "[1, inf)")  # null: from the dataset
    in_chans: int | None = within(None, "[1, inf)")  # null: from the dataset
    small_input: bool | None = None  # null: from the dataset (CIFAR stem for small images)
    # channel multiplier (torchvision and CIFAR ResNets): the width baseline
    width: float = within(1.0, "(0, inf)", says="a positive multiplier")
    kwargs: dict[str, Any] = field(default_factory=dict)  # more create_model arguments


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
    lr: float | None = within(None, "(0, inf)", null="optim.lr / 10")


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
    width: float | None = within(None, "(0, inf)", says="a positive multiplier")
    model: str | None = None


@dataclass
class PruneConfig:
    """The pruning baseline: a trained dense checkpoint, globally magnitude-pruned over the
    weights RPG would generate, then fine-tuned for trainer.epochs (needs rpg=none)."""
    init: str | None = None  # the trained dense model's checkpoint; null = no pruning
    # non-zero weights kept (int or fraction); or match.width
    params: float | None = field(default=None, metadata=dict(checked_by="prune_to"))


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # data.DATASETS
    root: str | None = None  # null: ./data/<name>
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
    auto_augment: str | None = None
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
    lr_batch: int | None = within(256, "[1, inf)")
    momentum: float = within(0.9, "[0, 1)")  # SGD's (AdamW's is betas[0])
    nesterov: bool = False  # SGD's
    betas: list[float] = within([0.9, 0.999], "[0, 1)", length=2)  # AdamW's
    weight_decay: float = within(5e-4, "[0, inf)")  # rings included, on purpose
    wd_norm: bool = False  # also decay norm parameters and biases
    # timm's rule: no decay for 1-D and no_weight_decay() parameters (rings keep theirs)
    no_wd_1d: bool = False


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
    resume: str | None = None  # auto (last.pt in the run directory) | PATH
    # a fresh run may replace an earlier run's records in its directory
    overwrite: bool = False
    progress: bool = True  # tqdm bars (training and evaluation), when the output is a terminal
    # without a bar (no terminal: SLURM, nohup; or progress=false): a line every this many
    # seconds saying epoch, batch, loss, img/s and the time left; 0 = none
    log_every_s: float = within(60.0, "[0, inf)")
    accumulate: int = within(1, "[1, inf)")  # micro-batches per optimizer step
    sync_bn: bool = False  # BatchNorm statistics over all processes (CUDA only)
    # an EMA of the weights (timm's ModelEmaV3), also evaluated
    ema_decay: float | None = within(None, "(0, 1)")
    # faults: a recovery last.pt every N minutes mid-epoch (0 = at epoch ends only); a
    # collective that waits this long for a lost rank fails instead of hanging
    checkpoint_every_min: float = within(30.0, "[0, inf)")
    dist_timeout_s: float = within(600.0, "(0, inf)")
    # divergence: a non-finite loss, one above max_loss (null = no bound), or one above
    # max_loss_factor x the starting loss (the first step's, at least ln(classes); null = no
    # bound) stops the run (stop) or skips its step (skip, a host sync per step); stop reads
    # the loss every nan_check_every steps and before every checkpoint
    nan_policy: str = "stop"
    max_loss: float | None = within(None, "(0, inf)")
    max_loss_factor: float | None = within(100.0, "(1, inf)", null="no bound")
    nan_check_every: int = within(50, "[1, inf)")


@dataclass
class LoggerConfig:
    """W&B. A key set here wins; a key left at its default (null, auto, []) yields to W&B's
    own environment variable, then to the default named (conf/logger/wandb.yaml)."""
    name: str = "none"  # log.LOGGERS: none | wandb
    project: str | None = None  # null: $WANDB_PROJECT, else rpg-train
    entity: str | None = None  # null: $WANDB_ENTITY, else your W&B default
    # auto: $WANDB_MODE, else online with credentials, else offline | online | offline | disabled
    mode: str = "auto"
    group: str | None = None  # null: $WANDB_RUN_GROUP, else the multirun's sweep directory
    run_name: str | None = None  # null: $WANDB_NAME, else <method>-<model>-<trainable>-s<seed>
    tags: list[str] = field(default_factory=list)  # []: $WANDB_TAGS; method, model, data added


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
    match = _INTERVAL.fullmatch(meta["interval"])
    assert match is not None, meta["interval"]  # the schema's `within` literals have this shape
    low_end, low, high, high_end = match.groups()
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


def value_of(cfg, key: str):
    """The value at a dotted key: value_of(cfg, "optim.lr")."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


# The checks the values alone decide, run by validation.validate in its order among the
# checks that need the registries, the machine or the files.

def check_given(cfg) -> None:
    for key in sorted(OmegaConf.missing_keys(cfg) - {"out_dir"}):  # out_dir: set by the app
        raise UserError(key, "???", "must be given")


def check_numbers(cfg) -> None:
    """Every numeric key against its field's interval (`within`), trainer.seed first: rpg.seed
    follows it by default. rpg.params is left to apply_rpg, the one place that knows how
    many weights a ring of that size generates (it accepts integers >= 1 and fractions in
    (0, 1))."""
    keys = numeric_keys()
    for key in sorted(keys, key=lambda k: k != "trainer.seed"):
        check_interval(key, value_of(cfg, key), *keys[key])


def check_augment(cfg) -> None:
    for key in ("data.auto_augment", "data.re_prob"):
        if value_of(cfg, key) and cfg.data.name != "imagenet":
            raise UserError(key, value_of(cfg, key), "is for data=imagenet only (the in-memory "
                            "datasets augment on the device: data.augment)")
        if value_of(cfg, key) and not cfg.data.augment:
            raise UserError(key, value_of(cfg, key), "needs data.augment=true")


def check_combinations(cfg) -> None:
    if (cfg.data.mixup or cfg.data.cutmix) and cfg.data.batch_size % 2:
        raise UserError("data.batch_size", cfg.data.batch_size, "must be even with "
                        "data.mixup or data.cutmix (timm's Mixup pairs the batch with itself)")
    if cfg.optim.nesterov and cfg.optim.name != "sgd":
        betas = "; AdamW's momentum is optim.betas" if cfg.optim.name == "adamw" else ""
        raise UserError("optim.nesterov", True, f"is for optim=sgd only (optim.name="
                        f"{cfg.optim.name}{betas})")
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise UserError("optim.nesterov", True, "needs optim.momentum above 0 (it is a kind "
                        "of momentum)")


def check_baselines(cfg) -> None:
    """match.* and prune.*: what the equal-DoF baselines need to be built (match.model's
    name is checked against the models before this)."""
    m, p = cfg.match, cfg.prune
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


def check_ring_prune(cfg) -> None:
    p = cfg.rpg.prune
    if p.amount and cfg.rpg.scope == "none":
        raise UserError("rpg.prune.amount", p.amount, "prunes ring entries and this model has "
                        "no ring (rpg.scope=none); a dense model is pruned with prune.init")
    if p.finetune_epochs and not p.amount:
        raise UserError("rpg.prune.finetune_epochs", p.finetune_epochs, "fine-tunes a pruned "
                        "ring: set rpg.prune.amount too")
