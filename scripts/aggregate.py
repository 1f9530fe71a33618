"""Summarise parameter sweeps: accuracy against degrees of freedom, averaged over seeds.

    python scripts/aggregate.py SWEEP_DIR... --out DIR [--wandb] [--wandb-project rpg-train]
                                [--wandb-group NAME] [--wandb-mode offline|online]

Every job directory under the SWEEP_DIRs is one run. Runs whose resolved configs are equal
but for the seeds, paths, logging and resume keys (_runs.config_key) are the seeds of one
configuration; two with the same seed there are an error. Jobs that failed or did not finish
are counted and named. DIR receives runs.csv (one row per run), summary.csv and summary.md
(one row per configuration; the arms paired with RPG at the same size, and the capacity
study's predictions where its arms exist), fit.json (the DoF law of each RPG family, rule in
dof_fits), top1_vs_params.png and top1_by_arm.png. The headline is the final epoch's test
top-1; the best epoch is picked on the test set, so it is optimistic and always labelled so;
a held-out-selected top-1 appears where the runs had a validation split. With --wandb the
tables and plots also go to one W&B run in the runs' own group (logger.group; offline unless
WANDB_API_KEY is set; WANDB_DIR, else DIR, holds its files).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _runs, also when loaded by path

from _compare import SIZE_KEYS, Pair, ci, pairs, predictions, without  # noqa: E402
from _runs import (  # noqa: E402
    DASH,
    Group,
    Jobs,
    Run,
    collect_jobs,
    fmt,
    fmt_count,
    fmt_mean_std,
    group_runs,
    markdown_table,
    seed_groups,
    table_order,
)
from _stats import SATURATION_MARGIN, fit_log10, fit_saturating, saturating, saturation_start  # noqa: E402

PROG = "aggregate.py"
RUN_COLUMNS = ["dir", "model", "data", "method", "width", "scope", "sampling", "sign", "ring",
               "trainable", "seed", "rpg_seed", "epochs", "final_top1", "best_top1",
               "selected_top1", "selected_epoch", "init_epochs", "finetune_epochs"]
SUMMARY_COLUMNS = ["method", "setting", "model", "trainable", "ring", "generated", "n",
                   "final_top1_mean", "final_top1_std", "best_top1_mean",
                   "selected_top1_mean", "selected_n", "epochs", "paired_seeds",
                   "rpg_minus_arm", "rpg_minus_arm_ci_low", "rpg_minus_arm_ci_high"]
FIT_METHOD = "RPG"  # only plain RPG follows the DoF law; ablations are single points
MIN_SIZES = 3  # distinct trainable counts a fit needs; the saturating one needs one more
FIT_RULE = (f"A fit needs {MIN_SIZES} distinct sizes (each seed a point), the saturating "
            f"top-1 = a − b·DoF^(−c) needs {MIN_SIZES + 1} (three parameters); the log-linear "
            "top-1 = a + b·log10(DoF) is fitted only below the size where the saturating fit "
            f"comes within {SATURATION_MARGIN} points of its plateau a (over every size when "
            "there is no saturating fit).")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--out", type=Path, required=True, help="directory for the outputs")
    p.add_argument("--wandb", action="store_true", help="also log to one W&B analysis run")
    p.add_argument("--wandb-project", default="rpg-train")
    p.add_argument("--wandb-group", default=None,
                   help="W&B group (default: the runs' logger.group, as they logged)")
    p.add_argument("--wandb-mode", choices=["offline", "online"], default=None,
                   help="default: online when WANDB_API_KEY is set, offline otherwise")
    return p.parse_args(argv)


def families(groups: list[Group]) -> dict[str, list[Group]]:
    """{name: RPG groups of one model and dataset whose configs differ only in the size}.
    The name is "<model> RPG", with the telling keys where one model has several."""
    fams = group_runs((g for g in groups if g.method == FIT_METHOD),
                      key=lambda g: (g.model, g.runs[0].data,
                                     tuple(without(g.config, SIZE_KEYS).items())))
    names = {}
    for (model, _, config), members in fams.items():
        others = [dict(c) for (m, _, c) in fams if m == model]
        telling = sorted({k for c in others for k in c
                          if len({repr(o.get(k)) for o in others}) > 1})
        name = f"{model} {FIT_METHOD}"
        if telling:
            name += " [" + ", ".join(f"{k}={dict(config).get(k)}" for k in telling) + "]"
        names[name] = members
    return names


def dof_fits(groups: list[Group]) -> tuple[dict[str, dict], list[str]]:
    """({family: {"saturating", "saturated_from", "log10", "log10_sizes"}}, notes): the DoF
    law of each RPG family by FIT_RULE. A family with too few sizes gets a note, not a fit."""
    fits, notes = {}, []
    for name, members in families(groups).items():
        runs = [r for g in members for r in g.runs]
        sizes = sorted({r.trainable for r in runs})
        if len(sizes) < MIN_SIZES:
            notes.append(f"No fit for {name}: {len(sizes)} distinct size"
                         f"{'s' * (len(sizes) != 1)}, a fit needs {MIN_SIZES}.")
            continue
        sat = fit_saturating([r.trainable for r in runs], [r.final_top1 for r in runs]) \
            if len(sizes) > MIN_SIZES else None
        start = saturation_start(sat) if sat else math.inf
        low = [r for r in runs if r.trainable < start]
        low_sizes = sorted({r.trainable for r in low})
        log10 = None
        if len(low_sizes) >= MIN_SIZES:
            log10 = fit_log10([r.trainable for r in low], [r.final_top1 for r in low])
        else:
            notes.append(f"No log-linear fit for {name}: {len(low_sizes)} sizes below the "
                         f"saturated range, it needs {MIN_SIZES}.")
        if len(sizes) > MIN_SIZES and sat is None:
            notes.append(f"No saturating fit for {name}: the least squares did not converge.")
        fits[name] = {"sizes": sizes, "saturating": sat,
                      "saturated_from": None if sat is None or math.isinf(start) else start,
                      "log10": log10, "log10_sizes": low_sizes if log10 else None}
    return fits, notes


def log10_formula(fit: dict) -> str:
    sign = "+" if fit["b"] >= 0 else "−"
    return (f"{fit['a']:.2f} {sign} {abs(fit['b']):.2f}·log10(DoF), "
            f"R² = {fmt(fit['r2'], 4)}")


def saturating_formula(fit: dict) -> str:
    return (f"{fit['a']:.2f} − {fit['b']:.4g}·DoF^(−{fit['c']:.3f}), "
            f"R² = {fmt(fit['r2'], 4)}")


def fit_lines(fits: dict[str, dict]) -> list[str]:
    lines = []
    for name, f in fits.items():
        if f["saturating"]:
            sat, start = f["saturating"], f["saturated_from"]
            if start is not None and start <= f["sizes"][-1]:
                where = f"within {SATURATION_MARGIN} of a from {start:,.0f} trainable"
            else:
                where = f"not within {SATURATION_MARGIN} of a at any measured size"
            if sat["a"] >= 100 - 1e-6:
                where += "; a at its bound of 100"
            lines.append(f"Fit {name}, saturating: top-1 = {saturating_formula(sat)} "
                         f"(n = {sat['n']} runs; {where})")
        if f["log10"]:
            lo, hi = f["log10_sizes"][0], f["log10_sizes"][-1]
            lines.append(f"Fit {name}, log-linear over {lo:,} to {hi:,} trainable: top-1 = "
                         f"{log10_formula(f['log10'])} (n = {f['log10']['n']} runs)")
    return lines


def run_row(run: Run) -> dict:
    row = {c: getattr(run, c) for c in RUN_COLUMNS}
    row["dir"] = str(run.dir)
    return row


def summary_row(g: Group, pair: Pair | None) -> dict:
    d = pair.diff if pair else None
    return {"method": g.method, "setting": g.setting, "model": g.model,
            "trainable": g.trainable, "ring": g.ring, "generated": g.generated, "n": g.n,
            "final_top1_mean": round(g.final_mean, 4),
            "final_top1_std": None if g.final_std is None else round(g.final_std, 4),
            "best_top1_mean": None if g.best_mean is None else round(g.best_mean, 4),
            "selected_top1_mean": None if g.selected_mean is None else round(g.selected_mean, 4),
            "selected_n": len(g.selected), "epochs": g.epochs_label,
            "paired_seeds": d.n if d else None,
            "rpg_minus_arm": None if d is None or d.mean is None else round(d.mean, 4),
            "rpg_minus_arm_ci_low": None if d is None or d.low is None else round(d.low, 4),
            "rpg_minus_arm_ci_high": None if d is None or d.high is None else round(d.high, 4)}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Missing values are empty cells, as spreadsheet and pandas readers expect."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def arm_cell(g: Group) -> str:
    return f"{fmt_mean_std(g.final_mean, g.final_std)} (n={g.n})"


def paired_markdown(found: list[Pair]) -> list[str]:
    """One row per arm and size: each side's mean ± sd, and the 95 % CI of RPG − arm over
    the seeds both have (Student t, n − 1 degrees of freedom)."""
    if not found:
        return []
    headers = ["model", "trainable", "ring", "T/N", "arm", "RPG top-1 (mean ± sd, n)",
               "arm top-1 (mean ± sd, n)", "paired seeds", "RPG − arm [95 % CI]", "verdict"]
    rows = [[p.ref.model, fmt_count(p.ref.trainable), fmt_count(p.ref.ring),
             DASH if p.tn is None else f"{p.tn:.3g}", p.arm.label, arm_cell(p.ref),
             arm_cell(p.arm), str(p.diff.n), ci(p.diff), p.diff.verdict()]
            for p in sorted(found, key=lambda p: (p.ref.model, -p.ref.trainable,
                                                  p.arm.label.lower()))]
    return ["", "## RPG against each arm at the same size, paired by seed", "",
            markdown_table(headers, rows), "",
            "Only seeds (trainer.seed) present in both arms are paired; the interval is the "
            "Student t 95 % interval of the mean paired difference (n − 1 degrees of freedom). "
            "Where it covers 0 the difference is \"not detected at ± half-width\": the "
            "study cannot tell the arms apart at that resolution, which is not the same as "
            "equal."]


def summary_markdown(jobs: Jobs, groups: list[Group], fits: dict[str, dict],
                     notes: list[str], found: list[Pair], predicted: list[str]) -> str:
    headers = ["method", "model", "trainable", "ring", "seeds", "final top-1 (mean ± std)",
               "best epoch (picked on test)", "held-out-selected top-1", "epochs"]
    rows = [[g.label, g.model, fmt_count(g.trainable), fmt_count(g.ring), str(g.n),
             fmt_mean_std(g.final_mean, g.final_std), fmt(g.best_mean),
             fmt(g.selected_mean) + (f" (n={len(g.selected)})" if 0 < len(g.selected) < g.n
                                     else ""), g.epochs_label]
            for g in groups]
    jobs_line = jobs.summary() or f"All {jobs.total} jobs finished."
    out = [jobs_line, "", markdown_table(headers, rows), "",
           "final top-1: the last epoch's test accuracy (the headline); std over seeds "
           f"(ddof=1, {DASH} for one seed). best epoch (picked on test): optimistic, the epoch "
           "was chosen on the test set. A row is one configuration: runs whose resolved "
           "configs differ only in the seeds, paths, logging and resume keys; [key=value] "
           "tells apart rows that would otherwise read the same."]
    lines = fit_lines(fits) + notes
    if lines:
        out += ["", FIT_RULE, "", *lines]
    out += paired_markdown(found)
    if predicted:
        out += ["", "## Predictions", "", *predicted]
    return "\n".join(out)


def plot(groups: list[Group], fits: dict[str, dict], path: Path) -> None:
    """Final top-1 against trainable parameters: one line per (model, method) through the
    seed means with std error bars; each RPG family's saturating fit dotted over its sizes
    and its log-linear fit dashed over the sizes it was fitted on."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    lines = group_runs(groups, key=lambda g: (g.model, g.label))
    for (model, label), line_groups in sorted(lines.items()):
        line_groups.sort(key=lambda g: g.trainable)
        ax.errorbar([g.trainable for g in line_groups], [g.final_mean for g in line_groups],
                    yerr=[g.final_std or 0.0 for g in line_groups], marker="o", capsize=3,
                    label=f"{model} {label}")
    for name, f in fits.items():
        if f["saturating"]:
            sat = f["saturating"]
            xs = log_range(f["sizes"][0], f["sizes"][-1])
            ax.plot(xs, [saturating(x, sat) for x in xs], ":", color="black",
                    label=f"{name} fit: {saturating_formula(sat)}")
        if f["log10"]:
            lin = f["log10"]
            xs = log_range(f["log10_sizes"][0], f["log10_sizes"][-1])
            ax.plot(xs, [lin["a"] + lin["b"] * math.log10(x) for x in xs], "--",
                    color="grey", label=f"{name} fit: {log10_formula(lin)}")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (DoF)")
    ax.set_ylabel("final top-1 (%)")
    ax.set_title("final top-1 vs trainable parameters (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_range(lo: float, hi: float, steps: int = 50) -> list[float]:
    a, b = math.log10(lo), math.log10(hi)
    return [10 ** (a + (b - a) * i / steps) for i in range(steps + 1)]


def plot_arms(groups: list[Group], path: Path) -> list[str]:
    """The arms side by side: one row per (model, arm), final top-1 on the x axis, one
    colour per size (trainable count) with the sizes spread over the row's height; the mean
    with std error bars, and each seed as a small dot. Returns the rows' labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({(g.model, g.label) for g in groups}, key=lambda a: (a[0], a[1].lower()))
    sizes = sorted({g.trainable for g in groups})
    colours = plt.get_cmap("tab10" if len(sizes) <= 10 else "viridis")
    fig, ax = plt.subplots(figsize=(9.5, 1.4 + 0.45 * len(arms) + 0.06 * len(arms) * len(sizes)))
    for g in groups:
        row = arms.index((g.model, g.label))
        k = sizes.index(g.trainable)
        y = row + (k - (len(sizes) - 1) / 2) * (0.7 / max(len(sizes), 1))
        colour = colours(k % 10 if len(sizes) <= 10 else k / (len(sizes) - 1))
        ax.errorbar([g.final_mean], [y], xerr=[g.final_std or 0.0], fmt="o", capsize=3,
                    color=colour, markersize=5)
        ax.plot(g.final, [y] * g.n, ".", color=colour, alpha=0.45, markersize=4)
    for k, size in enumerate(sizes):
        ax.plot([], [], "o", color=colours(k % 10 if len(sizes) <= 10 else
                                           k / (len(sizes) - 1)), label=f"{size:,} trainable")
    ax.set_yticks(range(len(arms)))
    models = {m for m, _ in arms}
    rows = [label if len(models) == 1 else f"{m} {label}" for m, label in arms]
    ax.set_yticklabels(rows)
    ax.invert_yaxis()
    ax.set_xlabel("final top-1 (%): mean ± std over seeds, dots are seeds")
    ax.set_title("final top-1 per arm, by size")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # off the rows
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rows


def wandb_group(args: argparse.Namespace, runs: list[Run]) -> str:
    """--wandb-group; else the W&B group the runs logged to (their logger.group, which a
    multirun sets to its sweep directory), the most common one among the first SWEEP_DIR's
    runs when they logged to several; else the first SWEEP_DIR's name."""
    if args.wandb_group:
        return args.wandb_group
    first = args.sweep_dirs[0].resolve()
    mine = [r.logger_group for r in runs if r.logger_group
            and (r.dir.resolve() == first or first in r.dir.resolve().parents)]
    every = [r.logger_group for r in runs if r.logger_group]
    if not (mine or every):
        return first.name
    group = Counter(mine or every).most_common(1)[0][0]
    if len(set(every)) > 1:
        print(f"{PROG}: the runs logged to several W&B groups ({', '.join(sorted(set(every)))});"
              f" the analysis run goes to {group!r} (--wandb-group to choose)", file=sys.stderr)
    return group


def log_to_wandb(args: argparse.Namespace, runs: list[Run], run_rows: list[dict],
                 summary_rows: list[dict], fits: dict, pngs: list[Path]) -> None:
    """One analysis run per call, in the runs' own group so it sits next to them. Offline
    needs no login and no network; `wandb sync` uploads it later."""
    import wandb

    mode = args.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=args.wandb_project, group=wandb_group(args, runs),
                     job_type="analysis", mode=mode,
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
             **{f"{png.stem}_png": wandb.Image(str(png)) for png in pngs}})
    run.summary["fits"] = fits
    run_dir = Path(run.dir).parent
    run.finish()
    print(f"{PROG}: W&B {mode} run in {run_dir}"
          + (f"; upload with: wandb sync {run_dir}" if mode == "offline" else ""), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    jobs = collect_jobs(args.sweep_dirs, PROG, "SWEEP_DIR")
    groups = seed_groups(jobs.runs, PROG)
    fits, notes = dof_fits(groups)
    found = pairs(groups)
    predicted = predictions(groups, found)
    args.out.mkdir(parents=True, exist_ok=True)
    run_rows = [run_row(r) for r in sorted(jobs.runs, key=table_order)]
    pair_of = {id(p.arm): p for p in found}
    summary_rows = [summary_row(g, pair_of.get(id(g))) for g in groups]
    write_csv(args.out / "runs.csv", RUN_COLUMNS, run_rows)
    write_csv(args.out / "summary.csv", SUMMARY_COLUMNS, summary_rows)
    markdown = summary_markdown(jobs, groups, fits, notes, found, predicted)
    (args.out / "summary.md").write_text(markdown + "\n")
    (args.out / "fit.json").write_text(json.dumps(fits, indent=2) + "\n")
    pngs = [args.out / "top1_vs_params.png", args.out / "top1_by_arm.png"]
    plot(groups, fits, pngs[0])
    plot_arms(groups, pngs[1])
    print(markdown)
    if args.wandb:
        log_to_wandb(args, jobs.runs, run_rows, summary_rows, fits, pngs)


if __name__ == "__main__":
    main()
