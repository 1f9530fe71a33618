"""scripts/aggregate.py on a sweep written by hand (results.json + config.yaml, no training):
the grouping over seeds, the exact table strings, the DoF-law fit and the outputs' formats."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SCRIPTS, load_script

SCRIPT = SCRIPTS / "aggregate.py"
DENSE = 269434


load = load_script


def write_run(path: Path, *, top1: float, trainable: int, seed: int = 0, ring: int = 0,
              scope: str = "network", sampling: str = "even", sign: bool = True,
              width: float | None = None, prune: dict | None = None, extra: dict | None = None):
    """A finished run as the trainer leaves it. width=None leaves model.width out, as older
    runs do; prune gives the pruning baseline's config and results."""
    path.mkdir(parents=True)
    model = {"name": "resnet20"} | ({} if width is None else {"width": width})
    rpg = {"scope": scope, "params": float(ring), "seed": 0, "sampling": sampling, "sign": sign}
    config = {"model": model, "rpg": rpg, "data": {"name": "fashion_mnist"},
              "trainer": {"seed": seed, "epochs": 5}}
    results = {"best_top1": top1 + 1, "final_top1": top1, "final_top5": 99.0, "epochs": 5,
               "param_report": {"ring": ring, "trainable": trainable, "dense": DENSE,
                                "compression": DENSE / trainable},
               "model": {"name": "resnet20"}, "rpg": rpg, "data": "fashion_mnist"}
    if prune is not None:
        config["prune"] = {"init": "dense/last.pt", "params": float(prune["nonzero"])}
        results["prune"] = prune
        results["epochs"] = prune["finetune_epochs"]
    results |= extra or {}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "results.json").write_text(json.dumps(results))


def rpg_top1(dof: int, seed: int) -> float:
    """Exactly on 50 + 10*log10(DoF), -0.5 for seed 0 and +0.5 for seed 1."""
    return 50 + 10 * math.log10(dof) + (0.5 if seed else -0.5)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep") / "fmnist"
    for dof in (1000, 10000, 100000):
        for seed in (0, 1):
            extra = {"selected_top1": 99.0 + seed, "selected_epoch": 4} if dof == 100000 else {}
            write_run(root / "dof" / f"rpg.params={dof},trainer.seed={seed}", seed=seed,
                      top1=rpg_top1(dof, seed), trainable=dof, ring=dof - 100, extra=extra)
    write_run(root / "dof" / "rpg=none,trainer.seed=0", top1=95.0, trainable=DENSE,
              scope="none")
    for seed, top1 in ((0, 92.9), (1, 93.3)):
        write_run(root / "width" / "0.5" / f"seed={seed}", seed=seed, top1=top1,
                  trainable=70000, scope="none", width=0.5)
    write_run(root / "width" / "0.25" / "seed=0", top1=90.0, trainable=18000, scope="none",
              width=0.25)
    # param_report of a pruned model counts non-zero weights plus the unpruned parameters
    write_run(root / "prune" / "seed=0", top1=85.0, trainable=10000, scope="none",
              prune={"nonzero": 7830, "finetune_epochs": 3, "init_epochs": 5})
    unfinished = root / "dof" / "rpg.params=1000000,trainer.seed=0"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("model: {name: resnet20}\n")
    (unfinished / ".hydra" / "config.yaml").write_text("model: {name: resnet20}\n")
    return root


def aggregate(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def out(sweep, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out_dir = tmp_path_factory.mktemp("out")
    proc = aggregate(sweep, "--out", out_dir)
    assert proc.returncode == 0, proc.stderr
    return out_dir, proc


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_fit_recovers_the_law(out):
    fit = json.loads((out[0] / "fit.json").read_text())
    assert list(fit) == ["resnet20 RPG"]
    # six points at +-0.5 around the line: residual 6 * 0.25; total 2 * (10.5^2 + 9.5^2 + 0.5^2)
    expected_r2 = 1 - 1.5 / 401.5
    assert fit["resnet20 RPG"] == pytest.approx({"a": 50.0, "b": 10.0, "r2": expected_r2,
                                                 "n": 6})


def test_summary_markdown_rows(out):
    text = (out[0] / "summary.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == ("| method | model | trainable | ring | seeds | final top-1 (mean ± std) "
                        "| best epoch (picked on test) | held-out-selected top-1 | epochs |")
    assert lines[2:] == [
        "| dense | resnet20 | 269,434 | 0 | 1 | 95.00 ± — | 96.00 | — | 5 |",
        "| pruning | resnet20 | 10,000 | 0 | 1 | 85.00 ± — | 86.00 | — | 5+3 |",
        "| RPG | resnet20 | 1,000 | 900 | 2 | 80.00 ± 0.71 | 81.00 | — | 5 |",
        "| RPG | resnet20 | 10,000 | 9,900 | 2 | 90.00 ± 0.71 | 91.00 | — | 5 |",
        "| RPG | resnet20 | 100,000 | 99,900 | 2 | 100.00 ± 0.71 | 101.00 | 99.50 | 5 |",
        "| width | resnet20 | 18,000 | 0 | 1 | 90.00 ± — | 91.00 | — | 5 |",
        "| width | resnet20 | 70,000 | 0 | 2 | 93.10 ± 0.28 | 94.10 | — | 5 |",
    ]
    assert f"Fit resnet20 RPG: top-1 = 50.00 + 10.00·log10(DoF), R² = " \
           f"{1 - 1.5 / 401.5:.4f} (n = 6 runs)" in text
    assert out[1].stdout.strip() == text.strip()  # the same table goes to stdout


def test_summary_csv(out):
    rows = read_csv(out[0] / "summary.csv")
    assert len(rows) == 7
    rpg = [r for r in rows if r["method"] == "RPG"]
    assert [int(r["trainable"]) for r in rpg] == [1000, 10000, 100000]
    assert [float(r["final_top1_mean"]) for r in rpg] == pytest.approx([80.0, 90.0, 100.0])
    assert float(rpg[0]["final_top1_std"]) == pytest.approx(math.sqrt(0.5), abs=1e-4)
    assert rpg[2]["selected_top1_mean"] == "99.5" and rpg[0]["selected_top1_mean"] == ""
    dense = next(r for r in rows if r["method"] == "dense")
    assert (dense["n"], dense["final_top1_std"]) == ("1", "")
    pruning = next(r for r in rows if r["method"] == "pruning")
    assert (pruning["trainable"], pruning["epochs"]) == ("10000", "5+3")


def test_runs_csv(out):
    rows = read_csv(out[0] / "runs.csv")
    assert len(rows) == 11  # the unfinished run is not one
    assert sorted(r["method"] for r in rows) == ["RPG"] * 6 + ["dense", "pruning"] + ["width"] * 3
    first = rows[0]  # sorted like the summary: dense first
    assert (first["method"], first["width"], first["scope"], first["seed"]) == \
           ("dense", "1.0", "none", "0")
    seeds = [(r["trainable"], r["seed"], float(r["final_top1"])) for r in rows
             if r["method"] == "RPG"][:2]
    assert seeds == [("1000", "0", pytest.approx(79.5)), ("1000", "1", pytest.approx(80.5))]
    pruning = next(r for r in rows if r["method"] == "pruning")
    assert (pruning["finetune_epochs"], pruning["init_epochs"]) == ("3", "5")
    assert all(Path(r["dir"]).joinpath("results.json").is_file() for r in rows)


def test_unfinished_run_is_reported(out):
    assert "skipped 1 unfinished run dir(s)" in out[1].stderr
    assert "rpg.params=1000000,trainer.seed=0" in out[1].stderr


def test_plot_is_a_png(out):
    data = (out[0] / "top1_vs_params.png").read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("scope, sampling, sign, width, prune, label", [
    ("network", "even", True, None, False, "RPG"),
    ("stage", "even", True, None, False, "RPG stage scope"),
    ("network", "even", False, None, False, "RPG no sign"),
    ("network", "ring", True, None, False, "RPG ring sampling"),
    ("layer", "ring", False, None, False, "RPG layer scope no sign ring sampling"),
    ("network", "iid", True, None, False, "hashing (iid)"),
    ("block", "iid", True, None, False, "hashing (iid) block scope"),
    ("none", "even", True, None, False, "dense"),
    ("none", "even", True, 1.0, False, "dense"),
    ("none", "even", True, 0.5, False, "width"),
    ("none", "even", True, None, True, "pruning"),
])
def test_method_label(scope, sampling, sign, width, prune, label):
    method_label = load("_runs").method_label
    model = {"name": "resnet20"} | ({} if width is None else {"width": width})
    config = {"model": model, "rpg": {"scope": scope, "sampling": sampling, "sign": sign},
              "prune": {"init": "last.pt" if prune else None}}
    assert method_label(config, {}) == label
    # results.json alone (no config.yaml) gives the same label; its "prune" marks pruning
    results = {"model": model, "rpg": config["rpg"]} | ({"prune": {"nonzero": 1}} if prune else {})
    assert method_label({}, results) == label


@pytest.mark.parametrize("finetune, label", [(1, "RPG + ring pruning"),
                                             (0, "RPG + ring pruning, not fine-tuned")])
def test_ring_pruned_runs_have_their_own_label(finetune, label):
    rpg = {"scope": "network", "prune": {"amount": 0.5, "finetune_epochs": finetune}}
    assert load("_runs").method_label({}, {"model": {"name": "resnet20"}, "rpg": rpg}) == label


def test_fit_without_variance_has_no_r2():
    fit = load("aggregate").fit_log10([10, 100, 1000], [70.0, 70.0, 70.0])
    assert fit == {"a": 70.0, "b": 0.0, "r2": None, "n": 3}


def test_missing_dir_is_one_clear_line(tmp_path):
    missing = tmp_path / "no-such-sweep"
    proc = aggregate(missing, "--out", tmp_path / "out")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"aggregate.py: error: SWEEP_DIR '{missing}' does not exist (or is not a directory)"]
    assert not (tmp_path / "out").exists()


def test_dir_without_finished_run_is_an_error(tmp_path):
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "config.yaml").write_text("model: {name: resnet20}\n")
    proc = aggregate(tmp_path / "sweep", "--out", tmp_path / "out")
    assert proc.returncode != 0
    assert f"SWEEP_DIR '{tmp_path / 'sweep'}' holds no finished run" in proc.stderr


def test_wandb_offline_run(sweep, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["WANDB_DIR"] = str(tmp_path)
    proc = aggregate(sweep, "--out", tmp_path / "out", "--wandb", "--wandb-mode", "offline",
                     env=env)
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    run = runs[0]
    assert not (tmp_path / "out" / "wandb").exists()  # WANDB_DIR wins over --out
    assert next(run.glob("run-*.wandb")).stat().st_size > 0
    tables = run / "files" / "media" / "table"
    runs_table = json.loads(next(tables.glob("runs_*.table.json")).read_text())
    assert len(runs_table["data"]) == 11 and "final_top1" in runs_table["columns"]
    assert len(json.loads(next(tables.glob("summary_*.table.json")).read_text())["data"]) == 7
    assert next((run / "files" / "media" / "images").glob("top1_vs_params_png_*.png"))
    assert f"W&B offline run in {run}" in proc.stderr


def test_a_diverged_run_counts_as_unfinished(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "ok", top1=90.0, trainable=1000, ring=900)
    bad = root / "bad"
    write_run(bad, top1=10.0, trainable=1000, ring=900)
    (bad / "results.json").write_text(json.dumps({"status": "diverged", "diverged_step": 7}))
    proc = aggregate(root, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 unfinished run dir(s)" in proc.stderr and str(bad) in proc.stderr
    assert len(read_csv(tmp_path / "out" / "runs.csv")) == 1
