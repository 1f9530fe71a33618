"""python -m rpg_train.export: every format checks itself against the trained model; the
dense file loads into the plain backbone (torchvision's own ResNet) with strict=True; bad
input is one line, exit 2, no file."""
import json
import subprocess
import sys

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from rpg_train.engine import train
from rpg_train.export import example_batch, export, load_trained
from rpg_train.models import create_model
from rpg_train.rpg import load_compact


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import _compose, QUICK

    out = tmp_path_factory.mktemp("run")
    train(_compose([*QUICK, "trainer.max_steps=2"], out_dir=out))
    return out / "last.pt"


@pytest.mark.parametrize("fmt", ["compact", "dense", "torchscript", "onnx"])
def test_every_format_matches_the_trained_model(trained, tmp_path, fmt):
    out = tmp_path / f"model.{fmt}"
    r = export(trained, fmt, out)
    assert out.is_file() and r["bytes"] == out.stat().st_size and r["max_abs_err"] <= 1e-5
    model, spec = load_trained(trained)
    x = example_batch(spec)
    with torch.no_grad():
        want = model(x)
        if fmt == "compact":
            got = load_compact(out).eval()(x)
        elif fmt == "dense":
            plain = create_model(**json.loads((tmp_path / "model.dense.json").read_text())["model"])
            plain.load_state_dict(load_file(out), strict=True)
            got = plain.eval()(x)
        elif fmt == "torchscript":
            got = torch.jit.load(str(out))(x)
        else:
            import onnxruntime as ort
            got = torch.from_numpy(ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0])
    assert torch.allclose(got, want, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file is gone


def test_a_ring_pruned_run_exports_a_sparse_compact_file(tmp_path, quick_cfg):
    from rpg_train.rpg import ring_masks, rings_of

    train(quick_cfg("trainer.max_steps=2", out="plain"))
    train(quick_cfg("rpg.prune.amount=0.75", f"trainer.resume={tmp_path / 'plain' / 'last.pt'}",
                    out="pruned"))
    plain = export(tmp_path / "plain" / "last.pt", "compact", tmp_path / "plain.st")
    pruned = export(tmp_path / "pruned" / "last.pt", "compact", tmp_path / "pruned.st")
    assert pruned["max_abs_err"] <= 1e-5
    assert plain["bytes"] - pruned["bytes"] > 2000 * (4 * 0.75 - 1 / 8) - 1000  # QUICK: ring 2000
    model = load_compact(tmp_path / "pruned.st")
    assert int(sum((~m).sum() for m in ring_masks(model))) == 1500
    assert int(sum((r.weight == 0).sum() for r in rings_of(model))) == 1500


def test_an_offset_run_exports_and_its_checkpoint_holds_no_theta0(tmp_path, quick_cfg):
    train(quick_cfg("trainer.max_steps=2", "rpg.offset=true"))
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["identity"]["rpg"]["offset"] is True
    assert state["model"]["rpg_rings.network.weight"].numel() == 2000  # QUICK's ring
    assert sum(v.numel() for v in state["model"].values()) < 20_000  # no theta0 (267,264)
    for fmt in ("compact", "dense", "onnx"):
        r = export(last, fmt, tmp_path / f"m.{fmt}")
        assert r["max_abs_err"] <= 1e-5, fmt


@pytest.mark.parametrize("bits, block", [(8, None), (4, 64)])
def test_a_quantized_compact_export_is_the_quantized_model(trained, tmp_path, bits, block):
    from rpg_train.rpg import quantize_ring

    plain = export(trained, "compact", tmp_path / "f.st")
    r = export(trained, "compact", tmp_path / "q.st", bits=bits, block=block)
    assert r["max_abs_err"] <= 1e-5 and r["quantization_err"] > 0
    assert plain["bytes"] - r["bytes"] > 2000 * (4 - bits / 8) - 1000  # QUICK: ring 2000
    model, spec = load_trained(trained)
    quantize_ring(model, bits=bits, block=block)
    x = example_batch(spec)
    with torch.no_grad():
        assert torch.equal(load_compact(tmp_path / "q.st").eval()(x), model(x))


def test_dense_export_loads_into_torchvisions_resnet18(tmp_path, quick_cfg):
    train(quick_cfg("model=resnet18", "model.small_input=false", "data.image_size=32",
                    "rpg.params=5000", "trainer.max_steps=1"))
    out = tmp_path / "r18.safetensors"
    export(tmp_path / "run" / "last.pt", "dense", out)
    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(load_file(out), strict=True)
    model, spec = load_trained(tmp_path / "run" / "last.pt")
    x = example_batch(spec)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["format=zip"], "error: format='zip' is not one of: compact, dense, torchscript, onnx"),
    (["format=dense", "ckpt=NOFILE"], "error: ckpt="),
    (["format=dense", "out=/no/such/dir/m.st"], "error: out='/no/such/dir/m.st' is in a folder"),
    (["format=compact", "bits=3"], "error: bits=3 must be 4 or 8"),
    (["format=compact", "bits=eight"], "error: bits='eight' is not an integer"),
    (["format=onnx", "bits=8"], "error: bits=8 quantizes the compact file's rings"),
    (["format=compact", "bit=8"], "error: bit='8' is not an export option"),
])
def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, args, message):
    kw = {"ckpt": str(trained), "out": str(tmp_path / "m.out")}
    kw.update(a.split("=", 1) for a in args)
    if kw["ckpt"] == "NOFILE":
        kw["ckpt"] = str(tmp_path / "junk.pt")
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "rpg_train.export",
                           *(f"{k}={v}" for k, v in kw.items())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.out").exists()
