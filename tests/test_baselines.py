"""The equal-DoF baselines: width models, the ring solver, pruning, and held-out selection."""
import json

import pytest
import torch
import torchvision

from rpg_train.data import build_data
from rpg_train.engine import train
from rpg_train.engine.budget import width_target
from rpg_train.engine.dense_pruning import nonzero_count, prune_to, pruned_layers
from rpg_train.errors import UserError
from rpg_train.models import create_model
from rpg_train.models.tv_resnet import ARCHS, ScaledResNet
from rpg_train.rpg import param_report

FMNIST = dict(num_classes=10, in_chans=1, small_input=True)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_width_scales_every_channel():
    assert count(create_model("resnet20", **FMNIST, width=0.25)) == 17254
    assert count(create_model("resnet20", **FMNIST, width=0.5)) == 67906
    half = create_model("resnet18", 10, 3, True, width=0.5)
    assert (half.conv1.out_channels, half.fc.in_features) == (32, 256)
    assert half(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # the scaled builder at width 1 rebuilds torchvision's model, parameter for parameter
    for arch in ARCHS:
        assert count(ScaledResNet(*ARCHS[arch], 1.0)) == count(getattr(torchvision.models, arch)())
    wide = create_model("resnet50", 10, width=0.5)
    assert wide.fc.in_features == 1024 and wide(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert create_model("resnet20", **FMNIST, width=0.5).model_spec["width"] == 0.5
    assert "width" not in create_model("resnet20", **FMNIST).model_spec
    with pytest.raises(UserError, match="width=0 .*positive"):
        create_model("resnet20", **FMNIST, width=0)


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("scope", ["network", "stage", "layer"])
def test_ring_solver_hits_the_width_models_count(compose_cfg, width, scope):
    from rpg_train.engine.build import build_model

    cfg = compose_cfg([f"match.width={width}", f"rpg={scope}"])
    model, spec, _ = build_model(cfg, dict(FMNIST))
    target = count(create_model("resnet20", **FMNIST, width=width))
    assert param_report(model)["trainable"] == target


def test_ring_solver_across_models(compose_cfg):
    from rpg_train.engine.build import build_model

    cfg = compose_cfg(["model=resnet56", "match.model=resnet20", "match.width=0.25"])
    model, _, _ = build_model(cfg, dict(FMNIST))
    assert param_report(model)["trainable"] == 17254 == width_target(
        dict(name="resnet56", **FMNIST), 0.25, "resnet20")


@pytest.mark.parametrize("overrides, message", [
    (["match.width=1"],
     "match.width=1.0 gives 269,434 trainable parameters .* in \\[2,171, 269,433\\]"),
    (["match.width=0.25", "rpg=none"], "match.width=0.25 has nothing to solve"),
    (["prune.params=100"], "prune.params=100.0 needs prune.init"),
    (["prune.init=/nonexistent.pt", "prune.params=100", "rpg=none"],
     "prune.init='?/nonexistent.pt'? does not exist"),
    (["model.width=-1"], "model.width=-1.0 must be a positive multiplier"),
    (["match.model=resnet56"], "match.model='?resnet56'? needs match.width"),
    (["data.val_split=-5"], "data.val_split=-5 must not be negative"),
    (["data.num_val=0"], "data.num_val=0 must be at least 1"),
])
def test_bad_baseline_settings_name_key_and_value(quick_cfg, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        train(quick_cfg(*overrides, "model.name=resnet20", "data.in_chans=1"))


def test_a_width_match_on_a_timm_model_names_match_width(quick_cfg):
    with pytest.raises(UserError, match=r"^match.width=0.5 is not supported for timm models"):
        train(quick_cfg("model=timm", "model.name=timm:resnet10t", "match.width=0.5"))


def test_prune_keeps_exactly_the_target():
    model = create_model("resnet20", **FMNIST)
    assert prune_to(model, 5000) == 5000
    layers = pruned_layers(model)
    assert len(layers) == 18 and nonzero_count(layers) == 5000  # the non-stem convs
    assert model.conv1.weight.count_nonzero() == model.conv1.weight.numel()  # stem kept
    with pytest.raises(UserError, match="prune.params=267264 is out of range"):
        prune_to(create_model("resnet20", **FMNIST), 267264)


def test_pruning_baseline_end_to_end(quick_cfg, tmp_path):
    dense = train(quick_cfg("rpg=none", "model.name=resnet20", out="dense"))
    init = tmp_path / "dense" / "last.pt"
    res = train(quick_cfg("rpg=none", "model.name=resnet20", f"prune.init={init}",
                          "prune.params=3000", out="pruned"))
    rep = res["param_report"]
    assert rep["nonzero"] == 3000 and rep["trainable"] == 3000 + rep["unshared"]
    assert rep["dense"] == dense["param_report"]["dense"]
    assert res["prune"] == dict(nonzero=3000, init=str(init), init_epochs=1, finetune_epochs=1)
    # the masks survive fine-tuning and the checkpoint: resuming the finished run recounts
    again = train(quick_cfg("rpg=none", "model.name=resnet20", f"prune.init={init}",
                            "prune.params=3000", "trainer.resume=auto", out="pruned"))
    assert again["param_report"]["nonzero"] == 3000
    assert again["final_top1"] == res["final_top1"]
    # matched to the width-0.25 count, like RPG's ring
    res = train(quick_cfg("rpg=none", "model.name=resnet20", f"prune.init={init}",
                          "match.width=0.25", out="matched"))
    assert res["param_report"]["trainable"] == width_target(
        dict(name="resnet20", num_classes=10, in_chans=3, small_input=True), 0.25)
    rpg_ckpt = tmp_path / "rpg"
    train(quick_cfg("model.name=resnet20", out="rpg"))
    with pytest.raises(UserError, match="prune.init=.* is not a dense checkpoint"):
        train(quick_cfg("rpg=none", "model.name=resnet20", f"prune.init={rpg_ckpt}/last.pt",
                        "prune.params=3000", out="bad"))


def test_holdout_is_fixed_disjoint_and_selects_best(quick_cfg, tmp_path):
    cfg = quick_cfg("data.val_split=16", "trainer.epochs=2")
    data = build_data(cfg.data, "cpu", seed=0)
    assert (len(data.train.images), len(data.holdout.images)) == (48, 16)
    other = build_data(quick_cfg("data.val_split=16", "trainer.seed=5").data, "cpu", seed=5)
    assert torch.equal(data.holdout.images, other.holdout.images)  # not the run's seed
    pool = {tuple(x.flatten().tolist()) for x in data.train.images}
    assert not any(tuple(x.flatten().tolist()) in pool for x in data.holdout.images)
    res = train(cfg)
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["heldout_top1"])  # first of equals: strict improvement
    assert res["selected_epoch"] == best["epoch"] and res["selected_top1"] == best["val_top1"]
    assert res["heldout_top1"] == best["heldout_top1"]
    assert res["best_top1"] == max(r["val_top1"] for r in rows)
    with pytest.raises(UserError, match="data.val_split=64 must be in"):
        train(quick_cfg("data.val_split=64", out="bad"))


def test_paper_rows_count_at_the_imagenet_stem(compose_cfg):
    """The trainable counts the docs quote, at 224 px (torchvision's 7x7 stem), 1000 classes."""
    from rpg_train.engine.build import build_model

    imagenet = dict(num_classes=1000, in_chans=3, small_input=False)
    for row, trainable in [("imagenet_r18_rpg", 2891304), ("imagenet_r34_rpg", 11700008),
                           ("imagenet_r34_rpg_tiny", 54024), ("imagenet_r18_dense", 11689512),
                           ("imagenet_r34_dense", 21797672)]:
        model, _, _ = build_model(compose_cfg([f"experiment={row}"]), imagenet)
        assert param_report(model)["trainable"] == trainable, row


def test_pruned_checkpoint_evaluates_without_its_dense_file(quick_cfg, tmp_path):
    from rpg_train.evaluate import evaluate_checkpoint

    train(quick_cfg("rpg=none", "model.name=resnet20", out="dense"))
    init = tmp_path / "dense" / "last.pt"
    res = train(quick_cfg("rpg=none", "model.name=resnet20", f"prune.init={init}",
                          "prune.params=3000", out="pruned"))
    with pytest.raises(UserError, match="is not a dense checkpoint"):  # already pruned
        train(quick_cfg("rpg=none", "model.name=resnet20",
                        f"prune.init={tmp_path / 'pruned' / 'last.pt'}", "prune.params=2000",
                        out="twice"))
    init.unlink()
    ev = evaluate_checkpoint(tmp_path / "pruned" / "last.pt")
    assert ev["top1"] == res["final_top1"] and ev["param_report"]["nonzero"] == 3000


def test_pruning_refuses_an_unfinished_dense_run(quick_cfg, tmp_path):
    train(quick_cfg("rpg=none", "model.name=resnet20", "trainer.max_steps=1", out="dense"))
    with pytest.raises(UserError, match="is an unfinished run"):
        train(quick_cfg("rpg=none", "model.name=resnet20", "prune.params=3000",
                        f"prune.init={tmp_path / 'dense' / 'last.pt'}", out="pruned"))


def test_kwargs_width_points_to_model_width(quick_cfg):
    with pytest.raises(UserError, match="model.kwargs.width=2 .*use model.width"):
        train(quick_cfg("model.name=resnet20", "+model.kwargs.width=2"))
