"""Every config file composes; types are checked at compose time; values before any work."""
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import CONF, compose_cfg
from rpg_train.config import ConfigError, validate

GROUPS = sorted(p.name for p in Path(CONF).iterdir() if p.is_dir())


def test_groups_are_the_design_cards():
    assert GROUPS == ["data", "debug", "experiment", "logger", "model", "optim", "rpg",
                      "sched", "trainer"]


@pytest.mark.parametrize("group,option", [(g, f.stem) for g in GROUPS
                                          for f in sorted((Path(CONF) / g).glob("*.yaml"))])
def test_every_config_file_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    if group in ("model", "rpg", "data", "optim", "sched", "logger"):
        assert cfg[group].name if group != "rpg" else cfg.rpg.scope


def test_default_config_values():
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.rpg.scope, cfg.data.name) == ("resnet20", "network",
                                                              "fashion_mnist")
    assert cfg.rpg.params == 25000 and cfg.trainer.epochs == 5


def test_experiment_overrides_groups():
    cfg = compose_cfg(["experiment=imagenet_r34"])
    assert cfg.model.name == "resnet34" and cfg.rpg.params == 11160576
    assert cfg.sched.name == "exp" and cfg.optim.weight_decay == 1e-4 and cfg.optim.wd_norm


def test_command_line_floats_for_params():
    assert compose_cfg(["rpg.params=1e5"]).rpg.params == 100000


@pytest.mark.parametrize("override,match", [
    ("rpg.params=abc", "rpg.params"),
    ("trainer.epochs=two", "trainer.epochs"),
    ("model.nmae=resnet18", "nmae"),
])
def test_typos_and_types_fail_at_compose(override, match):
    with pytest.raises((ConfigCompositionException, ValidationError), match=match) as info:
        compose_cfg([override])
    assert info is not None


def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigCompositionException, match="resnet20"):
        compose_cfg(["model=resnet19"])


@pytest.mark.parametrize("override,message", [
    ("model.name=resnet19", "model.name='resnet19' is not a known model; choose one of: resnet18"),
    ("data.name=svhn", "data.name='svhn' is not a dataset; choose one of: fashion_mnist"),
    ("rpg.scope=global", "rpg.scope='global' is not valid; choose one of: network, stage"),
    ("rpg.sampling=hash", "rpg.sampling='hash' is not valid; choose one of: even, ring, iid"),
    ("rpg.params=0", "rpg.params=0.0 must be a positive integer"),
    ("rpg.params=2.5", "rpg.params=2.5 must be a positive integer"),
    ("optim.name=lamb", "optim.name='lamb' is not valid; choose one of: sgd, adamw"),
    ("data.root=/no/such/dir", "data.root='/no/such/dir' is not a directory"),
    ("trainer.resume=/no/such.pt", "trainer.resume='/no/such.pt' does not exist"),
])
def test_validate_names_key_and_value(override, message):
    extra = ["data.download=false"] if override.startswith("data.root") else []
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg([override, *extra]))
    assert message in str(info.value) and "\n" not in str(info.value)
