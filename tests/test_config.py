"""Every config file composes; types are checked at compose time; values before any work;
defaults live in the schema, choices in the registries."""
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from rpg_train.config import Config, ConfigError, check_interval, numeric_keys, within
from rpg_train.data import DATASETS
from rpg_train.engine.amp import AMP, amp_dtype
from rpg_train.engine.build import build_model
from rpg_train.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_schedule
from rpg_train.errors import UserError
from rpg_train.models import create_model, smallest_input
from rpg_train.rpg import SAMPLINGS, SCOPES, param_report
from rpg_train.validation import choices, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
# conf/hydra holds Hydra's own options (the SLURM launcher), not the run's
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def test_groups_are_the_design_cards():
    assert GROUPS == ["data", "debug", "experiment", "logger", "model", "optim", "rpg",
                      "sched", "trainer"]


@pytest.mark.parametrize("group,option", [(g, f.stem) for g in GROUPS
                                          for f in sorted((CONF / g).glob("*.yaml"))])
def test_every_config_file_composes(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    if group in ("model", "rpg", "data", "optim", "sched", "logger"):
        assert cfg[group].name if group != "rpg" else cfg.rpg.scope


def test_default_config_values(compose_cfg):
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.rpg.scope, cfg.data.name) == ("resnet20", "network",
                                                              "fashion_mnist")
    assert cfg.rpg.params == 25000 and cfg.trainer.epochs == 5


# the default run as it was before the defaults moved into the schema: RPG ResNet-20 on
# Fashion-MNIST, one ring of 25000, 5 epochs of SGD with 1 warmup epoch of cosine
DEFAULT_RUN = {
    "model": dict(name="resnet20", num_classes=None, in_chans=None, small_input=None,
                  width=1.0, kwargs={}),
    "rpg": dict(scope="network", params=25000, seed=0, sampling="even", sign=True,
                offset=False, k=1, share_stem=False, share_head=False,
                prune=dict(amount=0.0, finetune_epochs=0, lr=None)),
    "data": dict(name="fashion_mnist", root=None, batch_size=128, eval_batch_size=512,
                 num_workers=8, download=True, augment=False, val_split=0, auto_augment=None,
                 re_prob=0.0, mixup=0.0, cutmix=0.0, num_train=512, num_val=256,
                 in_chans=3, image_size=32, num_classes=10),
    "optim": dict(name="sgd", lr=0.2, lr_batch=256, momentum=0.9, nesterov=False,
                  betas=[0.9, 0.999], weight_decay=5e-4, wd_norm=False, no_wd_1d=False),
    "sched": dict(name="cosine", warmup_epochs=1, warmup_start=0.1, min_lr=0.0, step_size=30,
                  gamma=0.1, decay_epochs=45),
    "trainer": dict(epochs=5, seed=0, device="auto", amp="auto", channels_last=True,
                    compile=False, grad_clip=0.0, label_smoothing=0.0, max_steps=0,
                    limit_batches=0, resume=None, overwrite=False, progress=True,
                    accumulate=1, sync_bn=False, ema_decay=None,
                    checkpoint_every_min=30.0,
                    dist_timeout_s=600.0, nan_policy="stop", max_loss=None,
                    max_loss_factor=100.0, nan_check_every=50, log_every_s=60.0),
    "logger": dict(name="none", project=None, entity=None, mode="auto", group=None,
                   run_name=None, tags=[]),
    # the equal-DoF baselines, off by default
    "match": dict(width=None, model=None),
    "prune": dict(init=None, params=None),
}


def test_the_default_run_is_unchanged(compose_cfg):
    # resolved: rpg.seed is ${trainer.seed}, 0 by default as it was before
    cfg = OmegaConf.to_container(compose_cfg(), resolve=True)
    assert {k: v for k, v in cfg.items() if k != "out_dir"} == DEFAULT_RUN


@pytest.mark.parametrize("overrides,seed", [([], 0), (["trainer.seed=3"], 3),
                                            (["trainer.seed=3", "rpg.seed=7"], 7),
                                            (["rpg.seed=7"], 7)])
def test_the_tables_seed_follows_the_run_seed_unless_given(compose_cfg, overrides, seed):
    cfg = compose_cfg(overrides)
    assert cfg.rpg.seed == seed and type(cfg.rpg.seed) is int
    model, _, _ = build_model(cfg, INFO)
    assert model.rpg_spec["seed"] == seed


def test_trainer_gpu_is_a_hardware_profile_and_experiments_set_epochs(compose_cfg):
    gpu = compose_cfg(["trainer=gpu"]).trainer
    assert (gpu.device, gpu.amp, gpu.channels_last, gpu.epochs) == ("cuda", "bf16", True, 5)
    for name in ("imagenet_r18_rpg", "imagenet_r34_rpg", "imagenet_r34_dense"):
        t = compose_cfg([f"experiment={name}"]).trainer
        assert (t.epochs, t.device, t.amp) == (90, "cuda", "bf16"), name
    assert compose_cfg(["experiment=cifar10_r20"]).trainer.epochs == 100


def _schema_default(group: str, key: str):
    return getattr(getattr(Config(), group), key)


@pytest.mark.parametrize("path", sorted(p for g in ("data", "logger", "model", "optim", "rpg",
                                                    "sched", "trainer")
                                        for p in (CONF / g).glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_option_files_change_only_what_they_select(path):
    """Defaults live in the schema: an option file sets a key only to a value other than the
    schema's (its selecting name/scope aside)."""
    group, options = path.parent.name, OmegaConf.to_container(OmegaConf.load(path)) or {}
    restated = [k for k, v in options.items() if k not in ("name", "scope")
                and v == _schema_default(group, k)]
    assert restated == []


def test_experiment_overrides_groups(compose_cfg):
    cfg = compose_cfg(["experiment=imagenet_r34_rpg"])
    assert cfg.model.name == "resnet34" and cfg.rpg.params == 11160576
    assert cfg.sched.name == "exp" and cfg.optim.weight_decay == 1e-4 and cfg.optim.wd_norm


def test_command_line_floats_for_params(compose_cfg):
    assert compose_cfg(["rpg.params=1e5"]).rpg.params == 100000


@pytest.mark.parametrize("override,match", [
    ("rpg.params=abc", "rpg.params"),
    ("trainer.epochs=two", "trainer.epochs"),
    ("model.nmae=resnet18", "nmae"),
])
def test_typos_and_types_fail_at_compose(compose_cfg, override, match):
    with pytest.raises((ConfigCompositionException, ValidationError), match=match) as info:
        compose_cfg([override])
    assert info is not None


def test_unknown_group_option_lists_choices(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="resnet20"):
        compose_cfg(["model=resnet19"])


@pytest.mark.parametrize("override,message", [
    ("model.name=resnet19", "model.name='resnet19' is not a known model; choose one of: resnet18"),
    ("data.name=svhn", "data.name='svhn' is not valid; choose one of: fashion_mnist, mnist, "
                       "cifar10, cifar100, imagenet, synthetic"),
    ("rpg.scope=global", "rpg.scope='global' is not valid; choose one of: network, stage"),
    ("rpg.sampling=hash", "rpg.sampling='hash' is not valid; choose one of: even, ring, iid, "
                          "plain"),
    ("rpg.k=0", "rpg.k=0 must be at least 1"),
    ("optim.name=lamb", "optim.name='lamb' is not valid; choose one of: sgd, adamw"),
    ("sched.name=poly", "sched.name='poly' is not valid; choose one of: cosine, step, exp, "
                        "constant"),
    ("trainer.amp=fp8", "trainer.amp='fp8' is not valid; choose one of: auto, off, bf16, fp16"),
    ("data.root=/no/such/dir", "data.root='/no/such/dir' is not a directory"),
    ("trainer.resume=/no/such.pt", "trainer.resume='/no/such.pt' does not exist"),
])
def test_validate_names_key_and_value(compose_cfg, override, message):
    extra = ["data.download=false"] if override.startswith("data.root") else []
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg([override, *extra]))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert info.value.key == override.split("=")[0]


def test_config_error_is_the_user_error():
    assert ConfigError is UserError and issubclass(UserError, ValueError)


def test_validate_reads_the_registries():
    """One registry per kind of choice: what validate accepts is what the code builds."""
    c = choices()
    assert c["rpg.scope"] is SCOPES and c["rpg.sampling"] is SAMPLINGS
    assert c["data.name"] is DATASETS and c["trainer.amp"] is AMP
    assert c["optim.name"] is OPTIMIZERS and c["sched.name"] is SCHEDULES


def test_builders_refuse_unknown_names_instead_of_a_default():
    model = create_model("resnet20", 10)
    cfg = OmegaConf.structured(Config).optim
    cfg.name = "lamb"
    with pytest.raises(UserError, match=r"^optim.name='lamb' is not valid; choose one of: "
                                        r"sgd, adamw$"):
        build_optimizer(cfg, model)
    kw = dict(epochs=5, warmup_epochs=0, warmup_start=0.1, min_ratio=0.0, step_size=30,
              gamma=0.1, decay_epochs=45)
    with pytest.raises(UserError, match=r"^sched.name='poly' is not valid; choose one of: "
                                        r"cosine, step, exp, constant$"):
        lr_schedule(name="poly", **kw)  # when the schedule is made, not at its first step
    with pytest.raises(UserError, match=r"^trainer.amp='fp8' is not valid"):
        amp_dtype("fp8", torch.device("cpu"))
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16


INFO = dict(num_classes=10, in_chans=1, small_input=True)


@pytest.mark.parametrize("params", [0, 2.5])
def test_rpg_params_is_decided_by_apply_rpg_alone(compose_cfg, params):
    """validate leaves rpg.params to apply_rpg (one place decides); its error is re-keyed."""
    cfg = compose_cfg([f"rpg.params={params}"])
    validate(cfg)
    with pytest.raises(UserError) as info:
        build_model(cfg, INFO)
    assert info.value.key == "rpg.params" and info.value.value == params
    assert str(info.value).startswith(f"rpg.params={params!r} ") and "\n" not in str(info.value)


def test_rpg_params_fraction_is_a_share_of_the_generated_weights(compose_cfg):
    cfg = compose_cfg(["rpg.params=0.05"])
    validate(cfg)
    model, _, _ = build_model(cfg, INFO)
    assert model.rpg_spec["params"] == round(0.05 * 267264)  # ResNet-20 generates 267264


def test_rpg_params_may_be_the_generated_count_and_not_the_fraction_one(compose_cfg):
    """ResNet-20 at width 0.25 generates 16704 weights: a ring of 16704 is T/N = 1; 1.0 is
    refused with the count to give instead (Hydra reads `rpg.params=1` as 1.0 too)."""
    model, _, _ = build_model(compose_cfg(["model.width=0.25", "rpg.params=16704"]), INFO)
    assert model.rpg_spec["params"] == 16704 == param_report(model)["generated"]
    for given in ("1", "1.0"):
        with pytest.raises(UserError) as info:
            build_model(compose_cfg(["model.width=0.25", f"rpg.params={given}"]), INFO)
        assert str(info.value) == ("rpg.params=1.0 is ambiguous (a fraction is in (0, 1)); "
                                   "give the exact count 16704 for a ring as large as the layers")


@pytest.mark.parametrize("override,message", [
    ("+model.kwargs.nope=1", "model.kwargs={'nope': 1} do not fit resnet20: "),
    ("+model.kwargs.norm=layer", "model.kwargs.norm='layer' is not one of: batch, group"),
    ("+model.kwargs.shortcut=C", "model.kwargs.shortcut='C' is not one of: A, B"),
    ("model.name=timm:no_such_net", "model.name='timm:no_such_net' is not a timm model"),
])
def test_model_errors_are_keyed_under_model(compose_cfg, override, message):
    with pytest.raises(UserError) as info:
        build_model(compose_cfg([override]), INFO)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# ---------------------------------------------------------------- every value, checked first
# NaN passes every `x < 0` test: each numeric key is checked against the interval declared
# next to its field (config.within), finite values only


def test_every_numeric_key_declares_its_interval():
    """A new int or float key without `within` (or a named checker) fails here."""
    undeclared = [k for k, (meta, _) in numeric_keys().items()
                  if "interval" not in meta and "checked_by" not in meta]
    assert undeclared == []
    assert {k for k, (meta, _) in numeric_keys().items() if "checked_by" in meta} == {
        "rpg.params", "prune.params"}  # apply_rpg and prune_to read them (ring_size)
    assert {"optim.lr", "optim.betas", "rpg.prune.lr", "trainer.seed"} <= set(numeric_keys())


@pytest.mark.parametrize("override,message", [
    ("optim.lr=nan", "optim.lr=nan must be finite and positive"),
    ("optim.lr=inf", "optim.lr=inf must be finite and positive"),
    ("optim.momentum=-1", "optim.momentum=-1.0 must be in [0, 1)"),
    ("optim.momentum=1.5", "optim.momentum=1.5 must be in [0, 1)"),
    ("optim.momentum=nan", "optim.momentum=nan must be finite and in [0, 1)"),
    ("optim.betas=[0.9,1.0]", "optim.betas=[0.9, 1.0] must be 2 numbers, each in [0, 1)"),
    ("optim.betas=[-0.1,0.9]", "optim.betas=[-0.1, 0.9] must be 2 numbers, each in [0, 1)"),
    ("optim.betas=[0.9,nan]", "optim.betas=[0.9, nan] must be 2 numbers, each in [0, 1)"),
    ("optim.betas=[0.9]", "optim.betas=[0.9] must be 2 numbers, each in [0, 1)"),
    ("data.mixup=nan", "data.mixup=nan must be finite and not negative"),
    ("trainer.dist_timeout_s=nan", "trainer.dist_timeout_s=nan must be finite and positive"),
    ("trainer.grad_clip=nan", "trainer.grad_clip=nan must be finite and not negative"),
    ("trainer.checkpoint_every_min=nan",
     "trainer.checkpoint_every_min=nan must be finite and not negative"),
    ("sched.gamma=-0.1", "sched.gamma=-0.1 must be positive"),
    ("sched.gamma=nan", "sched.gamma=nan must be finite and positive"),
    ("sched.warmup_start=-0.1", "sched.warmup_start=-0.1 must be in [0, 1]"),
    ("sched.warmup_start=nan", "sched.warmup_start=nan must be finite and in [0, 1]"),
    ("trainer.ema_decay=nan", "trainer.ema_decay=nan must be finite and in (0, 1) (or null)"),
    ("trainer.label_smoothing=nan", "trainer.label_smoothing=nan must be finite and in [0, 1)"),
    ("model.width=nan", "model.width=nan must be finite and a positive multiplier"),
    ("rpg.prune.lr=nan", "rpg.prune.lr=nan must be finite and positive (or null: optim.lr / 10)"),
    ("model.num_classes=0", "model.num_classes=0 must be at least 1 (or null)"),
    ("data.image_size=0", "data.image_size=0 must be at least 1"),
    ("data.in_chans=0", "data.in_chans=0 must be at least 1"),
    ("data.num_classes=0", "data.num_classes=0 must be at least 1"),
])
def test_numeric_values_are_finite_and_in_range(compose_cfg, override, message):
    data = ["data=synthetic"] if override.startswith("data.") else []
    with pytest.raises(UserError) as info:
        validate(compose_cfg([*data, override, "optim=adamw"]))
    assert str(info.value) == message and info.value.key == override.split("=")[0]


@pytest.mark.parametrize("overrides,message", [
    (["optim.nesterov=true", "optim.momentum=0"],
     "optim.nesterov=True needs optim.momentum above 0 (it is a kind of momentum)"),
    (["optim=adamw", "optim.nesterov=true"], "optim.nesterov=True is for optim=sgd only "
                                             "(optim.name=adamw; AdamW's momentum is optim.betas)"),
    (["trainer.device=mps"], "trainer.device='mps' is not available here (this torch has no "
                             "MPS backend or no Apple GPU); use auto or cpu"),
    (["model.num_classes=9"], "model.num_classes=9 is below the 10 classes of "
                              "data.name=fashion_mnist (null: the dataset's)"),
    (["data=synthetic", "data.num_classes=7", "model.num_classes=5"],
     "model.num_classes=5 is below the 7 classes of data.name=synthetic (null: the dataset's)"),
    (["model.in_chans=3"], "model.in_chans=3 does not match the 1 image channel(s) of "
                           "data.name=fashion_mnist (null: the dataset's)"),
    (["data=cifar100", "model.num_classes=10"], "model.num_classes=10 is below the 100 "
                                                "classes of data.name=cifar100"),
])
def test_settings_that_contradict_each_other_or_the_data(compose_cfg, overrides, message):
    if "trainer.device=mps" in overrides and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(UserError) as info:
        validate(compose_cfg(overrides))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_more_classes_than_the_data_and_the_data_s_own_channels_are_fine(compose_cfg):
    validate(compose_cfg(["model.num_classes=12", "model.in_chans=1"]))
    validate(compose_cfg(["data=synthetic", "data.in_chans=2", "data.image_size=3",
                          "model.in_chans=2"]))


@pytest.mark.parametrize("data,size", [([], 28), (["data=synthetic", "data.image_size=20"], 20)])
def test_a_backbone_too_large_for_the_images_names_the_smallest_size(compose_cfg, data, size):
    """ConvNeXt's stem and three stride-2 stages need 32 px: on 28 px Fashion-MNIST it would
    fail inside its forward."""
    cfg = compose_cfg(["model=timm", "model.name=timm:convnext_atto", *data])
    with pytest.raises(UserError) as info:
        validate(cfg)
    name = cfg.data.name
    assert str(info.value) == (f"model.name='timm:convnext_atto' cannot take the {size} px "
                               f"images of data.name={name}: the smallest size it takes is 32 "
                               "px; choose another model or larger images")
    validate(compose_cfg(["model=timm", "model.name=timm:convnext_atto", "data=synthetic",
                          "data.image_size=32"]))
    model = create_model("timm:convnext_atto", 10, 1)
    with pytest.raises(RuntimeError):  # what the check spares the user
        model(torch.zeros(1, 1, 31, 31))
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_a_vit_is_refused_at_any_size_but_its_own(compose_cfg):
    with pytest.raises(UserError, match=r"the smallest size it takes is 224 px"):
        validate(compose_cfg(["model=timm", "model.name=timm:vit_tiny_patch16_224"]))


def test_smallest_input_searches_only_when_the_size_fails():
    spec = dict(name="resnet20", num_classes=10, in_chans=1, small_input=True)
    assert smallest_input(spec, 1) is None  # global pooling takes any size
    assert smallest_input(dict(spec, name="timm:convnext_atto"), 28) == 32
    assert smallest_input(dict(spec, name="timm:convnext_atto"), 5) == 32


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_the_keys_checked_where_they_are_used_refuse_nan_and_inf(compose_cfg, value):
    """rpg.params and prune.params are left to ring_size (numeric_keys' checked_by)."""
    from rpg_train.engine.dense_pruning import prune_to

    cfg = compose_cfg([f"rpg.params={value}"])
    validate(cfg)
    reason = r"is neither an integer nor a fraction in \(0, 1\)$"
    with pytest.raises(UserError, match=rf"^rpg.params={value} {reason}"):
        build_model(cfg, INFO)
    with pytest.raises(UserError, match=rf"^prune.params={value} {reason}"):
        prune_to(create_model("resnet20", 10, 1, True), float(value))


@pytest.mark.parametrize("interval,words", [
    ("(0, inf)", "must be positive"), ("[0, inf)", "must not be negative"),
    ("[2, inf)", "must be at least 2"), ("(1, inf)", "must be above 1"),
    ("[0, 1)", "must be in [0, 1)"),
])
def test_an_interval_reads_as_words(interval, words):
    meta = within(None, interval, null="no bound").metadata
    with pytest.raises(UserError) as info:
        check_interval("trainer.k", -5.0, meta, nullable=True)
    assert str(info.value) == f"trainer.k=-5.0 {words} (or null: no bound)"
    check_interval("trainer.k", None, meta, nullable=True)


@pytest.mark.parametrize("override, key", [
    ("trainer.seed=18446744073709551616", "trainer.seed"),  # 2**64: torch refuses it
    ("rpg.seed=-9223372036854775809", "rpg.seed"),  # -2**63 - 1
])
def test_seeds_are_in_torchs_range(compose_cfg, override, key):
    with pytest.raises(UserError, match=rf"^{key}=-?\d+ must be a seed torch takes"):
        validate(compose_cfg([override], out_dir="/tmp/unused"))


def test_a_bad_wandb_mode_is_refused_before_any_work(compose_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    cfg = compose_cfg(["logger=wandb"], out_dir="/tmp/unused")
    with pytest.raises(UserError, match=r"^WANDB_MODE='sometimes' is not a W&B mode"):
        validate(cfg)
    validate(compose_cfg([], out_dir="/tmp/unused"))  # without W&B the variable is not read
