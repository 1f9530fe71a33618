"""Shared fixtures: the app's config composed without the command line."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from rpg_train.config import register

CONF = str(Path(__file__).resolve().parents[1] / "conf")
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
register()

# a two-step run on random tensors: what most engine tests start from
QUICK = ["data=synthetic", "data.num_train=64", "data.num_val=32", "data.batch_size=16",
         "data.image_size=16", "trainer.epochs=1", "trainer.progress=false",
         "trainer.device=cpu", "rpg.params=2000"]


def _compose(overrides=(), out_dir=None):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    if out_dir is not None:
        cfg.out_dir = str(out_dir)
    return cfg


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides, out_dir=None): the config `python -m rpg_train <overrides>`
    would run with."""
    return _compose


@pytest.fixture
def quick_cfg(tmp_path):
    """quick_cfg(*overrides, out="run"): QUICK plus overrides, writing to tmp_path/out."""
    def make(*overrides, out="run"):
        return _compose([*QUICK, *overrides], out_dir=tmp_path / out)
    return make


def stage_rings_resnet20(params=20000):
    """A seeded RPG ResNet-20 (32 px stem) with one ring per stage: the quantization and
    pruning tests' model."""
    import torch

    from rpg_train.models import create_model
    from rpg_train.rpg import apply_rpg

    torch.manual_seed(0)
    return apply_rpg(create_model("resnet20", 10, small_input=True), "stage", params, seed=0)


def free_port() -> int:
    """A TCP port nobody listens on now, for a process group of spawned test processes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_script(name: str):
    """scripts/<name>.py as a module: scripts/ is no package, so it is loaded by path."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{name}_under_test", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped, not deselected, where no CUDA device is visible: the
    fast suite is unchanged on a CPU machine and `pytest -m cuda` reports skips (exit 0)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
