"""scripts/aggregate.py on sweeps written by hand (results.json + config.yaml, no training):
the grouping over seeds, the failure count, the exact table strings, the DoF-law fits, the
paired differences and the outputs' formats."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SCRIPTS, load_script

SCRIPT = SCRIPTS / "aggregate.py"
DENSE = 269434


load = load_script


def merge(tree: dict, extra: dict) -> dict:
    """tree with extra's leaves set, nested dicts merged."""
    out = dict(tree)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_run(path: Path, *, top1: float, trainable: int, seed: int = 0, ring: int = 0,
              scope: str = "network", sampling: str = "even", sign: bool = True,
              width: float | None = None, prune: dict | None = None, extra: dict | None = None,
              config_extra: dict | None = None, generated: int | None = None):
    """A finished run as the trainer leaves it. width=None leaves model.width out, as older
    runs do; prune gives the pruning baseline's config and results; config_extra sets more
    config.yaml keys."""
    path.mkdir(parents=True)
    model = {"name": "resnet20"} | ({} if width is None else {"width": width})
    rpg = {"scope": scope, "params": float(ring), "seed": 0, "sampling": sampling, "sign": sign}
    config = {"model": model, "rpg": rpg, "data": {"name": "fashion_mnist"},
              "trainer": {"seed": seed, "epochs": 5}}
    config = merge(config, config_extra or {})
    results = {"best_top1": top1 + 1, "final_top1": top1, "final_top5": 99.0, "epochs": 5,
               "param_report": {"ring": ring, "trainable": trainable, "dense": DENSE,
                                "compression": DENSE / trainable, "generated": generated},
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
                      top1=rpg_top1(dof, seed), trainable=dof, ring=dof - 100, extra=extra,
                      config_extra={"logger": {"group": "runs/fmnist/dof"}})
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
    """Three sizes: the log-linear fit over all of them, and no saturating fit (three
    parameters through three sizes would say nothing)."""
    fit = json.loads((out[0] / "fit.json").read_text())
    assert list(fit) == ["resnet20 RPG"]
    # six points at +-0.5 around the line: residual 6 * 0.25; total 2 * (10.5^2 + 9.5^2 + 0.5^2)
    expected_r2 = 1 - 1.5 / 401.5
    assert fit["resnet20 RPG"]["log10"] == pytest.approx({"a": 50.0, "b": 10.0,
                                                          "r2": expected_r2, "n": 6})
    assert fit["resnet20 RPG"]["saturating"] is None
    assert fit["resnet20 RPG"]["log10_sizes"] == [1000, 10000, 100000]


def tables(text: str) -> list[list[str]]:
    """The Markdown tables of a summary, each as its lines."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("| "):
            current.append(line)
        elif current:
            found, current = found + [current], []
    return found


def test_summary_markdown_rows(out, sweep):
    text = (out[0] / "summary.md").read_text()
    lines = tables(text)[0]
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
    assert f"Fit resnet20 RPG, log-linear over 1,000 to 100,000 trainable: top-1 = 50.00 + " \
           f"10.00·log10(DoF), R² = {1 - 1.5 / 401.5:.4f} (n = 6 runs)" in text
    assert text.splitlines()[0] == (
        "1 of 12 jobs failed or did not finish (left out): "
        f"{sweep / 'dof' / 'rpg.params=1000000,trainer.seed=0'} "
        "(no results.json (running, stopped or killed))")
    # pruning has seed 0 only at RPG's 10,000: one pair, so no interval
    assert tables(text)[1][2:] == [
        "| resnet20 | 10,000 | 9,900 | — | pruning | 90.00 ± 0.71 (n=2) | 85.00 ± — (n=1) | 1 "
        "| +4.50 (one pair) | no interval (1 paired seed; needs 2) |"]
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
    assert "left out 1 job(s) under" in out[1].stderr
    assert "rpg.params=1000000,trainer.seed=0 (no results.json" in out[1].stderr


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
    ("network", "plain", False, None, False, "plain recurrence"),
    ("network", "plain", True, None, False, "plain recurrence + signs"),
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


def test_offset_label():
    rpg = {"scope": "network", "sampling": "even", "sign": True, "offset": True}
    assert load("_runs").method_label({"rpg": rpg}, {}) == "RPG + subspace offset"


def test_denser_projections_label():
    rpg = {"scope": "network", "sampling": "even", "sign": True, "k": 4}
    assert load("_runs").method_label({"rpg": rpg}, {}) == "RPG k=4"


@pytest.mark.parametrize("finetune, label", [(1, "RPG + ring pruning"),
                                             (0, "RPG + ring pruning, not fine-tuned")])
def test_ring_pruned_runs_have_their_own_label(finetune, label):
    rpg = {"scope": "network", "prune": {"amount": 0.5, "finetune_epochs": finetune}}
    assert load("_runs").method_label({}, {"model": {"name": "resnet20"}, "rpg": rpg}) == label


def test_fit_without_variance_has_no_r2():
    fit = load("_stats").fit_log10([10, 100, 1000], [70.0, 70.0, 70.0])
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
    assert next((run / "files" / "media" / "images").glob("top1_by_arm_png_*.png"))
    # the analysis run is in the group the runs logged to (their logger.group)
    assert b"runs/fmnist/dof" in next(run.glob("run-*.wandb")).read_bytes()
    assert f"W&B offline run in {run}" in proc.stderr


def test_a_diverged_run_counts_as_unfinished(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "ok", top1=90.0, trainable=1000, ring=900)
    bad = root / "bad"
    write_run(bad, top1=10.0, trainable=1000, ring=900)
    (bad / "results.json").write_text(json.dumps({"status": "diverged", "diverged_step": 7}))
    proc = aggregate(root, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert f"{bad} (status diverged)" in proc.stderr
    assert len(read_csv(tmp_path / "out" / "runs.csv")) == 1


def run_main(*args) -> None:
    load("aggregate").main([str(a) for a in args])


def summary(out: Path) -> str:
    return (out / "summary.md").read_text()


def test_runs_that_differ_in_a_setting_are_not_seeds(tmp_path):
    """Two seed-0 runs with different trainer.limit_batches are two configurations of one
    seed each, told apart by the key, not one of two seeds with a spread of 0."""
    for limit in (0, 10):
        write_run(tmp_path / "sweep" / f"limit={limit}", top1=90.0 + limit / 10,
                  trainable=1000, ring=900, config_extra={"trainer": {"limit_batches": limit}})
    run_main(tmp_path / "sweep", "--out", tmp_path / "out")
    rows = tables(summary(tmp_path / "out"))[0][2:]
    assert rows == [
        "| RPG [trainer.limit_batches=0] | resnet20 | 1,000 | 900 | 1 | 90.00 ± — | 91.00 | — "
        "| 5 |",
        "| RPG [trainer.limit_batches=10] | resnet20 | 1,000 | 900 | 1 | 91.00 ± — | 92.00 | — "
        "| 5 |"]
    csv_rows = read_csv(tmp_path / "out" / "summary.csv")
    assert [r["setting"] for r in csv_rows] == ["trainer.limit_batches=0",
                                                "trainer.limit_batches=10"]


def test_same_seed_twice_in_one_configuration_is_an_error(tmp_path):
    """Runs differing only in paths, logging and resume keys are one configuration; two of
    them with one seed would be counted as two seeds."""
    a, b = tmp_path / "sweep" / "a", tmp_path / "sweep" / "b"
    write_run(a, top1=90.0, trainable=1000, ring=900, config_extra={"out_dir": str(a)})
    write_run(b, top1=90.5, trainable=1000, ring=900, config_extra={
        "out_dir": str(b), "logger": {"group": "other", "name": "wandb"},
        "trainer": {"progress": True, "resume": "auto"}, "data": {"root": "/elsewhere"}})
    with pytest.raises(SystemExit) as e:
        run_main(tmp_path / "sweep", "--out", tmp_path / "out")
    assert e.value.code == (f"aggregate.py: error: {a} and {b} are the same configuration "
                            "with the same seed (trainer.seed=0, rpg.seed=0); give one of them")


def test_config_key_ignores_what_does_not_change_a_result():
    """Seeds, paths, logging, resume and guards are not part of the configuration; a key an
    older run lacks reads as the value the older code ran with; the learning rate compares
    as applied (lr 0.1 of a run before optim.lr_batch = lr 0.2 per 256 at batch 128)."""
    key = load("_runs").config_key
    old = {"model": {"name": "resnet20"}, "optim": {"lr": 0.1}, "data": {"batch_size": 128},
           "trainer": {"seed": 0, "epochs": 5}, "rpg": {"seed": 0}}
    new = {"model": {"name": "resnet20", "width": 1.0}, "optim": {"lr": 0.2, "lr_batch": 256},
           "data": {"batch_size": 128, "mixup": 0.0, "root": "/data", "num_workers": 4},
           "trainer": {"seed": 1, "epochs": 5, "accumulate": 1, "resume": "auto",
                       "progress": False, "checkpoint_every_min": 30.0, "max_loss": None},
           "rpg": {"seed": 1, "offset": False}, "logger": {"group": "g", "name": "wandb"},
           "prune": {"init": None}, "out_dir": "/runs/x"}
    assert key(old, {}) == key(new, {"lr": 0.1})
    assert key(old, {}) != key(new, {"lr": 0.2})  # applied 0.2: another configuration
    assert key(old, {}) != key(merge(new, {"data": {"mixup": 0.2}}), {"lr": 0.1})
    # which dense run a pruned model starts from is a path (each seed its own): only whether
    # it is set counts
    a = key(merge(old, {"prune": {"init": "runs/dense,trainer.seed=0/last.pt"}}), {})
    b = key(merge(old, {"prune": {"init": "runs/dense,trainer.seed=1/last.pt"}}), {})
    assert a == b != key(old, {})


def test_failed_and_unfinished_jobs_are_counted_and_named(tmp_path):
    root = tmp_path / "sweep"
    for seed in (0, 1):
        write_run(root / f"ok{seed}", seed=seed, top1=90.0, trainable=1000, ring=900)
    # a failed.txt wins over a results.json an earlier attempt left
    write_run(root / "failed-rerun", seed=2, top1=90.0, trainable=1000, ring=900)
    (root / "failed-rerun" / "failed.txt").write_text("RuntimeError: CUDA out of memory\nmore\n")
    write_run(root / "diverged", seed=3, top1=10.0, trainable=1000, ring=900)
    (root / "diverged" / "results.json").write_text(json.dumps({"status": "diverged"}))
    (root / "running").mkdir()
    (root / "running" / "config.yaml").write_text("model: {name: resnet20}\n")
    (root / "refused").mkdir()  # failed before it wrote its config
    (root / "refused" / "failed.txt").write_text("UserError: rpg.params=-1: must be positive\n")
    run_main(root, "--out", tmp_path / "out")
    assert summary(tmp_path / "out").splitlines()[0] == (
        "4 of 6 jobs failed or did not finish (left out): "
        f"{root / 'diverged'} (status diverged); "
        f"{root / 'failed-rerun'} (failed: RuntimeError: CUDA out of memory); "
        f"{root / 'refused'} (failed: UserError: rpg.params=-1: must be positive); "
        f"{root / 'running'} (no results.json (running, stopped or killed))")
    assert tables(summary(tmp_path / "out"))[0][2:] == [
        "| RPG | resnet20 | 1,000 | 900 | 2 | 90.00 ± 0.00 | 91.00 | — | 5 |"]


def test_a_fit_needs_three_sizes(tmp_path):
    for dof in (1000, 10000):
        for seed in (0, 1):
            write_run(tmp_path / "sweep" / f"{dof},{seed}", seed=seed, top1=rpg_top1(dof, seed),
                      trainable=dof, ring=dof - 100)
    run_main(tmp_path / "sweep", "--out", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "fit.json").read_text()) == {}
    text = summary(tmp_path / "out")
    assert "No fit for resnet20 RPG: 2 distinct sizes, a fit needs 3." in text
    assert "Fit resnet20 RPG" not in text
    assert text.splitlines()[0] == "All 4 jobs finished."


SAT = {"a": 93.0, "b": 3000.0, "c": 0.8}
SAT_SIZES = (1000, 2000, 5000, 10000, 30000, 100000, 300000)


def test_saturating_fit_and_the_unsaturated_range(tmp_path):
    """Seven sizes on top-1 = 93 - 3000*DoF^-0.8, seeds at +-0.05: the saturating fit finds
    the curve; it comes within 0.5 of 93 at (3000/0.5)^(1/0.8) = 52,807 DoF, so the
    log-linear fit takes only the five sizes below."""
    runs = []
    for dof in SAT_SIZES:
        for seed, noise in ((0, -0.05), (1, 0.05)):
            top1 = SAT["a"] - SAT["b"] * dof ** -SAT["c"] + noise
            write_run(tmp_path / "sweep" / f"{dof},{seed}", seed=seed, top1=top1,
                      trainable=dof, ring=dof - 100)
            runs.append((dof, top1))
    run_main(tmp_path / "sweep", "--out", tmp_path / "out")
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())["resnet20 RPG"]
    assert fit["saturating"] == pytest.approx(SAT | {"n": 14, "r2": fit["saturating"]["r2"]},
                                              rel=1e-4)
    start = (SAT["b"] / 0.5) ** (1 / SAT["c"])
    assert fit["saturated_from"] == pytest.approx(start, rel=1e-3)
    assert fit["log10_sizes"] == [1000, 2000, 5000, 10000, 30000]
    low = [(d, t) for d, t in runs if d < start]
    assert fit["log10"] == pytest.approx(load("_stats").fit_log10(*zip(*low)))
    text = summary(tmp_path / "out")
    assert "Fit resnet20 RPG, saturating: top-1 = 93.00 − 3000·DoF^(−0.800)" in text
    assert f"within 0.5 of a from {start:,.0f} trainable" in text
    assert "Fit resnet20 RPG, log-linear over 1,000 to 30,000 trainable" in text


def test_log10_fit_over_points_of_a_line():
    fit = load("_stats").fit_log10([10, 100, 1000, 1000], [71.0, 72.0, 73.5, 72.5])
    # x = 1, 2, 3, 3 ; y = 71, 72, 73.5, 72.5: b = sxy / sxx = 2.75 / 2.75 = 1, a = 70;
    # residuals 0, 0, 0.5, -0.5; total 1.25^2 + 0.25^2 + 1.25^2 + 0.25^2
    assert fit == pytest.approx({"a": 70.0, "b": 1.0, "r2": 1 - 0.5 / 3.25, "n": 4})


# Student t 0.975 quantiles (tables)
T_975 = {1: 12.706204736174707, 2: 4.302652729911275, 3: 3.182446305284263}


def test_paired_interval():
    paired = load("_stats").paired
    d = paired({0: 91.0, 1: 92.0, 2: 93.0, 7: 50.0}, {0: 90.0, 1: 90.5, 2: 91.0, 9: 1.0})
    # differences 1, 1.5, 2 over the three shared seeds: mean 1.5, sd 0.5
    assert (d.n, d.mean) == (3, pytest.approx(1.5))
    assert d.half == pytest.approx(T_975[2] * 0.5 / math.sqrt(3))
    assert d.verdict() == "RPG ahead by 1.50"
    d = paired({0: 90.0, 1: 91.0}, {0: 90.5, 1: 90.0})  # -0.5, +1
    half = T_975[1] * statistics.stdev([-0.5, 1.0]) / math.sqrt(2)
    assert d.verdict() == f"not detected at ± {half:.2f}"
    assert paired({0: 1.0}, {0: 0.0}).verdict() == "no interval (1 paired seed; needs 2)"


GENERATED, UNSHARED = 16704, 550
RINGS = (16704, 8352, 4176, 2088)
NOISE = (0.02, -0.02, 0.01, -0.01)  # per seed: mean 0, sd sqrt(1e-3 / 3)


def rpg_capacity(ring: int, seed: int) -> float:
    """RPG exactly on 80 + 4*log10(trainable), +-0.1 by seed."""
    return 80 + 4 * math.log10(ring + UNSHARED) + (0.1, -0.1, 0.05, -0.05)[seed]


def iid_predicted(ring: int) -> float:
    """What the RPG line predicts i.i.d. sampling loses: its value at the entries used."""
    used = ring * (1 - math.exp(-GENERATED / ring))
    return 4 * math.log10((ring + UNSHARED) / (used + UNSHARED))


@pytest.fixture(scope="module")
def capacity(tmp_path_factory) -> Path:
    """The capacity study's arms on synthetic numbers: iid loses what the line predicts
    (+NOISE) except at T/N = 2, where it loses 2 points more; dense equals RPG at T/N = 1
    (+NOISE); plain recurrence loses 2 points (+NOISE), with seed 3 missing."""
    root = tmp_path_factory.mktemp("capacity") / "runs"
    common = {"model": {"width": 0.25}, "data": {"val_split": 5000}}
    for seed in range(4):
        for ring in RINGS:
            rpg = rpg_capacity(ring, seed)
            arms = {"even": rpg, "iid": rpg - iid_predicted(ring) - NOISE[seed]
                    - (2.0 if ring == 8352 else 0.0)}
            if seed < 3:
                arms["plain"] = rpg - 2.0 - NOISE[seed]
            for sampling, top1 in arms.items():
                write_run(root / f"rpg.params={ring},rpg.sampling={sampling},trainer.seed={seed}",
                          seed=seed, top1=top1, trainable=ring + UNSHARED, ring=ring,
                          sampling=sampling, sign=sampling != "plain", width=0.25,
                          generated=GENERATED, config_extra=common)
        write_run(root / f"rpg=none,trainer.seed={seed}", seed=seed, width=0.25, scope="none",
                  top1=rpg_capacity(16704, seed) - NOISE[seed], trainable=16704 + UNSHARED,
                  config_extra=common)
    return root


@pytest.fixture(scope="module")
def capacity_out(capacity, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("capacity-out")
    run_main(capacity, "--out", out)
    return out


def test_paired_table(capacity_out):
    rows = tables(summary(capacity_out))[1]
    half = T_975[3] * math.sqrt(1e-3 / 3) / 2
    assert rows[0] == ("| model | trainable | ring | T/N | arm | RPG top-1 (mean ± sd, n) | "
                       "arm top-1 (mean ± sd, n) | paired seeds | RPG − arm [95 % CI] | verdict |")
    by_arm = {(r.split(" | ")[1], r.split(" | ")[4]): r for r in rows[2:]}
    assert len(by_arm) == 4 * 2 + 1  # iid and plain at every size, width at 17,254
    rpg = [rpg_capacity(16704, seed) for seed in range(4)]
    dense = [t - n for t, n in zip(rpg, NOISE)]
    cell = "{:.2f} ± {:.2f} (n=4)".format
    assert by_arm[("17,254", "width")] == (
        f"| resnet20 | 17,254 | 16,704 | 1 | width | "
        f"{cell(statistics.fmean(rpg), statistics.stdev(rpg))} | "
        f"{cell(statistics.fmean(dense), statistics.stdev(dense))} "
        f"| 4 | +0.00 [{-half:+.2f}, {half:+.2f}] | not detected at ± {half:.2f} |")
    pred = iid_predicted(16704)
    assert by_arm[("17,254", "hashing (iid)")].endswith(
        f"| 4 | {pred:+.2f} [{pred - half:+.2f}, {pred + half:+.2f}] | RPG ahead by {pred:.2f} |")
    # plain: seed 3 is missing, so three pairs; differences 2 + NOISE[:3]
    d = [2 + n for n in NOISE[:3]]
    h3 = T_975[2] * statistics.stdev(d) / math.sqrt(3)
    assert by_arm[("2,638", "plain recurrence")].endswith(
        f"| 3 | {statistics.fmean(d):+.2f} [{statistics.fmean(d) - h3:+.2f}, "
        f"{statistics.fmean(d) + h3:+.2f}] | RPG ahead by {statistics.fmean(d):.2f} |")
    assert "| 2,638 | 2,088 | 8 | plain recurrence |" in by_arm[("2,638", "plain recurrence")]


def test_paired_columns_in_summary_csv(capacity_out):
    rows = read_csv(capacity_out / "summary.csv")
    iid = next(r for r in rows if r["method"] == "hashing (iid)" and r["trainable"] == "17254")
    half = T_975[3] * math.sqrt(1e-3 / 3) / 2
    pred = iid_predicted(16704)
    assert iid["paired_seeds"] == "4"
    assert float(iid["rpg_minus_arm"]) == pytest.approx(pred, abs=1e-4)
    assert float(iid["rpg_minus_arm_ci_low"]) == pytest.approx(pred - half, abs=1e-4)
    assert float(iid["rpg_minus_arm_ci_high"]) == pytest.approx(pred + half, abs=1e-4)
    rpg = next(r for r in rows if r["method"] == "RPG" and r["trainable"] == "17254")
    assert (rpg["paired_seeds"], rpg["rpg_minus_arm"], rpg["generated"]) == ("", "", "16704")


def test_predictions(capacity_out):
    text = summary(capacity_out)
    lines = text.split("## Predictions\n\n")[1].splitlines()
    half = T_975[3] * math.sqrt(1e-3 / 3) / 2
    assert lines[0] == (
        "- RPG equals width at T/N = 1, resnet20 at 17,254 trainable: RPG − width = "
        f"+0.00 [{-half:+.2f}, {half:+.2f}] (4 pairs): confirmed within noise (a difference "
        f"is not detected at ± {half:.2f}).")
    iid = {line.split("trainable (T/N = ")[1].split(")")[0]: line for line in lines
           if line.startswith("- i.i.d.")}
    assert iid["1"].endswith(": confirmed.")
    used = 16704 * (1 - math.exp(-1))
    assert f"for {used:,.0f} of 16,704 entries used" in iid["1"]
    assert f"predicted {iid_predicted(16704):+.2f}" in iid["1"]
    assert iid["2"].endswith(": not confirmed.")  # 2 points more than predicted
    assert iid["8"].endswith(": not detected at ± "f"{half:.2f}"
                             " (the interval holds 0 and the prediction).")
    plain = [line for line in lines if line.startswith("- plain")]
    assert len(plain) == 4 and all(line.endswith("(3 pairs): confirmed.") for line in plain)


def test_verdicts_of_the_predictions():
    compare, stats = load("_compare"), load("_stats")
    ahead, behind, unsure = (stats.Paired(1.0, 0.5, 4), stats.Paired(-1.0, 0.5, 4),
                             stats.Paired(0.2, 0.5, 4))
    assert compare.ahead_verdict(ahead) == "confirmed"
    assert compare.ahead_verdict(behind) == "not confirmed (the arm is ahead)"
    assert compare.ahead_verdict(unsure) == "not detected at ± 0.50"
    assert compare.equal_verdict(ahead) == "not confirmed"
    assert compare.loss_verdict(ahead, 0.8) == "confirmed"
    assert compare.loss_verdict(ahead, 2.0) == "not confirmed"


def test_arms_plot_has_one_row_per_arm(capacity, tmp_path):
    """The categorical plot: one row per arm, every size inside its row."""
    agg = load("aggregate")
    groups = agg.seed_groups(agg.collect_jobs([capacity], "t", "D").runs)
    assert agg.plot_arms(groups, tmp_path / "arms.png") == [
        "hashing (iid)", "plain recurrence", "RPG", "width"]
    assert (tmp_path / "arms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wandb_group_is_the_runs_group(sweep, tmp_path):
    agg = load("aggregate")
    runs = agg.collect_jobs([sweep], "t", "D").runs
    args = agg.parse_args([str(sweep), "--out", str(tmp_path)])
    # the dof runs logged to runs/fmnist/dof; the others set no group
    assert agg.wandb_group(args, runs) == "runs/fmnist/dof"
    args = agg.parse_args([str(sweep), "--out", str(tmp_path), "--wandb-group", "mine"])
    assert agg.wandb_group(args, runs) == "mine"
    args = agg.parse_args([str(sweep / "width"), "--out", str(tmp_path)])
    ungrouped = agg.collect_jobs([sweep / "width"], "t", "D").runs
    assert agg.wandb_group(args, ungrouped) == "width"  # no run has one: the dir's name


def test_publish_runs_mirrors_small_files(tmp_path):
    """Finished and failed jobs alike, never checkpoints; a marker a rerun removed goes."""
    publish = load("publish_runs").publish
    study, dest = tmp_path / "study", tmp_path / "docs" / "runs"
    write_run(study / "a,seed=0", top1=90.0, trainable=1000, ring=900)
    (study / "a,seed=0" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (study / "a,seed=0" / "last.pt").write_bytes(b"checkpoint")
    write_run(study / "b,seed=0", top1=90.0, trainable=1000, ring=900)
    (study / "b,seed=0" / "results.json").unlink()
    (study / "b,seed=0" / "failed.txt").write_text("boom\n")
    assert publish(study, dest) == 2
    assert sorted(p.name for p in (dest / "a,seed=0").iterdir()) == [
        "config.yaml", "metrics.jsonl", "results.json"]
    assert (dest / "b,seed=0" / "failed.txt").read_text() == "boom\n"
    (study / "b,seed=0" / "failed.txt").unlink()  # a rerun finished
    shutil.copyfile(study / "a,seed=0" / "results.json", study / "b,seed=0" / "results.json")
    publish(study, dest)
    assert sorted(p.name for p in (dest / "b,seed=0").iterdir()) == ["config.yaml",
                                                                     "results.json"]


def test_publish_runs_with_last_keeps_finished_jobs_checkpoints(tmp_path):
    """--with-last: a finished job's last.pt goes along (so a sweep restored from the
    repository skips it); an unfinished job's never does."""
    publish = load("publish_runs").publish
    study, dest = tmp_path / "study", tmp_path / "runs"
    write_run(study / "a,seed=0", top1=90.0, trainable=1000, ring=900)
    (study / "a,seed=0" / "last.pt").write_bytes(b"finished")
    write_run(study / "b,seed=0", top1=90.0, trainable=1000, ring=900)
    (study / "b,seed=0" / "results.json").unlink()  # still training
    (study / "b,seed=0" / "last.pt").write_bytes(b"half-way")
    assert publish(study, dest, with_last=True) == 2
    assert (dest / "a,seed=0" / "last.pt").read_bytes() == b"finished"
    assert not (dest / "b,seed=0" / "last.pt").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_capacity_study_is_seed_major():
    """Every arm for seeds 0,1 before any for 2,3, so a study stopped half-way pairs."""
    root = SCRIPTS.parent
    proc = subprocess.run(["make", "-s", "-o", "install", "-o", "data", "PYTHON=echo python",
                           "study-capacity"], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    common = ("python -m rpg_train -m trainer.resume=auto trainer.progress=false logger=none "
              "hydra.sweep.dir=runs/fmnist-capacity "
              "hydra.sweep.subdir=${hydra.job.override_dirname} model.width=0.25 "
              "data.val_split=5000 trainer.seed=")
    rings = "rpg.params=16704,8352,4176,2088"
    arms = [f"{rings} rpg.sampling=even,iid", f"{rings} rpg.sampling=plain rpg.sign=false",
            f"{rings} rpg.offset=true", f"{rings} rpg.sign=false", "rpg=none"]
    assert lines == [f"{common}{seeds} {arm}" for seeds in ("0,1", "2,3") for arm in arms]


def test_a_line_without_plateau_fits_log_linear_over_every_size(capacity_out):
    """The capacity fixture's RPG line is straight in log10(DoF): the saturating fit finds no
    plateau in range, so the log-linear fit takes all four sizes and finds the line."""
    fit = json.loads((capacity_out / "fit.json").read_text())["resnet20 RPG"]
    assert fit["log10_sizes"] == [2638, 4726, 8902, 17254]
    assert (fit["log10"]["a"], fit["log10"]["b"]) == (pytest.approx(80.0), pytest.approx(4.0))
    assert "not within 0.5 of a at any measured size; a at its bound of 100" in \
        summary(capacity_out)


def test_each_rpg_family_gets_its_own_fit(tmp_path):
    """RPG rows that differ in more than their size (here the epochs) are never fitted as
    one line."""
    for epochs, offset in ((5, 0.0), (1, -5.0)):
        for dof in (1000, 10000, 100000):
            for seed in (0, 1):
                write_run(tmp_path / "sweep" / f"{epochs},{dof},{seed}", seed=seed,
                          top1=rpg_top1(dof, seed) + offset, trainable=dof, ring=dof - 100,
                          config_extra={"trainer": {"epochs": epochs}})
    run_main(tmp_path / "sweep", "--out", tmp_path / "out")
    fits = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert {name: (f["log10"]["a"], f["log10"]["b"]) for name, f in fits.items()} == {
        "resnet20 RPG [trainer.epochs=1]": (pytest.approx(45.0), pytest.approx(10.0)),
        "resnet20 RPG [trainer.epochs=5]": (pytest.approx(50.0), pytest.approx(10.0))}
