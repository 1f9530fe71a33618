"""The modern recipe's parts, taken from timm: weight-decay rules that keep the ring's decay,
an EMA of the weights, mixup/cutmix, and ImageNet's auto-augment policies and random
erasing, all seeded so that batches and resumes stay exact."""
import os
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as fx  # noqa: E402
from rpg_train.config import DataConfig  # noqa: E402
from rpg_train.data import build_loaders  # noqa: E402
from rpg_train.engine import train  # noqa: E402
from rpg_train.engine.optim import param_groups  # noqa: E402
from rpg_train.errors import UserError  # noqa: E402
from rpg_train.rpg import apply_rpg  # noqa: E402
from rpg_train.validation import validate  # noqa: E402


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)  # the stem: not generated
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)  # generated from the ring
        self.scale = nn.Parameter(torch.ones(8))  # 1-D, not a norm: a layer scale
        self.pos = nn.Parameter(torch.zeros(4, 8))  # 2-D, named by no_weight_decay()
        self.fc = nn.Linear(8, 2)

    def no_weight_decay(self):
        return {"pos"}


def _names(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["group"]: sorted(names[id(p)] for p in g["params"]) for g in groups}


@pytest.mark.filterwarnings("ignore:apply_rpg")  # pos cannot be generated: it says so
def test_timms_weight_decay_rule_keeps_the_rings_decay():
    model = apply_rpg(_Net(), "network", 100)
    ours = _names(model, param_groups(model, 1e-4, wd_norm=False))
    timms = _names(model, param_groups(model, 1e-4, wd_norm=False, no_wd_1d=True))
    ring = [n for n, _ in model.named_parameters() if "ring" in n]
    assert ring and ours["ring"] == timms["ring"] == ring
    assert ours["decay"] == ["conv.weight", "fc.weight", "pos", "scale"]
    assert ours["no_decay"] == ["fc.bias"]
    assert timms["decay"] == ["conv.weight", "fc.weight"]
    assert timms["no_decay"] == ["fc.bias", "pos", "scale"]


def test_ema_of_the_weights_is_saved_and_reported(quick_cfg, tmp_path):
    # timm's first update copies the weights; the second mixes: ema = d * r1 + (1 - d) * r2
    train(quick_cfg("trainer.ema_decay=0.75", "trainer.limit_batches=1", out="one"))
    res = train(quick_cfg("trainer.ema_decay=0.75", "trainer.limit_batches=2"))
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    rings = [k for k in two["model"] if "ring" in k]
    assert rings and all(torch.equal(one["ema"][k], one["model"][k]) for k in rings)
    for k in rings:
        assert torch.allclose(two["ema"][k], 0.75 * one["model"][k] + 0.25 * two["model"][k],
                              atol=1e-6)
        assert not torch.equal(two["ema"][k], two["model"][k])
    assert 0 <= res["ema_final_top1"] <= 100 and "ema_final_top5" in res
    train(quick_cfg("trainer.limit_batches=1", out="plain"))
    with pytest.raises(UserError, match="holds no EMA of the weights"):
        train(quick_cfg("trainer.ema_decay=0.75", "trainer.limit_batches=1",
                        f"trainer.resume={tmp_path / 'plain' / 'last.pt'}", out="again"))


def test_mixup_and_cutmix_train_deterministically(quick_cfg):
    a = train(quick_cfg("data.mixup=0.8", "data.cutmix=1.0", out="a"))
    b = train(quick_cfg("data.mixup=0.8", "data.cutmix=1.0", out="b"))
    plain = train(quick_cfg(out="plain"))
    assert a["final_top1"] == b["final_top1"] and a["steps"] == plain["steps"]
    rows = [open(p).read() for p in (a["out_dir"] + "/metrics.jsonl",
                                     plain["out_dir"] + "/metrics.jsonl")]
    assert rows[0].split('"train_loss": ')[1][:8] != rows[1].split('"train_loss": ')[1][:8]


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=15", "data.batch_size=15 must be even with data.mixup or data.cutmix"),
    ("data.auto_augment=trivial", "data.auto_augment='trivial' is for data=imagenet only"),
    ("data.re_prob=0.25", "data.re_prob=0.25 is for data=imagenet only"),
    ("trainer.ema_decay=1.5", "trainer.ema_decay=1.5 must be in (0, 1)"),
])
def test_recipe_settings_are_checked_first(compose_cfg, override, message):
    with pytest.raises(UserError) as err:
        validate(compose_cfg(["data.mixup=0.2", override]))
    assert message in str(err.value)


def _inet(root, **kw):
    base = dict(name="imagenet", root=str(root), batch_size=2, eval_batch_size=4,
                num_workers=0, augment=True, val_split=0)
    return DataConfig(**(base | kw))


def test_auto_augment_is_seeded_per_sample_whatever_the_workers(tmp_path):
    fx.write_imagenet(tmp_path, ["a", "b"], 3)
    random.seed(1), np.random.seed(1)
    before = random.random(), np.random.rand()
    random.seed(1), np.random.seed(1)
    cfg = _inet(tmp_path, auto_augment="rand-m9-mstd0.5-inc1")
    plain, _ = build_loaders(_inet(tmp_path), "cpu", seed=3)
    aug, _ = build_loaders(cfg, "cpu", seed=3)
    one = list(aug)
    assert (random.random(), np.random.rand()) == before  # the caller's RNGs untouched
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(one, list(plain)))
    workers, _ = build_loaders(_inet(tmp_path, auto_augment="rand-m9-mstd0.5-inc1",
                                     num_workers=2), "cpu", seed=3)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(one, list(workers)))
    with pytest.raises(UserError, match="data.auto_augment='nope' is not a timm policy"):
        build_loaders(_inet(tmp_path, auto_augment="nope"), "cpu", seed=3)


def test_random_erasing_on_the_device(tmp_path):
    fx.write_imagenet(tmp_path, ["a", "b"], 3)
    plain, _ = build_loaders(_inet(tmp_path), "cpu", seed=3)
    erased, _ = build_loaders(_inet(tmp_path, re_prob=1.0), "cpu", seed=3)
    for (x, y), (e, z) in zip(plain, erased):
        assert torch.equal(y, z)
        changed = (x != e).flatten(1).float().mean(1)  # share of values replaced per image
        assert (changed > 0.01).all() and (changed < 0.5).all()
