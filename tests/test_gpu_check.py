"""scripts/gpu_check.py (`make gpu-check DEVICE=cpu`) runs every stage for real at tiny sizes
and writes a report whose every figure sits beside its target; its deadline skips stages
with a note instead of overrunning."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["## Targets", "## CUDA tests (`pytest -m cuda`)", "## bench_rpg.py",
            "## bench_train.py", "## Images/second", "## Commands"]


def _check(tmp_path, *args):
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu",
                           "--out", str(out), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_the_cpu_variant_measures_every_figure_beside_its_target(tmp_path):
    text, figures = _check(tmp_path, "--budget", "900")  # generous: shared CPUs are slow
    assert figures["notes"] == [], figures["notes"]  # nothing skipped, stopped or failed
    assert all(s in text for s in SECTIONS)
    counts = figures["tests"]["counts"]  # no GPU here: every CUDA test skipped, none failed
    assert set(counts) == {"skipped"} and counts["skipped"] >= 10
    rows = figures["bench_rpg"]
    assert [(r["case"], r["params"]) for r in rows] == [("resnet18-imagenet-32px", 10000),
                                                        ("resnet18-imagenet-32px", 20000)]
    for r in rows:
        assert r["train_step_ratio"] > 0 and r["eval_ratio"] > 0
        assert r["table_bytes_per_generated_weight"] == 4.0
        assert r["table_bytes_per_generated_weight_with_inverse"] == 8.0
    assert [t[0].split(",")[0] for t in figures["targets"]] == [
        "RPG train step / plain", "cached eval / plain", "generator bytes per generated weight "
        "(inverse tables included)"] * 2 + ["engine / bare loop (images/s)"]
    for what, figure, goal, verdict in figures["targets"]:
        value, bound = float(figure.rstrip("x")), float(re.findall(r"[\d.]+", goal)[0])
        assert f"| {what} | {figure} | {goal} | {verdict} |" in text
        assert verdict == "MET" or re.fullmatch(r"MISSED by [\d.]+(x| B) \([\d.]+ %\)", verdict)
        if verdict != "MET":
            missed_by = float(verdict.split()[2].rstrip("xB"))
            assert abs(missed_by - abs(value - bound)) < 2e-3
    train = figures["bench_train"]
    assert train["ratio"] > 0 and figures["targets"][-1][1] == f"{train['ratio']:.3f}x"
    runs = {(r["experiment"], r["compile"]) for r in figures["runs"] if r["img_s"] > 0}
    assert runs == {("imagenet_r18_rpg", False), ("imagenet_r18_dense", False)}
    assert len(figures["commands"]) == 5 and all(c in text for c in figures["commands"])


def test_the_deadline_skips_stages_with_a_note_and_still_writes_the_report(tmp_path):
    text, figures = _check(tmp_path, "--budget", "0")
    assert figures["commands"] == [] and figures["targets"] == []
    assert len(figures["notes"]) == 5 and all(n.startswith("skipped (deadline")
                                              for n in figures["notes"])
    assert all(s in text for s in SECTIONS[:-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out",
                           str(tmp_path / "r.md")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --device cuda: no CUDA")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.md").exists()
