"""The large-ring cost: a generated layer costs passes over its own weights, never over the
ring, and generates exactly the weights the doubled ring `cat(ring, -ring)` gave."""
import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from rpg_train.models import create_model
from rpg_train.rpg import apply_rpg, rings_of


def _doubled_ring_weight(ring, position):
    """The forward as it was: a gather from cat(ring, -ring), scaled, plus theta0."""
    w, index = ring.weight.detach(), ring.layer_index()[position]
    out = torch.cat([w, -w]).index_select(0, index).mul_(ring.scales[position])
    if ring.theta0 is not None:
        out.add_(ring.theta0.narrow(0, ring.starts[position], index.numel()))
    return out.view(ring.shapes[position])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kw", [{}, {"sign": False}, {"offset": True}, {"sampling": "plain"}])
def test_generated_weights_are_bit_equal_to_the_doubled_ring_gather(dtype, kw):
    torch.manual_seed(0)
    model = apply_rpg(create_model("resnet20", 10), "stage", 5000, **kw).to(dtype)
    for ring in rings_of(model):
        with torch.no_grad():
            ring.weight.normal_()  # offset rings start at 0: give every entry a value
        for position in range(len(ring.sizes)):
            assert torch.equal(ring.generate(position).detach(),
                               _doubled_ring_weight(ring, position))


def test_no_op_of_a_training_step_allocates_a_doubled_ring():
    n = 70_000  # the ring larger than either layer (36,864 weights each)
    model = apply_rpg(nn.Sequential(nn.Conv2d(64, 64, 3), nn.Conv2d(64, 64, 3), nn.Flatten()),
                      "network", n, share_stem=True, share_head=True)
    x = torch.randn(2, 64, 5, 5)
    model(x).sum().backward()  # tables drawn outside the profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x).sum().backward()
    # the largest single allocation: the ring's gradient (4N bytes) is the one ring-sized
    # buffer; the doubled ring cat(ring, -ring) and its gradient were 8N each
    largest = max(e.self_cpu_memory_usage for e in prof.events())
    assert largest <= 4 * n, [(e.name, e.self_cpu_memory_usage) for e in prof.events()
                              if e.self_cpu_memory_usage > 4 * n]
