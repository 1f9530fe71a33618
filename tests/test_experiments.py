"""Every experiment file composes and trains one step at its real model size, on synthetic
data shaped like its dataset (small inputs, so the CPU can do it)."""
from pathlib import Path

import pytest

from rpg_train.engine import train

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf/experiment").glob("*.yaml"))
# channels and classes of each experiment's dataset
SHAPES = {"imagenet": (3, 1000), "cifar100": (3, 100), "cifar10": (3, 10), "fmnist": (1, 10)}
# the paper rows' parameter reports (the CIFAR stem changes only the stem, which is either
# unshared and small or, for the tiny row, generated)
ROWS = {"imagenet_r18_rpg": dict(ring=2359296), "imagenet_r34_rpg": dict(ring=11160576),
        "imagenet_r34_rpg_tiny": dict(ring=36000, trainable=54024),
        "imagenet_r18_dense": dict(ring=0), "imagenet_r34_dense": dict(ring=0)}


def shape_of(name):
    return next(v for k, v in SHAPES.items() if name.startswith(k))


def test_every_experiment_is_covered():
    assert {"imagenet", "imagenet_r18_rpg", "imagenet_r18_dense", "imagenet_r34_rpg",
            "imagenet_r34_rpg_tiny", "imagenet_r34_dense", "cifar10", "cifar100"} <= set(
                EXPERIMENTS)


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    """A dense ResNet-20 checkpoint for the pruning experiment to start from."""
    from tests.conftest import QUICK, _compose

    out = tmp_path_factory.mktemp("dense")
    train(_compose([*QUICK, "rpg=none", "data.in_chans=1"], out))  # finished: prunable
    return out / "last.pt"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_one_step(compose_cfg, tmp_path, name, dense_ckpt):
    chans, classes = shape_of(name)
    extra = [f"prune.init={dense_ckpt}", "prune.params=2000"] if "prune" in name else []
    cfg = compose_cfg([f"experiment={name}", "data=synthetic", f"data.in_chans={chans}",
                       f"data.num_classes={classes}", "data.image_size=32", "data.num_train=4",
                       "data.batch_size=2", "data.num_val=2", "trainer.max_steps=1",
                       "trainer.device=cpu", "trainer.amp=off", "trainer.progress=false",
                       "logger=none", *extra], out_dir=tmp_path)
    res = train(cfg)
    assert res["steps"] == 1
    for key, value in ROWS.get(name, {}).items():
        assert res["param_report"][key] == value, key
    if name.startswith("imagenet"):  # the authors' recipe, shared by every row
        assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 1e-4)
        assert cfg.optim.wd_norm and cfg.sched.name == "exp" and cfg.sched.decay_epochs == 45
        assert cfg.trainer.epochs == 90 and cfg.data.augment


def test_imagenet_rows_keep_the_recipe_on_imagenet(compose_cfg):
    for row in ROWS:
        cfg = compose_cfg([f"experiment={row}"])
        assert cfg.data.name == "imagenet" and cfg.data.batch_size == 256
        assert cfg.model.name == ("resnet18" if "r18" in row else "resnet34")
