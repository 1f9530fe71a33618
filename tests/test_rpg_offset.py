"""rpg.offset: a frozen random theta0 (each layer's Kaiming init) added to the generated
weights, the ring starting at 0 (Li et al.'s random subspace with a sparse projection)."""
import copy
import math
import pickle

import pytest
import torch
import torch.nn as nn

from rpg_train.models import create_model
from rpg_train.rpg import (
    apply_rpg,
    cached,
    load_compact,
    materialize,
    param_report,
    rings_of,
    save_compact,
)
from rpg_train.rpg.compact import tables_fingerprint
from rpg_train.rpg.ring import THETA0_SALT


def _r20(offset=True, seed=0, scope="block", params=3000):
    torch.manual_seed(0)
    return apply_rpg(create_model("resnet20", 10), scope, params, seed=seed, offset=offset)


def _theta0_by_hand(ring):
    """theta0 as the docs define it: per layer N(0, 2 / fan_out), from the table seed's own
    stream, layers in order."""
    gen = torch.Generator().manual_seed(ring.table_seed ^ THETA0_SALT)
    return [torch.randn(math.prod(s), generator=gen) * math.sqrt(2 / (math.prod(s) // s[1]))
            for s in ring.shapes]


def test_the_ring_starts_at_zero_and_the_model_at_the_dense_theta0_model():
    model = _r20().eval()
    assert all(torch.equal(r.weight, torch.zeros_like(r.weight)) for r in rings_of(model))
    torch.manual_seed(0)
    dense = create_model("resnet20", 10).eval()  # same init of everything not generated
    modules = dict(dense.named_modules())
    for ring in rings_of(model):
        for path, shape, w in zip(ring.paths, ring.shapes, _theta0_by_hand(ring)):
            modules[path].weight = nn.Parameter(w.view(shape))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))


def test_theta0_is_each_layers_kaiming_fan_out_init():
    model = apply_rpg(create_model("resnet18", 1000), "network", 10**5, offset=True)
    modules = dict(model.named_modules())
    for path in rings_of(model)[0].paths:
        w = modules[path].weight
        fan_out = w.shape[0] * w[0, 0].numel()
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.10), path


def test_ring_gradient_equals_dense_reference_with_theta0():
    torch.manual_seed(1)
    model = apply_rpg(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(),
                                    nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.Flatten(),
                                    nn.Linear(6 * 16, 3)),
                      "network", 37, share_stem=True, share_head=True, offset=True)
    ring = rings_of(model)[0]
    with torch.no_grad():
        ring.weight.normal_()  # away from 0, so the ring's part of the weights shows
    n, total = ring.weight.numel(), ring.generated
    scales = torch.cat([torch.full((s,), c) for s, c in zip(ring.sizes, ring.scales)])
    R = torch.zeros(total, n)
    signs = torch.where(ring.index >= n, -1.0, 1.0)
    R[torch.arange(total), (ring.index % n).long()] = signs * scales
    # the dense construction: theta = theta0 + R W, autograd through it
    W = ring.weight.detach().clone().requires_grad_()
    theta = torch.cat(_theta0_by_hand(ring)) + R @ W
    x = torch.randn(4, 2, 4, 4)
    y, parts = x, theta.split(ring.sizes)
    y = torch.relu(nn.functional.conv2d(y, parts[0].view(ring.shapes[0]), padding=1))
    y = nn.functional.conv2d(y, parts[1].view(ring.shapes[1]), padding=1)
    y = y.flatten(1) @ parts[2].view(ring.shapes[2]).T + getattr(model, "4").bias
    y.square().sum().backward()
    model(x).square().sum().backward()
    torch.testing.assert_close(ring.weight.grad, W.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(getattr(model, "0").weight, parts[0].view(ring.shapes[0]).detach())


def test_theta0_is_no_parameter_buffer_or_state_and_counts_are_unchanged():
    model, rpg = _r20(), _r20(offset=False)
    assert list(model.state_dict()) == list(rpg.state_dict())
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in rpg.named_buffers()]
    assert param_report(model) == param_report(rpg)
    assert model.rpg_spec == dict(rpg.rpg_spec, offset=True)
    assert "offset" not in rpg.rpg_spec  # older checkpoints' identities still match
    ring = rings_of(model)[0]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 8, 8))  # draws the table and theta0
    assert ring.table_bytes() == 4 * ring.generated + 4 * ring.generated  # table + theta0


def test_theta0_is_deterministic_from_the_seed():
    a, b, c = (rings_of(_r20(seed=s))[2] for s in (4, 4, 5))
    assert torch.equal(a.theta0, b.theta0) and not torch.equal(a.theta0, c.theta0)
    assert torch.equal(a.theta0, torch.cat(_theta0_by_hand(a)))
    # the fingerprint covers theta0: with and without the offset the tables are the same
    assert tables_fingerprint(_r20(seed=4)) != tables_fingerprint(_r20(seed=4, offset=False))


def _trained():
    model = _r20()
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * p.grad)
    return model.eval()


def test_compact_round_trip_rebuilds_theta0_bit_equal_and_does_not_store_it(tmp_path):
    model = _trained()
    path = tmp_path / "m.safetensors"
    save_compact(model, path)
    loaded = load_compact(path).eval()
    assert loaded.rpg_spec == model.rpg_spec
    for ring, ref in zip(rings_of(loaded), rings_of(model)):
        assert torch.equal(ring.theta0, ref.theta0)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    plain = tmp_path / "plain.safetensors"
    save_compact(_r20(offset=False), plain)
    assert abs(path.stat().st_size - plain.stat().st_size) < 1024  # no theta0 in the file


def test_materialize_cached_and_pickle_keep_theta0():
    model = _trained()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        assert (materialize(model)(x) - want).abs().max().item() <= 1e-5
        with cached(model):
            assert torch.equal(model(x), want)
        state = rings_of(model)[0].__getstate__()
        assert state["_theta0"] is None  # never pickled: drawn again
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), want)
        assert torch.equal(copy.deepcopy(model)(x), want)


def test_theta0_follows_device_and_dtype_moves_and_to_empty():
    model = _trained()
    ring = rings_of(model)[0]
    want = ring.theta0.clone()
    model.to(torch.bfloat16)
    assert ring.theta0.dtype == torch.bfloat16
    model.float()
    assert torch.equal(ring.theta0, want)  # drawn again, not cast back from bfloat16
    model.to(torch.float64)
    assert torch.equal(ring.theta0, want.double())
    with torch.device("meta"):
        meta = create_model("resnet20", 10)
    apply_rpg(meta, "block", 3000, offset=True)
    assert tables_fingerprint(meta) == tables_fingerprint(model)
    with pytest.raises(RuntimeError, match="meta device"):
        _ = rings_of(meta)[0].theta0
    meta.to_empty(device="cpu")
    for m in meta.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    assert torch.equal(rings_of(meta)[0].theta0, want)
    assert rings_of(meta)[0].weight.abs().sum() == 0
