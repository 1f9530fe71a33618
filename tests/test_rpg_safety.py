"""What a hard review found in the RPG core: leaks, stale weights, meta devices, tied
weights, silent gaps, DataParallel, the drop-the-head idiom, bf16, one multiplier rule and
the ring sizes people write."""
import gc
import math
import warnings
import weakref

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rpg_train.models import create_model
from rpg_train.rpg import apply_rpg, cached, materialize, param_report, rings_of
from rpg_train.rpg.compact import tables_fingerprint


def _step(model, opt=None):
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    if opt is not None:
        opt.step()


@pytest.mark.parametrize("under_cache", [False, True])
def test_a_dropped_model_is_freed(under_cache):
    model = apply_rpg(create_model("resnet20", 10), "network", 3000)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if under_cache:
        with cached(model):
            _step(model, opt)
    else:
        _step(model, opt)
    ring = weakref.ref(rings_of(model)[0])
    del model, opt
    gc.collect()
    assert ring() is None


def _reference(model, x):
    """The output of the same network rebuilt from scratch from the ring's current values."""
    with torch.no_grad():
        return materialize(model).eval()(x)


def _update_fused_sgd(model):
    model.train()
    _step(model, torch.optim.SGD(model.parameters(), lr=0.5, fused=True))


def _update_foreach_adamw(model):
    model.train()
    _step(model, torch.optim.AdamW(model.parameters(), lr=0.1, foreach=True))


def _update_fused_adamw(model):
    model.train()
    _step(model, torch.optim.AdamW(model.parameters(), lr=0.1, fused=True))


def _update_data(model):
    rings_of(model)[0].weight.data.mul_(-2.0)


def _update_load_state_dict(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["rpg_rings.network.weight"].mul_(3.0)
    model.load_state_dict(state)


def _update_to(model):
    model.to(torch.float64)
    with torch.no_grad():
        rings_of(model)[0].weight.mul_(0.5)


@pytest.mark.parametrize("update", [_update_fused_sgd, _update_foreach_adamw, _update_fused_adamw,
                                    _update_data, _update_load_state_dict, _update_to])
def test_generated_weights_are_never_stale(update):
    torch.manual_seed(0)
    model = apply_rpg(create_model("resnet20", 10), "network", 3000).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    update(model)
    model.eval()
    x = x.to(rings_of(model)[0].weight.dtype)
    with torch.no_grad():
        after = model(x)
    assert not torch.allclose(after.double(), before.double())
    assert torch.equal(after, _reference(model, x))


def test_meta_model_then_to_empty_gives_the_seeds_tables():
    reference = apply_rpg(create_model("resnet20", 10), "block", 3000, seed=3)
    with torch.device("meta"):
        model = create_model("resnet20", 10)
    apply_rpg(model, "block", 3000, seed=3)
    assert tables_fingerprint(model) == tables_fingerprint(reference)
    model.to_empty(device="cpu")
    for m in model.modules():  # the usual init
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for ring, ref in zip(rings_of(model), rings_of(reference)):
        assert torch.equal(ring.index, ref.index)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference.eval()(x))


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.a = nn.Linear(16, 16, bias=False)
        self.b = nn.Linear(16, 16, bias=False)
        self.b.weight = self.a.weight  # tied
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(self.stem(x)))))


def test_tied_weights_stay_tied_and_count_once():
    torch.manual_seed(0)
    dense = param_report(_Tied())["dense"]
    model = apply_rpg(_Tied(), "network", 100, share_stem=True)
    ring = rings_of(model)[0]
    assert ring.paths == ["stem", "a"] and ring.generated == 8 * 16 + 16 * 16
    assert param_report(model)["dense"] == dense
    assert model.a.weight is not None and torch.equal(model.a.weight, model.b.weight)
    model(torch.randn(2, 8)).sum().backward()  # both uses reach the ring
    plain = materialize(model)
    assert plain.a.weight is plain.b.weight
    assert param_report(plain)["dense"] == dense


def test_a_weight_tied_to_an_embedding_is_left_alone():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.mid = nn.Linear(16, 16)
            self.out = nn.Linear(16, 50, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, t):
            return self.out(self.mid(self.emb(t)))

    with pytest.warns(UserWarning, match=r"1 weights cannot be generated .*: emb.weight"):
        model = apply_rpg(LM(), "network", 100, share_head=True)
    assert rings_of(model)[0].paths == ["mid"]
    assert model.out.weight is model.emb.weight


class _Gaps(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.emb = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.pos = nn.Parameter(torch.zeros(1, 4, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x, t):
        x = self.up(self.body(self.stem(x))).mean((2, 3))[:, None] + self.emb(t) + self.pos
        return self.head(self.attn(x, x, x)[0].mean(1))


def test_weights_that_cannot_be_generated_are_named_in_a_warning_and_the_report():
    expected = ["up.weight", "emb.weight", "attn.in_proj_weight", "pos"]
    with pytest.warns(UserWarning) as record:
        model = apply_rpg(_Gaps(), "network", 200)
    assert str(record[0].message) == ("apply_rpg: 4 weights cannot be generated and stay "
                                      "unshared: pos, up.weight, emb.weight, "
                                      "attn.in_proj_weight")
    assert sorted(param_report(model)["ungenerated"]) == sorted(expected)
    assert rings_of(model)[0].paths == ["body", "attn.out_proj"]
    model(torch.randn(2, 3, 4, 4), torch.randint(10, (2, 4))).sum().backward()
    assert rings_of(model)[0].weight.grad.abs().sum() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain ResNet has nothing to warn about
        assert param_report(apply_rpg(create_model("resnet18", 10), "network", 1000))[
            "ungenerated"] == []


def test_data_parallel_runs_where_it_does_not_replicate_and_is_refused_where_it_would():
    model = apply_rpg(create_model("resnet20", 10), "network", 3000)
    dp = nn.DataParallel(model)  # no GPU here: DataParallel calls the model as it is
    dp(torch.randn(2, 3, 8, 8)).sum().backward()
    assert rings_of(model)[0].weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match=r"nn.DataParallel cannot replicate an RPG model.*"
                                           r"Use DistributedDataParallel"):
        rings_of(model)[0]._replicate_for_data_parallel()  # what replicate() calls per GPU


def test_dropping_the_head_keeps_the_rings_and_trains_them():
    model = apply_rpg(create_model("resnet18", 10, small_input=True), "network", 5000)
    body = nn.Sequential(*list(model.children())[:-1])
    ring = rings_of(model)[0]
    assert any(p is ring.weight for p in body.parameters())
    x = torch.randn(2, 3, 16, 16)
    opt = torch.optim.SGD(body.parameters(), lr=0.1)
    for _ in range(2):  # two steps: each forward must use the updated ring
        before = ring.weight.detach().clone()
        body(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        assert not torch.equal(before, ring.weight)
    model.eval()
    with torch.no_grad():
        feats = body.eval()(x).flatten(1)
        torch.testing.assert_close(model.fc(feats), model(x))


def test_bf16_ring_gradient_is_accumulated_in_float32():
    torch.manual_seed(0)
    model = apply_rpg(create_model("resnet20", 10), "network", 500).to(torch.bfloat16)
    ring = rings_of(model)[0]
    n, index, scale = ring.weight.numel(), ring.layer_index()[-1], ring.scales[-1]
    g = torch.randn(index.numel()).to(torch.bfloat16)  # about 70 uses of every entry
    exact = torch.zeros(2 * n, dtype=torch.float64).index_add_(0, index.long(), g.double() * scale)
    exact = exact[:n] - exact[n:]
    w = model.get_submodule(ring.paths[-1]).weight
    w.backward(g.view_as(w))
    assert ring.weight.grad.dtype == torch.bfloat16
    # one layer: a float32 sum, rounded to bf16 once at the end
    assert torch.equal(ring.weight.grad, exact.float().to(torch.bfloat16))
    in_bf16 = torch.zeros(2 * n, dtype=torch.bfloat16).index_add_(0, index, g, alpha=scale)
    rel = lambda a: ((a.double() - exact).norm() / exact.norm()).item()  # noqa: E731
    assert rel(ring.weight.grad) < 0.003 < rel(in_bf16[:n] - in_bf16[n:])
    # several layers: each one's sum is float32; autograd adds the layers' gradients in the
    # ring's dtype, as it does for any bf16 parameter used more than once
    ring.weight.grad = None
    ws = [model.get_submodule(p).weight for p in ring.paths]
    torch.autograd.backward(ws, [torch.randn_like(w) for w in ws])
    assert ring.weight.grad.dtype == torch.bfloat16 and ring.weight.grad.abs().sum() > 0


def _decoded_multipliers(model) -> dict:
    """Each layer's multiplier, read off its generated weight: |w| / |ring entry|."""
    out = {}
    for ring in rings_of(model):
        n, values = ring.weight.numel(), ring.weight.detach().double()
        for path, index in zip(ring.paths, ring.layer_index()):
            w = model.get_submodule(path).weight.detach().double().flatten()
            out[path] = (w.abs() / values[(index % n).long()].abs()).median().item()
    return out


def test_every_scope_uses_the_network_multipliers():
    torch.manual_seed(0)
    network = _decoded_multipliers(apply_rpg(create_model("resnet18", 10), "network", 10**5))
    assert network["layer1.0.conv1"] == pytest.approx(math.sqrt(4608 / 576))
    assert network["layer4.1.conv2"] == pytest.approx(1.0)
    for scope in ("stage", "block", "layer"):
        model = apply_rpg(create_model("resnet18", 10), scope, 10**5)
        assert all(r.fan_ref == 4608 for r in rings_of(model))
        decoded = _decoded_multipliers(model)
        assert decoded.keys() == network.keys()
        for path, value in network.items():
            assert decoded[path] == pytest.approx(value, rel=1e-6), (scope, path)


@pytest.mark.parametrize("params,ring", [(np.int64(5000), 5000), (np.float64(1e4), 10_000),
                                         (1e4, 10_000), (np.float32(2048.0), 2048)])
def test_ring_sizes_people_write(params, ring):
    assert param_report(apply_rpg(create_model("resnet20", 10), "network", params))["ring"] == ring


@pytest.mark.parametrize("scope", ["network", "block"])
def test_a_fraction_is_that_share_of_the_generated_weights(scope):
    model = apply_rpg(create_model("resnet20", 10), scope, 0.05)
    rep = param_report(model)
    assert rep["ring"] == round(0.05 * rep["generated"]) == model.rpg_spec["params"]
    assert sum(r.weight.numel() for r in rings_of(model)) == rep["ring"]
