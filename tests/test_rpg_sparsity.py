"""Ring pruning: prune_ring zeroes the smallest entries, each ring keeps its mask
(Ring.set_keep_mask) through training, copies and pickles, and compact files store a pruned
ring as a bitmask and its kept entries."""
import pytest
import torch

from conftest import stage_rings_resnet20
from rpg_train.engine.optim import param_groups
from rpg_train.errors import UserError
from rpg_train.rpg import (
    load_compact,
    prune_ring,
    ring_masks,
    rings_of,
    save_compact,
    set_ring_masks,
)
from rpg_train.rpg.sparsity import pack_bits, unpack_bits


@pytest.mark.parametrize("amount", [0.5, 0.8])
def test_pruning_removes_the_fraction_and_it_stays_pruned_while_fine_tuning(amount):
    model = stage_rings_resnet20()
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
        prune_ring(stage_rings_resnet20(), 1.0)


def test_a_pruned_ring_is_stored_sparse_and_loads_pruned(tmp_path):
    model = stage_rings_resnet20()
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
    import pickle

    model = stage_rings_resnet20()
    prune_ring(model, 0.5)
    twin = copy.deepcopy(model)
    # the mask is a buffer, not a hook: the model pickles (an in-memory round trip; nothing
    # here or in src/ loads a checkpoint file with pickled code)
    loaded = pickle.loads(pickle.dumps(model))
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
    model = stage_rings_resnet20()
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


def test_a_ring_owns_its_mask_and_none_unprunes():
    model = stage_rings_resnet20()
    ring = rings_of(model)[0]
    keep = torch.arange(ring.weight.numel()) % 3 != 0
    before = ring.weight.detach().clone()
    ring.set_keep_mask(keep)
    assert ring.keep_mask.dtype == ring.weight.dtype
    assert torch.equal(ring.keep_mask.bool(), keep)
    assert torch.equal(ring.weight.detach(), before * keep)  # dropped entries stored as 0
    assert ring_masks(model) is None  # the other rings are not pruned
    ring.set_keep_mask(None)
    assert ring.keep_mask is None
    torch.nn.functional.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)),
                                      torch.randint(10, (4,))).backward()
    assert (ring.weight.grad[~keep] != 0).any()  # unpruned: the zeroed entries train again
    with pytest.raises(ValueError, match="^a keep mask of 3 entries for a ring of"):
        ring.set_keep_mask(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="^the masks do not match this model's rings$"):
        set_ring_masks(model, [keep])
