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


def test_the_median_interval_is_the_binomial_order_statistics():
    from conftest import load_script

    median_ci = load_script("bench_rpg").median_ci
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # 5 values: at most 93.75 %
    six = [6.0, 1.0, 5.0, 2.0, 4.0, 3.0]
    assert median_ci(six) == (1.0, 6.0)  # P(B(6, 1/2) = 0) = 1/64 <= 2.5 %
    # n = 31: P(B <= 9) = 1.47 % <= 2.5 % < P(B <= 10) = 3.54 %: the 10th and 22nd values
    assert median_ci([float(v) for v in range(31, 0, -1)]) == (10.0, 22.0)
    assert median_ci(list(range(31)), level=0.5) == (13, 17)  # P(B <= 13) = 23.7 % <= 25 %
    with pytest.raises(ValueError, match=r"^level=1.5 is not in \(0, 1\)$"):
        median_ci(six, level=1.5)
