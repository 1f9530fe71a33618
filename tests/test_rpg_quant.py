"""quantize_ring: every entry within half a step of its float value; compact files store the
codes (int4 two per byte) and load back to exactly the dequantized model."""
import pytest
import torch

from rpg_train.engine.optim import param_groups
from rpg_train.errors import UserError
from rpg_train.models import create_model
from rpg_train.rpg import (apply_rpg, load_compact, prune_ring, quantize_ring, ring_masks,
                           rings_of, save_compact)
from rpg_train.rpg.quant import pack_bits, unpack_bits


def _model(params=20000):
    torch.manual_seed(0)
    return apply_rpg(create_model("resnet20", 10, small_input=True), "stage", params, seed=0)


@pytest.mark.parametrize("bits,block", [(8, None), (8, 256), (4, None), (4, 100)])
def test_every_entry_moves_at_most_half_a_step(bits, block):
    model = _model()
    before = [r.weight.detach().clone() for r in rings_of(model)]
    codes = quantize_ring(model, bits=bits, block=block)
    assert len(codes) == len(before) == 3  # stage scope: one ring per stage
    for ring, w, c in zip(rings_of(model), before, codes.values()):
        n = w.numel()
        per = torch.arange(n) // c.block
        err = (ring.weight.detach() - w).abs()
        assert (err <= c.step[per] / 2 + 1e-7).all()
        assert c.codes.max() <= 2 ** bits - 1 and len(c.step) == -(-n // (block or n))
        assert len(torch.unique(ring.weight.detach()[: c.block])) <= 2 ** bits


@pytest.mark.parametrize("bits", [8, 4])
def test_compact_file_holds_the_codes_and_loads_the_same_model(tmp_path, bits):
    model = _model()
    save_compact(model, tmp_path / "float.st")
    quantize_ring(model, bits=bits, block=512)
    save_compact(model, tmp_path / "q.st")
    ring_bytes = sum(r.weight.numel() for r in rings_of(model)) * 4
    saved = (tmp_path / "float.st").stat().st_size - (tmp_path / "q.st").stat().st_size
    assert saved > ring_bytes * (1 - bits / 32) * 0.9  # the entries shrank to `bits` each
    again = load_compact(tmp_path / "q.st")
    for a, b in zip(rings_of(model), rings_of(again)):
        assert torch.equal(a.weight, b.weight)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))
    save_compact(again, tmp_path / "q2.st")  # still quantized when saved again
    assert (tmp_path / "q2.st").stat().st_size == (tmp_path / "q.st").stat().st_size


def test_a_ring_trained_after_quantizing_is_saved_as_floats(tmp_path):
    model = _model()
    quantize_ring(model, bits=4)
    with torch.no_grad():
        rings_of(model)[0].weight.add_(1e-3)
    save_compact(model, tmp_path / "m.st")
    again = load_compact(tmp_path / "m.st")
    assert torch.equal(rings_of(again)[0].weight, rings_of(model)[0].weight)


@pytest.mark.parametrize("kw,message", [({"bits": 3}, "bits=3 must be 4 or 8"),
                                        ({"block": 0}, "block=0 must be at least 1")])
def test_bad_settings(kw, message):
    with pytest.raises(UserError, match=message):
        quantize_ring(_model(), **kw)


@pytest.mark.parametrize("amount", [0.5, 0.8])
def test_pruning_removes_the_fraction_and_it_stays_pruned_while_fine_tuning(amount):
    model = _model()
    total = sum(r.weight.numel() for r in rings_of(model))
    mags = torch.cat([r.weight.detach().abs() for r in rings_of(model)])
    k = prune_ring(model, amount)
    zero = torch.cat([r.weight.detach() == 0 for r in rings_of(model)])
    assert k == round(amount * total) and int(zero.sum()) == k
    assert mags[zero].max() <= mags[~zero].min()  # the smallest magnitudes went
    opt = torch.optim.SGD(param_groups(model, 5e-4, False), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(10, (8,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.train()(x), y).backward()
        opt.step()
    after = torch.cat([r.weight.detach() for r in rings_of(model)])
    assert (after[zero] == 0).all() and (after[~zero] != mags.new_tensor(0)).all()
    assert not torch.equal(after[~zero].abs(), mags[~zero])  # the rest did train


def test_prune_amount_is_checked():

    with pytest.raises(UserError, match=r"amount=1.0 must be in \[0, 1\)"):
        prune_ring(_model(), 1.0)


def test_a_pruned_ring_is_stored_sparse_and_loads_pruned(tmp_path):

    model = _model()
    save_compact(model, tmp_path / "float.st")
    prune_ring(model, 0.8)
    save_compact(model, tmp_path / "pruned.st")
    entries = sum(r.weight.numel() for r in rings_of(model))
    saved = (tmp_path / "float.st").stat().st_size - (tmp_path / "pruned.st").stat().st_size
    # 80 % of the float32 entries are gone; the mask costs one bit per entry (and the
    # header names two tensors per ring instead of one: a few hundred bytes)
    assert entries * (4 * 0.8 - 1 / 8) - 1000 < saved < entries * (4 * 0.8 - 1 / 8)
    again = load_compact(tmp_path / "pruned.st")
    for a, b in zip(rings_of(model), rings_of(again)):
        assert torch.equal(a.weight, b.weight)
    assert all(torch.equal(a, b) for a, b in zip(ring_masks(model), ring_masks(again)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


@pytest.mark.parametrize("n", [1, 8, 13, 4096])
def test_bit_packing_round_trips(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 8)
    assert torch.equal(unpack_bits(packed, n), mask)


def test_a_pruned_ring_stays_pruned_through_deepcopy_pickle_and_training():
    import copy
    import io


    model = _model()
    prune_ring(model, 0.5)
    twin = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(model, buf)  # the mask is a buffer, not a hook: the model pickles
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)  # our own bytes: unpickling is the point
    for m in (twin, loaded):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m.train()(torch.randn(4, 3, 32, 32)),
                                              torch.randint(10, (4,))).backward()
            opt.step()
        for ring, keep in zip(rings_of(m), ring_masks(model)):
            assert (ring.weight.detach()[~keep] == 0).all()
            assert ring.prune_keep.dtype == ring.weight.dtype
    assert "prune_keep" not in "".join(model.state_dict())  # state dicts are unchanged


def test_a_masked_entry_generates_zero_whatever_it_holds(tmp_path):

    model = _model()
    prune_ring(model, 0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x)
        for ring in rings_of(model):  # pruned entries moved (by an old momentum, say)
            ring.weight.add_(1 - ring.prune_keep)
        assert torch.equal(model(x), want)
    save_compact(model, tmp_path / "m.st")
    again = load_compact(tmp_path / "m.st")
    with torch.no_grad():
        assert torch.equal(again.eval()(x), want)
    assert all(torch.equal(a, b) for a, b in zip(ring_masks(model), ring_masks(again)))


@pytest.mark.parametrize("bits", [8, 4])
def test_pruned_then_quantized_stores_codes_of_the_kept_entries_only(tmp_path, bits):

    model = _model()
    prune_ring(model, 0.8)
    save_compact(model, tmp_path / "pruned.st")
    before = [r.weight.detach().clone() for r in rings_of(model)]
    codes = quantize_ring(model, bits=bits)
    for ring, w, keep, c in zip(rings_of(model), before, ring_masks(model), codes.values()):
        got = ring.weight.detach()
        assert (got[~keep] == 0).all() and c.codes.numel() == int(keep.sum())
        assert ((got - w).abs()[keep] <= c.step[0] / 2 + 1e-7).all()
    save_compact(model, tmp_path / "both.st")
    kept = sum(int(k.sum()) for k in ring_masks(model))
    saved = (tmp_path / "pruned.st").stat().st_size - (tmp_path / "both.st").stat().st_size
    assert saved > kept * (4 - bits / 8) - 1000  # the kept floats became codes
    again = load_compact(tmp_path / "both.st")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model.eval()(x))
    assert all(torch.equal(a, b) for a, b in zip(ring_masks(model), ring_masks(again)))
