"""python -m rpg_train.export: every format checks itself against the trained model; the
dense file loads into the plain backbone (torchvision's own ResNet) with strict=True; bad
input is one line, exit 2, no file."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from rpg_train.engine import train
from rpg_train.errors import UserError
from rpg_train.export import example_batch, export, load_trained
from rpg_train.models import create_model
from rpg_train.rpg import load_compact


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import QUICK, _compose

    out = tmp_path_factory.mktemp("run")
    train(_compose([*QUICK, "trainer.max_steps=2"], out_dir=out))
    return out / "last.pt"


@pytest.fixture
def umask():
    """umask(mask): set the process's umask for this test."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


@pytest.mark.parametrize("fmt", ["compact", "dense", "torchscript", "onnx"])
def test_every_format_matches_the_trained_model(trained, tmp_path, fmt, umask):
    out = tmp_path / f"model.{fmt}"
    umask(0o027)
    r = export(trained, fmt, out)
    assert out.is_file() and r["bytes"] == out.stat().st_size and r["max_abs_err"] <= 1e-5
    assert out.stat().st_mode & 0o777 == 0o640  # as any file the user writes, not 0600
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
            session = ort.InferenceSession(str(out))
            got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
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


def test_exported_files_are_readable_like_any_other_file(trained, tmp_path, umask):
    export(trained, "dense", tmp_path / "m.st")
    for path in (tmp_path / "m.st", tmp_path / "m.st.json"):
        assert path.stat().st_mode & 0o777 == 0o644


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run's directory, with a best.pt beside last.pt."""
    run = tmp_path / "run"
    shutil.copytree(trained.parent, run)
    shutil.copy(run / "last.pt", run / "best.pt")
    return run


@pytest.mark.parametrize("out, fmt, reason", [
    ("{run}/last.pt", "compact", "is the checkpoint being exported; write the export to "
                                 "another file"),
    ("{run}/../run/./last.pt", "onnx", "is the checkpoint being exported"),
    ("{run}/best.pt", "compact", "would replace best.pt, a file of the run (or a checkpoint); "
                                 "write the export to another file"),
    ("{run}/last.prev.pt", "torchscript", "would replace last.prev.pt, a file of the run"),
    ("{run}/results", "dense", "would replace results.json, a file of the run"),
    ("{tmp}/copy.pt", "compact", "would replace copy.pt, a file of the run (or a checkpoint)"),
    ("{run}", "compact", "is a folder; give the file to write in it"),
    ("", "compact", "is empty; give the file to write"),
    (" ", "dense", "is empty; give the file to write"),
])
def test_an_export_never_replaces_a_checkpoint_or_a_run_file(run, tmp_path, out, fmt, reason):
    shutil.copy(run / "last.pt", tmp_path / "copy.pt")  # another checkpoint, elsewhere
    (run / "results.json").write_text("{}")
    before = {p: p.read_bytes() for p in [*run.iterdir(), tmp_path / "copy.pt"]}
    out = out.format(run=run, tmp=tmp_path)
    with pytest.raises(UserError) as err:
        export(run / "last.pt", fmt, out)
    assert str(err.value) == f"out={out!r} {reason}" or str(err.value).startswith(
        f"out={out!r} {reason}")
    assert {p: p.read_bytes() for p in [*run.iterdir(), tmp_path / "copy.pt"]} == before


def test_an_unwritable_place_is_one_line(trained):
    with pytest.raises(UserError, match=r"^out='/proc/m.st' (is in a folder this user cannot "
                                        r"write to|cannot be written \(.*\))$"):
        export(trained, "compact", "/proc/m.st")


def test_a_checkpoint_with_non_finite_weights_is_refused(trained, tmp_path):
    state = torch.load(trained, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(UserError) as err:
        export(tmp_path / "nan.pt", "compact", tmp_path / "m.st")
    assert str(err.value) == (f"ckpt='{tmp_path / 'nan.pt'}' holds non-finite weights ({key}): "
                              "the run diverged; export an earlier checkpoint")
    assert not (tmp_path / "m.st").exists()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A dense run (rpg=none) and the pruning baseline started from it: their last.pt."""
    from conftest import QUICK, _compose

    out = tmp_path_factory.mktemp("baseline")
    train(_compose([*QUICK, "rpg=none", "model.name=resnet20"], out_dir=out / "dense"))
    train(_compose([*QUICK, "rpg=none", "model.name=resnet20", "prune.params=3000",
                    f"prune.init={out / 'dense' / 'last.pt'}"], out_dir=out / "pruned"))
    return out / "dense" / "last.pt", out / "pruned" / "last.pt"


def test_bits_on_a_checkpoint_without_rings_is_refused(pruned, tmp_path):
    for ckpt in pruned:
        with pytest.raises(UserError, match=r"^bits=8 quantizes RPG rings, and this checkpoint "
                                            r"has none \(rpg=none\); export it without bits$"):
            export(ckpt, "compact", tmp_path / "q.st", bits=8)
    assert not (tmp_path / "q.st").exists()


def test_the_pruning_baseline_exports_as_compact_and_dense(pruned, tmp_path):
    from rpg_train.engine.dense_pruning import pruned_layers

    ckpt = pruned[1]
    model, spec = load_trained(ckpt)
    x = example_batch(spec)
    with torch.no_grad():
        want = model(x)
    assert export(ckpt, "compact", tmp_path / "p.st")["max_abs_err"] <= 1e-5
    assert export(ckpt, "dense", tmp_path / "p.dense")["max_abs_err"] <= 1e-5
    plain = create_model(**spec).eval()
    plain.load_state_dict(load_file(tmp_path / "p.dense"), strict=True)
    layers = {id(m) for m in pruned_layers(model)}
    kept = sum(int(torch.count_nonzero(m.weight)) for n, m in plain.named_modules()
               if id(dict(model.named_modules())[n]) in layers)
    assert kept == 3000
    with torch.no_grad():
        assert torch.allclose(plain(x), want, atol=1e-5)
        assert torch.allclose(load_compact(tmp_path / "p.st").eval()(x), want, atol=1e-5)


def test_evaluate_scores_the_whole_test_set_whatever_the_run_limited(quick_cfg, tmp_path,
                                                                     capsys):
    from rpg_train.data import build_data
    from rpg_train.engine import checkpoint
    from rpg_train.evaluate import checkpoint_config, evaluate_checkpoint, main

    train(quick_cfg("trainer.limit_batches=1", "data.eval_batch_size=8"))  # as debug=fast
    path = tmp_path / "run" / "last.pt"
    model, _ = load_trained(path)
    data = build_data(checkpoint_config(checkpoint.load(path)).data, "cpu", 0, with_train=False)
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.val)
    ev = evaluate_checkpoint(path)
    assert ev["samples"] == 32 and ev["top1"] == 100 * hits / 32  # QUICK: 32 test images
    assert evaluate_checkpoint(path, ["trainer.limit_batches=2"])["samples"] == 16
    assert main([f"ckpt={path}"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 32
