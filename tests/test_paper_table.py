"""scripts/paper_table.py on hand-written run directories (results.json, config.yaml and
Hydra's .hydra/hydra.yaml naming the experiment): rows, paper numbers, differences, order."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SCRIPTS, load_script

SCRIPT = SCRIPTS / "paper_table.py"




def write_run(path: Path, experiment: str | None, *, model: str, top1: float, ring: int,
              trainable: int, dense: int, seed: int = 0, scope: str = "network",
              epochs: int = 90):
    """A finished run; experiment=None writes no .hydra/ at all, as a run started outside
    Hydra would have."""
    (path / ".hydra").mkdir(parents=True)
    rpg = {"scope": scope, "params": float(ring), "sampling": "even", "sign": True}
    config = {"model": {"name": model}, "rpg": rpg, "trainer": {"seed": seed, "epochs": epochs},
              "data": {"name": "imagenet"}}
    results = {"final_top1": top1, "best_top1": top1 + 0.3, "epochs": epochs, "seed": seed,
               "param_report": {"ring": ring, "trainable": trainable, "dense": dense,
                                "compression": dense / trainable}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "results.json").write_text(json.dumps(results))
    if experiment is not None:
        hydra = {"hydra": {"runtime": {"choices": {"experiment": experiment, "model": model}}}}
        (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))


@pytest.fixture
def run_dirs(tmp_path) -> Path:
    r18 = {"model": "resnet18", "ring": 2359296, "trainable": 2369000, "dense": 11689512}
    write_run(tmp_path / "imagenet" / "r18_rpg" / "seed0", "imagenet_r18_rpg", top1=66.9, **r18)
    write_run(tmp_path / "imagenet" / "r18_rpg" / "seed1", "imagenet_r18_rpg", top1=67.3,
              seed=1, **r18)
    write_run(tmp_path / "imagenet" / "r34", "imagenet_r34_dense", model="resnet34", top1=73.0,
              ring=0, trainable=21797672, dense=21797672, scope="none")
    write_run(tmp_path / "imagenet" / "r34_rpg", "imagenet_r34_rpg", model="resnet34",
              top1=70.26, ring=11160576, trainable=11689512, dense=21797672)
    write_run(tmp_path / "cifar" / "r20", "cifar10_r20", model="resnet20", top1=91.5,
              ring=25000, trainable=27170, dense=269434, epochs=200)
    write_run(tmp_path / "loose", None, model="resnet20", top1=92.0, ring=0, trainable=269434,
              dense=269434, scope="none", epochs=5)
    return tmp_path


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split(" | ")]
            for line in text.splitlines() if line.startswith("| ")]


def test_rows_numbers_and_order(run_dirs, capsys):
    load_script("paper_table").main([str(run_dirs / "imagenet"), str(run_dirs / "cifar"),
                        str(run_dirs / "loose")])
    rows = table_rows(capsys.readouterr().out)
    assert rows[0] == ["row", "paper top-1", "measured final top-1 (mean ± std, n)",
                       "difference (measured − paper)", "best epoch (picked on test)", "ring",
                       "trainable", "dense", "compression", "epochs"]
    assert rows[2:] == [
        ["ResNet18-RPG, ring 2,359,296 (one 512x512x3x3 layer)", "67.2", "67.10 ± 0.28 (n=2)",
         "-0.10", "67.40", "2,359,296", "2,369,000", "11,689,512", "4.93×", "90"],
        ["ResNet34-RPG, ring 11,160,576 (total ≈ ResNet18)", "beats ResNet18 (69.76)",
         "70.26 ± — (n=1)", "+0.50 vs ResNet18 69.76 (the claim)", "70.56", "11,160,576",
         "11,689,512", "21,797,672", "1.86×", "90"],
        ["ResNet34 dense", "73.31 (torchvision reference)", "73.00 ± — (n=1)", "-0.31", "73.30",
         "0", "21,797,672", "21,797,672", "1.00×", "90"],
        ["cifar10_r20: resnet20 RPG", "n/r", "91.50 ± — (n=1)", "—", "91.80", "25,000",
         "27,170", "269,434", "9.92×", "200"],
        ["other: resnet20 dense", "n/r", "92.00 ± — (n=1)", "—", "92.30", "0", "269,434",
         "269,434", "1.00×", "5"],
    ]


def test_a_run_dir_itself_and_its_parent_count_once(run_dirs, capsys):
    seed0 = run_dirs / "imagenet" / "r18_rpg" / "seed0"
    load_script("paper_table").main([str(seed0), str(seed0.parent)])
    rows = table_rows(capsys.readouterr().out)
    assert len(rows) == 3 and rows[2][2] == "67.10 ± 0.28 (n=2)"


def test_command_line_and_missing_dir(run_dirs):
    ok = subprocess.run([sys.executable, str(SCRIPT), str(run_dirs / "cifar")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "| cifar10_r20: resnet20 RPG | n/r |" in ok.stdout
    missing = run_dirs / "nowhere"
    bad = subprocess.run([sys.executable, str(SCRIPT), str(missing)], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0
    assert bad.stderr.strip() == (f"paper_table.py: error: RUN_DIRS '{missing}' does not exist "
                                  "(or is not a directory)")
