"""Compact files and every bad input of the RPG core."""
import json

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rpg_train.errors import UserError
from rpg_train.models import available, create_model
from rpg_train.rpg import apply_rpg, load_compact, param_report, save_compact


def _trained(name="resnet20", **kw):
    torch.manual_seed(0)
    model = apply_rpg(create_model(name, 10), **{"scope": "block", "params": 5000, **kw})
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * p.grad)
    return model.eval()


@pytest.mark.parametrize("kw", [dict(), dict(sampling="iid", sign=False, seed=5),
                                dict(scope="network", share_stem=True, share_head=True),
                                dict(sampling="plain", sign=False), dict(sampling="plain"),
                                dict(k=3, seed=2), dict(k=2, offset=True, sampling="iid")])
def test_compact_round_trip_is_bit_exact_and_small(tmp_path, kw):
    model = _trained(**kw)
    path = tmp_path / "m.safetensors"
    save_compact(model, path)
    loaded = load_compact(path).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    buffers = sum(b.numel() for b in model.buffers())
    limit = 4 * param_report(model)["trainable"] + 4 * buffers + 64 * 1024
    assert path.stat().st_size <= limit
    assert loaded.rpg_spec == model.rpg_spec


def test_compact_resnet18_stays_within_size_bound(tmp_path):
    model = apply_rpg(create_model("resnet18", 1000), "network", 10**5)
    path = tmp_path / "r18.safetensors"
    save_compact(model, path)
    rep = param_report(model)
    buffers = sum(b.numel() for b in model.buffers())
    assert path.stat().st_size <= 4 * rep["trainable"] + 4 * buffers + 64 * 1024


def test_compact_refuses_truncated_foreign_and_mismatched_files(tmp_path):
    model = _trained()
    good = tmp_path / "good.safetensors"
    save_compact(model, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError,
                       match=r"path='.*truncated.safetensors' is not a readable compact"):
        load_compact(truncated)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match=r"path='.*garbage.bin' is not a readable compact"):
        load_compact(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not a compact RPG file"):
        load_compact(foreign)
    # same tensors, recipe edited to another seed: tables differ from the fingerprint
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    rpg = json.loads(meta["rpg"])
    rpg["seed"] += 1
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(good)), str(edited), metadata={**meta, "rpg": json.dumps(rpg)})
    with pytest.raises(UserError, match="rebuilds different index tables"):
        load_compact(edited)


def test_save_compact_needs_a_registry_model(tmp_path):
    model = apply_rpg(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)), "network", 10)
    with pytest.raises(ValueError, match="create_model"):
        save_compact(model, tmp_path / "x.safetensors")


def _r20():
    return create_model("resnet20", 10)


GENERATED_R20 = sum(p.numel() for n, p in _r20().named_parameters()
                    if n.endswith("weight") and p.dim() == 4) - 3 * 16 * 9


@pytest.mark.parametrize("params,match", [
    (0, r"params=0 is out of range: scope='network' generates \d+ weights, so params must be "
        r"in \[1, \d+\]"),
    (-5, r"params=-5 is out of range"),
    (1.5, r"params=1.5 is neither an integer nor a fraction in \(0, 1\)"),
    ("abc", r"params='abc' is not a ring size; give an integer"),
    (True, r"params=True is not a ring size"),
    (float("nan"), r"params=nan is neither an integer nor a fraction"),
    (GENERATED_R20 + 1, rf"params={GENERATED_R20 + 1} is out of range.*\[1, {GENERATED_R20}\]"),
    (1.0, rf"^params=1.0 is ambiguous \(a fraction is in \(0, 1\)\); give the exact count "
          rf"{GENERATED_R20} for a ring as large as the layers$"),
])
def test_bad_params(params, match):
    with pytest.raises(UserError, match=match):
        apply_rpg(_r20(), "network", params)


def test_integral_float_params_are_accepted():
    assert param_report(apply_rpg(_r20(), "network", 1e4))["ring"] == 10_000


def test_a_ring_as_large_as_the_layers_is_allowed():
    """params = T (T/N = 1): with even sampling every entry is read exactly once."""
    for scope in ("network", "stage"):
        model = apply_rpg(_r20(), scope, GENERATED_R20)
        rep = param_report(model)
        assert rep["ring"] == rep["generated"] == GENERATED_R20
        counts = sum(torch.bincount((r.index % r.weight.numel()).long()).tolist().count(1)
                     for r in model.rpg_rings.values())
        assert counts == GENERATED_R20


def test_local_ring_with_zero_entries():
    with pytest.raises(UserError, match=r"params=3 leaves the layer ring .* with 0 entries; "
                                         r"scope='layer' needs params >= \d+"):
        apply_rpg(_r20(), "layer", 3)


@pytest.mark.parametrize("kw,match", [
    (dict(scope="global", params=10),
     r"scope='global' is not valid; choose one of: network, stage, block, layer, none"),
    (dict(scope="network", params=10, sampling="hash"),
     r"sampling='hash' is not valid; choose one of: even, ring, iid, plain$"),
])
def test_unknown_scope_and_sampling(kw, match):
    with pytest.raises(UserError, match=match):
        apply_rpg(_r20(), **kw)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2"])
def test_bad_k(k):
    with pytest.raises(UserError, match=rf"^k={k!r} must be an integer of at least 1 "
                                        r"\(ring entries per weight\)$"):
        apply_rpg(_r20(), "network", 100, k=k)


def test_k_counts_are_exact():
    rep, one = (param_report(apply_rpg(_r20(), "stage", 5000, k=k)) for k in (4, 1))
    assert rep == one and rep["ring"] == 5000 and rep["generated"] == GENERATED_R20


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="name='resnet19' is not a known model; choose one of: "
                                         + ", ".join(available())):
        create_model("resnet19", 10)
    with pytest.raises(ValueError, match="name='timm:no_such_net'"):
        create_model("timm:no_such_net", 10)


def test_nothing_to_generate_and_twice():
    with pytest.raises(UserError, match="scope='network' finds no conv or linear weight to "
                                        "generate in Sequential"):
        apply_rpg(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "network", 5)
    model = apply_rpg(_r20(), "network", 100)
    with pytest.raises(RuntimeError, match="already has RPG rings"):
        apply_rpg(model, "network", 100)


def test_scope_none_returns_the_model_untouched():
    model = _r20()
    before = param_report(model)
    assert apply_rpg(model, "none", 123) is model and param_report(model) == before


def _rewritten(tmp_path, source, meta=None, drop=(), tensors=None):
    """`source` written again with header fields replaced (meta), removed (drop) or tensors
    replaced: what an edited or damaged file holds."""
    with safe_open(str(source), "pt") as f:
        head = {**f.metadata(), **(meta or {})}
    out = tmp_path / "edited.safetensors"
    save_file(tensors or load_file(str(source)), str(out),
              metadata={k: v for k, v in head.items() if k not in drop})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A plain, an int8-quantized and a pruned compact file of the same model."""
    from rpg_train.rpg import prune_ring, quantize_ring

    tmp_path, out = tmp_path_factory.mktemp("compact"), {}
    for kind in ("plain", "quant", "sparse"):
        model = _trained()
        if kind == "quant":
            quantize_ring(model, bits=8)
        if kind == "sparse":
            prune_ring(model, 0.5)
        out[kind] = tmp_path / f"{kind}.safetensors"
        save_compact(model, out[kind])
    return out


def _first_entry(path, field):
    """The first tensor named in the header's quant or sparse field, and its entry count."""
    with safe_open(str(path), "pt") as f:
        return next(iter(json.loads(f.metadata()[field]).items()))


@pytest.mark.parametrize("kind, edit, reason", [
    ("plain", dict(drop=["model"]), "has a damaged header: it lacks 'model'"),
    ("plain", dict(meta={"model": "{not json"}), "has a damaged header: 'model' is not JSON"),
    ("plain", dict(meta={"model": '{"name": "resnet20", "num_classes": "ten"}'}),
     "has a damaged header: model num_classes='ten' is not a positive integer"),
    ("plain", dict(meta={"model": '{"name": "resnet20", "num_classes": 1000000000000}'}),
     "does not match its header: fc.weight is torch.float32 (10, 64), the header's model "
     "needs torch.float32 (1000000000000, 64)"),
    ("plain", dict(meta={"rpg": "[1, 2]"}),
     "has a damaged header: 'rpg' is neither null nor an object with 'scope' and 'params'"),
    ("plain", dict(meta={"rpg": '{"scope": "block", "params": 5000, "sampling": "hash"}'}),
     "has a recipe this version cannot rebuild (sampling='hash' is not valid; choose one of"),
    ("plain", dict(meta={"rpg": '{"scope": "block", "params": 5000, "colour": 1}'}),
     "has a recipe this version cannot rebuild (apply_rpg() got an unexpected keyword "
     "argument 'colour')"),
    ("plain", dict(meta={"rpg": '{"scope": "block", "params": 5000, "sign": "no"}'}),
     "has a damaged header: rpg sign='no' is not true or false"),
    ("plain", dict(drop=["fingerprint"]), "has a damaged header: fingerprint=None is not a "
                                          "sha256 hex digest"),
    ("quant", dict(meta={"quant": "[]"}), "has a damaged header: 'quant' is not an object"),
    ("quant", dict(meta={"quant": '{"KEY": {"bits": 3, "block": 1, "n": 5000}}'}),
     "has a damaged header: quant KEY: bits=3, block=1 (bits must be 4 or 8"),
    ("quant", dict(meta={"quant": '{"KEY": {"bits": 8, "block": 5000, "n": 1000000000000}}'}),
     "does not match its header: quant KEY has n=1000000000000, the model's has N entries"),
    ("sparse", dict(meta={"sparse": '{"KEY": {"n": 1000000000000}}'}),
     "does not match its header: sparse KEY has n=1000000000000, the model's has N entries"),
])
def test_a_tampered_header_is_one_line_before_any_allocation(files, tmp_path, kind, edit,
                                                             reason):
    source = files[kind]
    if kind != "plain":
        key, entry = _first_entry(source, kind)
        edit = {k: {f: v.replace("KEY", key) for f, v in d.items()} if k == "meta" else d
                for k, d in edit.items()}
        reason = reason.replace("KEY", key).replace("N entries", f"{entry['n']} entries")
    edited = _rewritten(tmp_path, source, **edit)
    with pytest.raises(UserError) as err:
        load_compact(edited)
    assert str(err.value).startswith(f"path='{edited}' {reason}"), str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_tensors_that_do_not_match_the_header_are_one_line(files, tmp_path):
    tensors = load_file(str(files["plain"]))
    extra = _rewritten(tmp_path, files["plain"], tensors={**tensors, "x": torch.zeros(2)})
    with pytest.raises(UserError, match=r"does not match its header: it holds x, which the "
                                        r"model has not$"):
        load_compact(extra)
    del tensors["fc.bias"]
    missing = _rewritten(tmp_path, files["plain"], tensors=tensors)
    with pytest.raises(UserError, match=r"does not match its header: it lacks the tensor "
                                        r"fc.bias$"):
        load_compact(missing)
