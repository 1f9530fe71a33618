"""Summarise parameter sweeps: accuracy against degrees of freedom, averaged over seeds.

    python scripts/aggregate.py SWEEP_DIR... --out DIR [--wandb] [--wandb-project rpg-train]
                                [--wandb-group NAME] [--wandb-mode offline|online]

Every results.json under the SWEEP_DIRs is one run; runs of the same model, method and
trainable count are seeds of one configuration. DIR receives runs.csv (one row per run),
summary.csv and summary.md (one row per configuration), top1_vs_params.png and fit.json (the
law top-1 = a + b*log10(DoF) fitted to every RPG run, each seed a point). The headline is the
final epoch's test top-1; the best epoch is picked on the test set, so it is optimistic and
always labelled so; a held-out-selected top-1 appears where the runs had a validation split.
With --wandb the tables and the plot also go to one W&B run (offline unless WANDB_API_KEY is
set; WANDB_DIR, else DIR, holds its files).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _runs, also when loaded by path

from _runs import (DASH, Group, Run, collect, fmt, fmt_count, fmt_mean_std,  # noqa: E402
                   group_runs, markdown_table, seed_groups, table_order)

PROG = "aggregate.py"
RUN_COLUMNS = ["dir", "model", "data", "method", "width", "scope", "sampling", "sign", "ring",
               "trainable", "seed", "epochs", "final_top1", "best_top1", "selected_top1",
               "selected_epoch", "init_epochs", "finetune_epochs"]
SUMMARY_COLUMNS = ["method", "model", "trainable", "ring", "n", "final_top1_mean",
                   "final_top1_std", "best_top1_mean", "selected_top1_mean", "selected_n",
                   "epochs"]
FIT_METHOD = "RPG"  # only plain RPG follows the DoF law; ablations are single points


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--out", type=Path, required=True, help="directory for the outputs")
    p.add_argument("--wandb", action="store_true", help="also log to one W&B analysis run")
    p.add_argument("--wandb-project", default="rpg-train")
    p.add_argument("--wandb-group", default=None,
                   help="W&B group (default: the first SWEEP_DIR's name)")
    p.add_argument("--wandb-mode", choices=["offline", "online"], default=None,
                   help="default: online when WANDB_API_KEY is set, offline otherwise")
    return p.parse_args(argv)


def fit_log10(dofs: list[float], top1s: list[float]) -> dict:
    """Least squares top1 = a + b*log10(DoF). r2 is None when every top-1 is the same (no
    variance to explain), because 0/0 is not a number JSON can hold."""
    xs = [math.log10(d) for d in dofs]
    n = len(xs)
    x_mean, y_mean = sum(xs) / n, sum(top1s) / n
    sxx = sum((x - x_mean) ** 2 for x in xs)
    sxy = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, top1s))
    b = sxy / sxx
    a = y_mean - b * x_mean
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, top1s))
    ss_tot = sum((y - y_mean) ** 2 for y in top1s)
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None, "n": n}


def rpg_fits(runs: list[Run]) -> dict[str, dict]:
    """{"<model> RPG": fit} over every seed of every plain-RPG run of that model; a model
    whose RPG runs share one DoF has no line to fit and is left out (stderr says so)."""
    fits = {}
    by_model = group_runs((r for r in runs if r.method == FIT_METHOD), key=lambda r: r.model)
    for model, model_runs in sorted(by_model.items()):
        if len({r.trainable for r in model_runs}) < 2:
            print(f"{PROG}: no fit for {model} {FIT_METHOD}: its runs share one trainable count",
                  file=sys.stderr)
            continue
        fits[f"{model} {FIT_METHOD}"] = fit_log10([r.trainable for r in model_runs],
                                                  [r.final_top1 for r in model_runs])
    return fits


def fit_formula(fit: dict) -> str:
    sign = "+" if fit["b"] >= 0 else "−"
    return (f"{fit['a']:.2f} {sign} {abs(fit['b']):.2f}·log10(DoF), "
            f"R² = {fmt(fit['r2'], 4)}")


def run_row(run: Run) -> dict:
    row = {c: getattr(run, c) for c in RUN_COLUMNS}
    row["dir"] = str(run.dir)
    return row


def summary_row(g: Group) -> dict:
    return {"method": g.method, "model": g.model, "trainable": g.trainable, "ring": g.ring,
            "n": g.n, "final_top1_mean": round(g.final_mean, 4),
            "final_top1_std": None if g.final_std is None else round(g.final_std, 4),
            "best_top1_mean": None if g.best_mean is None else round(g.best_mean, 4),
            "selected_top1_mean": None if g.selected_mean is None else round(g.selected_mean, 4),
            "selected_n": len(g.selected), "epochs": g.epochs_label}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Missing values are empty cells, as spreadsheet and pandas readers expect."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def summary_markdown(groups: list[Group], fits: dict[str, dict]) -> str:
    headers = ["method", "model", "trainable", "ring", "seeds", "final top-1 (mean ± std)",
               "best epoch (picked on test)", "held-out-selected top-1", "epochs"]
    rows = [[g.method, g.model, fmt_count(g.trainable), fmt_count(g.ring), str(g.n),
             fmt_mean_std(g.final_mean, g.final_std), fmt(g.best_mean),
             fmt(g.selected_mean) + (f" (n={len(g.selected)})" if 0 < len(g.selected) < g.n
                                     else ""), g.epochs_label]
            for g in groups]
    notes = ["", "final top-1: the last epoch's test accuracy (the headline); std over seeds "
             f"(ddof=1, {DASH} for one seed). best epoch (picked on test): optimistic, the epoch "
             "was chosen on the test set."]
    fit_lines = [f"Fit {name}: top-1 = {fit_formula(fit)} (n = {fit['n']} runs)"
                 for name, fit in fits.items()]
    return "\n".join([markdown_table(headers, rows), *notes, *([""] + fit_lines if fits else [])])


def plot(groups: list[Group], runs: list[Run], fits: dict[str, dict], path: Path) -> None:
    """Final top-1 against trainable parameters: one line per (model, method) through the
    seed means with std error bars, and each RPG fit dashed in the same colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    lines = group_runs(groups, key=lambda g: (g.model, g.method))
    for (model, method), line_groups in sorted(lines.items()):
        bars = ax.errorbar([g.trainable for g in line_groups], [g.final_mean for g in line_groups],
                           yerr=[g.final_std or 0.0 for g in line_groups], marker="o", capsize=3,
                           label=f"{model} {method}")
        fit = fits.get(f"{model} {method}")
        if fit is not None:
            dofs = [r.trainable for r in runs if r.model == model and r.method == method]
            lo, hi = math.log10(min(dofs)), math.log10(max(dofs))
            xs = [10 ** (lo + (hi - lo) * i / 50) for i in range(51)]
            ax.plot(xs, [fit["a"] + fit["b"] * math.log10(x) for x in xs], "--",
                    color=bars.lines[0].get_color(), label=f"{model} {method} fit: "
                    + fit_formula(fit))
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (DoF)")
    ax.set_ylabel("final top-1 (%)")
    ax.set_title("final top-1 vs trainable parameters (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_to_wandb(args: argparse.Namespace, run_rows: list[dict], summary_rows: list[dict],
                 fits: dict, png: Path) -> None:
    """One analysis run per call, in the sweep's group so it sits next to the training runs.
    Offline needs no login and no network; `wandb sync` uploads it later."""
    import wandb

    mode = args.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    group = args.wandb_group or args.sweep_dirs[0].resolve().name
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=args.wandb_project, group=group, job_type="analysis", mode=mode,
                     dir=os.environ.get("WANDB_DIR") or str(args.out),
                     config={"sweep_dirs": [str(d) for d in args.sweep_dirs]},
                     settings=wandb.Settings(console="off"))
    runs_table = wandb.Table(columns=RUN_COLUMNS, data=[[r[c] for c in RUN_COLUMNS]
                                                       for r in run_rows])
    summary_table = wandb.Table(columns=SUMMARY_COLUMNS,
                                data=[[r[c] for c in SUMMARY_COLUMNS] for r in summary_rows])
    run.log({"runs": runs_table, "summary": summary_table,
             "top1_vs_params": wandb.plot.scatter(runs_table, "trainable", "final_top1",
                                                  title="final top-1 vs trainable parameters"),
             "top1_vs_params_png": wandb.Image(str(png))})
    run.summary["fits"] = fits
    run_dir = Path(run.dir).parent
    run.finish()
    print(f"{PROG}: W&B {mode} run in {run_dir}"
          + (f"; upload with: wandb sync {run_dir}" if mode == "offline" else ""), file=sys.stderr)


def warn_mixed_datasets(groups: list[Group]) -> None:
    """The grouping key has no dataset, so sweeps of two datasets given together would be
    averaged into one row: say so rather than print a meaningless mean silently."""
    for g in groups:
        datasets = sorted({str(r.data) for r in g.runs})
        if len(datasets) > 1:
            print(f"{PROG}: warning: {g.model} {g.method} at {g.trainable:,} trainable averages "
                  f"runs on several datasets ({', '.join(datasets)})", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = collect(args.sweep_dirs, PROG, "SWEEP_DIR")
    groups = seed_groups(runs)
    warn_mixed_datasets(groups)
    fits = rpg_fits(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    run_rows = [run_row(r) for r in sorted(runs, key=table_order)]
    summary_rows = [summary_row(g) for g in groups]
    write_csv(args.out / "runs.csv", RUN_COLUMNS, run_rows)
    write_csv(args.out / "summary.csv", SUMMARY_COLUMNS, summary_rows)
    markdown = summary_markdown(groups, fits)
    (args.out / "summary.md").write_text(markdown + "\n")
    (args.out / "fit.json").write_text(json.dumps(fits, indent=2) + "\n")
    png = args.out / "top1_vs_params.png"
    plot(groups, runs, fits, png)
    print(markdown)
    if args.wandb:
        log_to_wandb(args, run_rows, summary_rows, fits, png)


if __name__ == "__main__":
    main()
