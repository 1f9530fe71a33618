"""Generated layers: init, gradients, caching, counts, materialize."""
import copy
import math
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from rpg_train.models import create_model
from rpg_train.rpg import apply_rpg, cached, materialize, param_report, rings_of
from rpg_train.rpg.ring import _Gather, block_entries, grad_inverse, grad_serial


@pytest.mark.parametrize("k", [1, 4])
def test_initial_std_matches_kaiming_fan_out_per_layer(k):
    torch.manual_seed(0)
    model = apply_rpg(create_model("resnet18", 1000), "network", 10**5, k=k)
    ring = rings_of(model)[0]
    modules = dict(model.named_modules())
    for path in ring.paths:
        w = modules[path].weight
        fan_out = w.shape[0] * w[0, 0].numel()
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.10), path


def _tiny():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(6, 5, 1, bias=True), nn.Flatten(), nn.Linear(5 * 16, 3))


def dense_projection(ring) -> torch.Tensor:
    """The dense R with generated = R @ ring, built by hand: row p holds weight p's k signed
    entries (table slots p*k .. p*k + k - 1), each times the layer's multiplier / sqrt(k)."""
    n, k = ring.weight.numel(), ring.k
    multipliers = [math.sqrt(ring.fan_ref / f) for f in ring.fan_outs]
    per_slot = torch.cat([torch.full((k * s,), c / math.sqrt(k))
                          for s, c in zip(ring.sizes, multipliers)])
    R = torch.zeros(ring.generated, n)
    rows = torch.arange(k * ring.generated) // k
    signs = torch.where(ring.index >= n, -1.0, 1.0)
    return R.index_put_((rows, (ring.index % n).long()), signs * per_slot, accumulate=True)


@pytest.mark.parametrize("sampling,sign,k", [("even", True, 1), ("ring", True, 1),
                                             ("iid", True, 1), ("plain", False, 1),
                                             ("plain", True, 1), ("even", True, 3),
                                             ("iid", True, 2), ("plain", False, 2),
                                             ("ring", False, 4)])
def test_ring_gradient_equals_dense_reference(sampling, sign, k):
    model = apply_rpg(_tiny(), "network", 37, sampling=sampling, sign=sign, share_stem=True,
                      share_head=True, k=k)
    ring = rings_of(model)[0]
    n = ring.weight.numel()
    R = dense_projection(ring)
    x = torch.randn(4, 2, 4, 4)
    model(x).square().sum().backward()
    dense = [torch.nn.Parameter(w) for w in (R @ ring.weight.detach()).split(ring.sizes)]
    plain = materialize(model)
    mods = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m, w in zip(mods, dense):  # the forward is R @ ring too
        torch.testing.assert_close(m.weight.flatten(), w.detach(), rtol=1e-6, atol=1e-6)
        m.weight = nn.Parameter(w.detach().view_as(m.weight).clone())
    plain(x).square().sum().backward()
    g = torch.cat([m.weight.grad.flatten() for m in mods])
    want = (R.double().T @ g.double()).float()
    atol = 1e-5 * want.abs().max().item()  # float32 sums: errors scale with the largest term
    torch.testing.assert_close(ring.weight.grad, want, rtol=1e-5, atol=atol)
    # the gather backward used off the CPU, run here layer by layer on the same gradients
    by_gather = sum(grad_inverse(ring.inverse(i), ring.layer_index()[i], gi.repeat_interleave(k),
                                 n, ring.scales[i])
                    for i, gi in enumerate(g.split(ring.sizes)))
    torch.testing.assert_close(by_gather, want, rtol=1e-5, atol=atol)


def test_plain_recurrence_without_signs_gives_equal_shapes_identical_weights():
    """rpg.sampling=plain rpg.sign=false: layers of equal shape have equal fan-outs, so equal
    multipliers, and read the same entries: identical weights. With signs they differ."""
    model = apply_rpg(create_model("resnet20", 10), "network", 1000, sampling="plain",
                      sign=False)
    modules = dict(model.named_modules())
    by_shape = {}
    for path in rings_of(model)[0].paths:
        by_shape.setdefault(tuple(modules[path].weight.shape), []).append(modules[path].weight)
    assert sorted(len(v) for v in by_shape.values()) == [1, 1, 5, 5, 6]
    for weights in by_shape.values():
        assert all(torch.equal(w, weights[0]) for w in weights)
    # a larger layer tiles the ring: its first 1000 weights repeat at 1000..1999
    big = by_shape[(64, 64, 3, 3)][0].flatten() / rings_of(model)[0].scales[-1]
    assert torch.equal(big[:1000], rings_of(model)[0].weight.detach())
    assert torch.equal(big[1000:2000], big[:1000])
    signed = apply_rpg(create_model("resnet20", 10), "network", 1000, sampling="plain")
    first, second = signed.layer1[0].conv1.weight, signed.layer1[0].conv2.weight
    assert torch.equal(first.abs(), second.abs()) and not torch.equal(first, second)


@pytest.mark.parametrize("k", [1, 3])
def test_backward_is_bitwise_deterministic(k):
    model = apply_rpg(create_model("resnet20", 10), "network", 3000, k=k)
    x = torch.randn(8, 3, 16, 16)
    grads = []
    for _ in range(2):
        model.zero_grad()
        model(x).sum().backward()
        grads.append(rings_of(model)[0].weight.grad.clone())
    assert torch.equal(grads[0], grads[1])
    ring = rings_of(model)[0]
    index, n = ring.layer_index()[3], ring.weight.numel()
    g = torch.randn(index.numel())
    assert torch.equal(grad_serial(index, g, n, 1.5), grad_serial(index, g, n, 1.5))
    blocks = ring.inverse(3)
    assert torch.equal(grad_inverse(blocks, index, g, n, 1.5),
                       grad_inverse(blocks, index, g, n, 1.5))


@pytest.mark.parametrize("k", [1, 3])
def test_the_gather_backward_through_autograd_matches_the_serial_one(k):
    """The path used off the CPU (inverse blocks), forced here through the autograd function:
    the same ring gradient as the CPU's serial scatter-add, up to the order of float sums."""
    ring = rings_of(apply_rpg(create_model("resnet20", 10), "network", 3000, k=k))[0]
    i = 5
    index, shape, scale = ring.layer_index()[i], ring.shapes[i], ring.scales[i]
    g = torch.randn(shape)
    grads = []
    for blocks in (None, ring.inverse(i)):
        w = ring.weight.detach().clone().requires_grad_()
        (_Gather.apply(w, index, scale, shape, blocks, None) * g).sum().backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_cached_reuses_weights_until_the_ring_changes_and_only_inside():
    model = apply_rpg(create_model("resnet20", 10), "network", 3000).eval()
    with torch.no_grad():
        assert model.layer1[0].conv1.weight is not model.layer1[0].conv1.weight
        with cached(model):
            first = model.layer1[0].conv1.weight
            model(torch.randn(2, 3, 8, 8))
            assert model.layer1[0].conv1.weight is first
            rings_of(model)[0].weight.add_(1.0)
            second = model.layer1[0].conv1.weight
            assert second is not first
        assert rings_of(model)[0]._cache == {}
        assert torch.equal(second, model.layer1[0].conv1.weight)  # the fresh one, outside
        torch.testing.assert_close((second - first).abs(), torch.full_like(first, 2.0))


def test_generated_weights_are_not_parameters_or_state():
    model = apply_rpg(create_model("resnet18", 10), "block", 5000)
    names = dict(model.named_parameters())
    assert "layer1.0.conv1.weight" not in names
    assert "layer1.0.conv1.weight" not in model.state_dict()
    assert {k for k in names if k.startswith("rpg_rings.")} == {
        f"rpg_rings.layer{i}_{j}.weight" for i in range(1, 5) for j in range(2)}


@pytest.mark.parametrize("name,dense", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                        ("resnet50", 25_557_032)])
def test_param_report_dense_and_rpg(name, dense):
    plain = param_report(create_model(name, 1000))
    assert plain == dict(ring=0, unshared=dense, trainable=dense, generated=0, dense=dense,
                         compression=1.0, ungenerated=[])
    model = apply_rpg(create_model(name, 1000), "stage", 10**5)
    rep = param_report(model)
    assert rep["ring"] == 10**5 and rep["dense"] == dense
    assert rep["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert rep["trainable"] == rep["ring"] + rep["unshared"]
    assert rep["generated"] == dense - rep["unshared"]
    assert rep["compression"] == pytest.approx(dense / rep["trainable"])


@pytest.mark.parametrize("kw", [dict(scope="network"), dict(scope="block", sampling="ring"),
                                dict(scope="layer", share_stem=True, share_head=True),
                                dict(scope="network", sampling="plain", sign=False),
                                dict(scope="stage", k=3)])
def test_materialize_matches_outputs_and_torchvision_keys(kw):
    model = apply_rpg(create_model("resnet18", 10), params=20000, **kw)
    model(torch.randn(4, 3, 32, 32)).sum().backward()  # BN stats move, caches hold graphs
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    plain = materialize(model)
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max().item() <= 1e-5
    reference = torchvision.models.resnet18(num_classes=10)
    reference.load_state_dict(plain.state_dict(), strict=True)
    assert list(plain.state_dict()) == list(reference.state_dict())
    assert all(type(m).__module__.startswith("torch") for m in plain.modules()
               if isinstance(m, nn.Conv2d))


def test_deepcopy_after_training_forward_keeps_rings_separate():
    model = apply_rpg(create_model("resnet20", 10), "network", 3000)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        rings_of(twin)[0].weight.zero_()
    assert twin.layer1[0].conv1.weight.abs().sum() == 0
    assert model.layer1[0].conv1.weight.abs().sum() > 0


def test_autocast_and_channels_last_run_with_float32_ring():
    model = apply_rpg(create_model("resnet20", 10), "network", 3000)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    F.cross_entropy(out.float(), torch.tensor([0, 1, 2, 3])).backward()
    ring = rings_of(model)[0]
    assert ring.weight.dtype == torch.float32 and ring.weight.grad.abs().sum() > 0


def test_ddp_single_process_trains_the_ring(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = apply_rpg(create_model("resnet20", 10), "network", 3000)
        ddp = nn.parallel.DistributedDataParallel(model)
        ddp(torch.randn(2, 3, 8, 8)).sum().backward()
        assert rings_of(model)[0].weight.grad.abs().sum() > 0
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_torch_compile_runs():
    model = apply_rpg(create_model("resnet20", 10), "network", 3000)
    compiled = torch.compile(model)
    x = torch.randn(2, 3, 8, 8)
    compiled(x).sum().backward()
    assert rings_of(model)[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_the_whole_model_pickles_and_round_trips():
    # what torch.save(model) needs; done in memory, so no file is ever loaded unsafely
    # (the project loads files with weights_only=True only)
    model = apply_rpg(create_model("resnet20", 10), "block", 3000)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    loaded = pickle.loads(pickle.dumps(model)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert rings_of(loaded)[0].weight is not rings_of(model)[0].weight


@pytest.mark.parametrize("sampling,k", [("even", 1), ("ring", 1), ("iid", 1), ("plain", 1),
                                       ("even", 3)])
def test_inverse_blocks_list_every_position_once_without_padding(sampling, k):
    model = apply_rpg(create_model("resnet20", 10), "network", 1000, sampling=sampling, k=k)
    ring = rings_of(model)[0]
    n = ring.weight.numel()
    for i, index in enumerate(ring.layer_index()):
        m, blocks = index.numel(), ring.inverse(i)
        ids = torch.cat([block_entries(index, b, n) for b in blocks])
        assert ids.unique().numel() == ids.numel()  # every entry in one block, once
        codes = torch.cat([b.flatten() for b in blocks]).long()
        assert codes.numel() == m  # no padding
        assert torch.equal(codes.remainder(m).sort().values, torch.arange(m))
        # the code decodes back to the forward table: entry and sign of every position
        rows = torch.cat([block_entries(index, b, n).repeat_interleave(b.shape[1])
                          for b in blocks])
        decoded = rows + n * (codes >= m).long()
        assert torch.equal(decoded[codes.remainder(m).argsort()], index.long())
        assert all(b.dtype == torch.int32 for b in blocks)
    # k tables and the codes (one per slot), nothing else: 8 bytes per slot
    assert ring.table_bytes() == 8 * k * ring.generated
