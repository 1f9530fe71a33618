"""The plan: even sampling, ring split, scopes, seeds."""
import subprocess
import sys

import pytest
import torch

from rpg_train.models import create_model
from rpg_train.rpg import apply_rpg, rings_of
from rpg_train.rpg.plan import draw_index, scope_key, split_params


def entry_counts(index, n):
    return torch.bincount((index % n).long(), minlength=n)


@pytest.mark.parametrize("sizes,n", [([10], 3), ([7, 5, 9], 4), ([100, 37], 137 - 1),
                                     ([64, 64, 1000], 50), ([12], 12 - 1)])
@pytest.mark.parametrize("sampling", ["even", "ring"])
def test_even_and_ring_sampling_use_every_entry_floor_or_ceil_times(sizes, n, sampling):
    total = sum(sizes)
    index = draw_index(sizes, n, sampling, True, torch.Generator().manual_seed(3))
    assert index.shape == (total,) and index.dtype == torch.int32
    assert int(index.min()) >= 0 and int(index.max()) < 2 * n
    counts = entry_counts(index, n)
    q, r = divmod(total, n)
    assert int((counts == q + 1).sum()) == r
    assert int((counts == q).sum()) == n - r


def test_ring_sampling_fetches_sequentially_per_layer():
    sizes, n = [5, 7], 4
    index = draw_index(sizes, n, "ring", False, torch.Generator().manual_seed(0))
    # layer 0 takes entries 0,1,2,3,0 in some order; layer 1 continues at 1
    assert sorted(index[:5].tolist()) == sorted([0, 1, 2, 3, 0])
    assert sorted(index[5:].tolist()) == sorted([(5 + i) % 4 for i in range(7)])


def test_iid_sampling_and_signs():
    index = draw_index([20000], 100, "iid", True, torch.Generator().manual_seed(0))
    counts = entry_counts(index, 100)
    assert int(counts.sum()) == 20000 and int(counts.max()) > int(counts.min()) + 1
    negative = (index >= 100).float().mean().item()
    assert 0.47 < negative < 0.53
    unsigned = draw_index([20000], 100, "even", False, torch.Generator().manual_seed(0))
    assert int(unsigned.max()) < 100


def test_plain_sampling_reads_the_ring_in_order_from_its_first_entry_per_layer():
    sizes, n = [5, 3, 9], 4
    unsigned = draw_index(sizes, n, "plain", False, torch.Generator().manual_seed(0))
    assert unsigned.tolist() == [0, 1, 2, 3, 0] + [0, 1, 2] + [0, 1, 2, 3, 0, 1, 2, 3, 0]
    # signs are rpg.sign's: the same entries, each with its own drawn sign
    signed = [draw_index(sizes, n, "plain", True, torch.Generator().manual_seed(s))
              for s in (0, 0, 1)]
    assert torch.equal(signed[0] % n, unsigned) and torch.equal(signed[0], signed[1])
    assert not torch.equal(signed[0], signed[2]) and bool((signed[0] >= n).any())


@pytest.mark.parametrize("sampling", ["even", "ring", "plain"])
def test_k_tables_use_every_entry_evenly_over_all_k_slots(sampling):
    """rpg.k: k table slots per generated weight; even and ring sampling spread the k*T
    slots as they spread T with k = 1, and plain reads k consecutive entries per weight."""
    model = apply_rpg(create_model("resnet20", 10), "network", 1000, sampling=sampling, k=3)
    ring = rings_of(model)[0]
    assert ring.index.numel() == 3 * ring.generated
    q, r = divmod(3 * ring.generated, 1000)
    counts = entry_counts(ring.index, 1000)
    if sampling != "plain":
        assert int((counts == q + 1).sum()) == r and int((counts == q).sum()) == 1000 - r
    else:  # weight p of a layer reads entries 3p, 3p+1, 3p+2 (mod N)
        first = ring.layer_index()[0] % 1000
        assert first[:6].tolist() == [0, 1, 2, 3, 4, 5]
        assert first[999:1002].tolist() == [999, 0, 1]
    one = apply_rpg(create_model("resnet20", 10), "network", 1000, sampling=sampling)
    assert torch.equal(rings_of(one)[0].index, draw_index(
        rings_of(one)[0].sizes, 1000, sampling, True,
        torch.Generator().manual_seed(rings_of(one)[0].table_seed)))  # k = 1: the old table


@pytest.mark.parametrize("scope", ["network", "stage", "block", "layer"])
def test_every_scope_has_even_rings_summing_to_params(scope):
    model = apply_rpg(create_model("resnet20", 10), scope, 20000)
    rings = rings_of(model)
    assert sum(r.weight.numel() for r in rings) == 20000
    expected = {"network": 1, "stage": 3, "block": 9, "layer": 18}[scope]
    assert len(rings) == expected
    for ring in rings:
        n = ring.weight.numel()
        q, r = divmod(ring.generated, n)
        counts = entry_counts(ring.index, n)
        assert int((counts == q + 1).sum()) == r and int((counts == q).sum()) == n - r


def test_split_is_proportional_and_exact():
    sizes = {"a": 100, "b": 300, "c": 600}
    assert split_params(10, sizes, "stage") == {"a": 1, "b": 3, "c": 6}
    split = split_params(7, sizes, "stage")
    assert sum(split.values()) == 7 and split["c"] >= split["b"] >= split["a"] >= 1


def test_scope_keys_for_resnets_and_generic_models():
    assert scope_key("layer2.0.downsample.0", "stage") == "layer2"
    assert scope_key("layer2.0.downsample.0", "block") == "layer2.0"
    assert scope_key("stages.1.blocks.2.conv_dw", "stage") == "stages.1"
    assert scope_key("stages.1.blocks.2.conv_dw", "block") == "stages.1.blocks.2"
    assert scope_key("blocks.3.attn.qkv", "block") == "blocks.3"
    assert scope_key("features.3", "stage") == "features"
    assert scope_key("fc", "block") == "fc"
    assert scope_key("layer1.0.conv1", "layer") == "layer1.0.conv1"
    assert scope_key("layer1.0.conv1", "network") == "network"


@pytest.mark.parametrize("name,stages,blocks", [("resnet18", 4, 8), ("timm:resnet18", 4, 8),
                                                ("resnet50", 4, 16)])
def test_stage_and_block_rings_of_resnets(name, stages, blocks):
    assert len(rings_of(apply_rpg(create_model(name, 10), "stage", 10**5))) == stages
    assert len(rings_of(apply_rpg(create_model(name, 10), "block", 10**5))) == blocks


def test_stem_and_head_are_unshared_unless_asked():
    model = apply_rpg(create_model("resnet18", 10), "network", 1000)
    paths = rings_of(model)[0].paths
    assert "conv1" not in paths and "fc" not in paths and "layer1.0.conv1" in paths
    assert isinstance(model.conv1.weight, torch.nn.Parameter)
    shared = apply_rpg(create_model("resnet18", 10), "network", 1000, share_stem=True,
                       share_head=True)
    assert rings_of(shared)[0].paths[0] == "conv1" and rings_of(shared)[0].paths[-1] == "fc"
    assert [n for n, _ in shared.named_parameters() if n.endswith("weight")].count("fc.weight") == 0


_FINGERPRINT = ("import torch; from rpg_train.models import create_model; "
                "from rpg_train.rpg import apply_rpg; from rpg_train.rpg.compact import "
                "tables_fingerprint; m = apply_rpg(create_model('resnet20', 10), 'block', 5000,"
                " seed={seed}); print(tables_fingerprint(m))")


@pytest.mark.slow  # fresh interpreters, one per seed (about 25 s)
def test_tables_are_identical_across_processes_and_depend_on_seed():
    def run(seed):
        return subprocess.run([sys.executable, "-c", _FINGERPRINT.format(seed=seed)],
                              capture_output=True, text=True, check=True).stdout.strip()

    a, b, c = run(7), run(7), run(8)
    assert len(a) == 64 and a == b and a != c
    # k and the offset are part of the recipe: other tables (theta0), another fingerprint
    ks = run("7, k=2"), run("7, k=2"), run("7, offset=True")
    assert ks[0] == ks[1] and len({a, ks[0], ks[2]}) == 3
