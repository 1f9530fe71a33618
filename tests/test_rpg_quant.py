"""quantize_ring: every entry within half a step of its float value; compact files store the
codes (int4 two per byte) and load back to exactly the dequantized model. Pruning is in
test_rpg_sparsity.py."""
import pytest
import torch

from conftest import stage_rings_resnet20
from rpg_train.errors import UserError
from rpg_train.rpg import (
    load_compact,
    prune_ring,
    quantize_ring,
    ring_masks,
    rings_of,
    save_compact,
)


@pytest.mark.parametrize("bits,block", [(8, None), (8, 256), (4, None), (4, 100)])
def test_every_entry_moves_at_most_half_a_step(bits, block):
    model = stage_rings_resnet20()
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
    model = stage_rings_resnet20()
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
    model = stage_rings_resnet20()
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
        quantize_ring(stage_rings_resnet20(), **kw)


@pytest.mark.parametrize("bits", [8, 4])
def test_pruned_then_quantized_stores_codes_of_the_kept_entries_only(tmp_path, bits):

    model = stage_rings_resnet20()
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
