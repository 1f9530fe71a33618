"""The benchmark scripts run and report what they say (their targets are checked by hand,
on a quiet machine: timing does not belong in unit tests)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _json_line(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_train_compares_the_engine_with_a_bare_loop():
    out = _json_line("scripts/bench_train.py", "--steps", "2", "--pairs", "1",
                     "data.image_size=16", "rpg.params=2000")
    assert (out["model"], out["rpg"], out["batch"], out["steps"]) == ("resnet20", "network", 128, 2)
    assert out["engine_img_s"] > 0 and out["bare_img_s"] > 0
    assert out["ratio"] == pytest.approx(out["engine_img_s"] / out["bare_img_s"], rel=0.01)


def test_bench_data_compares_the_imagenet_loader_with_a_bare_one(tmp_path):
    out = _json_line("scripts/bench_data.py", "--images", "16", "--batch", "4", "--epochs", "1",
                     "--workers", "0", "--root", str(tmp_path))
    assert len(list((tmp_path / "train").rglob("*.JPEG"))) == 16
    assert (out["images"], out["batch"], out["workers"]) == (16, 4, 0)
    assert out["ours_img_s"] > 0 and out["bare_img_s"] > 0 and out["ratio"] > 0
