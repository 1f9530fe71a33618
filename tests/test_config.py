"""Every config file composes; types are checked at compose time; values before any work;
defaults live in the schema, choices in the registries."""
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from rpg_train.config import Config, ConfigError, choices, validate
from rpg_train.data import DATASETS
from rpg_train.engine.amp import AMP, amp_dtype
from rpg_train.engine.build import build_model
from rpg_train.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_factor
from rpg_train.errors import UserError
from rpg_train.models import create_model
from rpg_train.rpg import SAMPLINGS, SCOPES

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
                share_stem=False, share_head=False,
                prune=dict(amount=0.0, finetune_epochs=0, lr=None)),
    "data": dict(name="fashion_mnist", root=None, batch_size=128, eval_batch_size=512,
                 num_workers=8, download=True, augment=False, val_split=0, auto_augment=None,
                 re_prob=0.0, mixup=0.0, cutmix=0.0, num_train=512, num_val=256,
                 in_chans=3, image_size=32, num_classes=10),
    "optim": dict(name="sgd", lr=0.2, lr_batch=256, momentum=0.9, nesterov=False, betas=[0.9, 0.999],
                  weight_decay=5e-4, wd_norm=False, no_wd_1d=False),
    "sched": dict(name="cosine", warmup_epochs=1, warmup_start=0.1, min_lr=0.0, step_size=30,
                  gamma=0.1, decay_epochs=45),
    "trainer": dict(epochs=5, seed=0, device="auto", amp="auto", channels_last=True,
                    compile=False, grad_clip=0.0, label_smoothing=0.0, max_steps=0,
                    limit_batches=0, resume=None, overwrite=False, progress=True, accumulate=1, sync_bn=False, ema_decay=None,
                    checkpoint_every_min=30.0,
                    dist_timeout_s=600.0, nan_policy="stop", max_loss=None, max_loss_factor=100.0,
                    nan_check_every=50),
    "logger": dict(name="none", project="rpg-train", entity=None, mode="auto", group=None,
                   run_name=None, tags=[]),
    # the equal-DoF baselines, off by default
    "match": dict(width=None, model=None),
    "prune": dict(init=None, params=None),
}


def test_the_default_run_is_unchanged(compose_cfg):
    cfg = OmegaConf.to_container(compose_cfg())
    assert {k: v for k, v in cfg.items() if k != "out_dir"} == DEFAULT_RUN


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
    ("rpg.sampling=hash", "rpg.sampling='hash' is not valid; choose one of: even, ring, iid"),
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
        lr_factor(3.0, name="poly", **kw)
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
