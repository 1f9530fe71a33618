"""The paper's ImageNet rows next to what our runs measured.

    python scripts/paper_table.py RUN_DIRS...

Each RUN_DIR is a run directory or a directory of them (searched recursively). A run's row is
its experiment config (hydra.runtime.choices.experiment in .hydra/hydra.yaml); a run without
one falls under "other". Seeds of one row are averaged. The measured number is the final
epoch's top-1, the headline; the best epoch is picked on the test set and labelled so. Rows
the paper has no number for show "n/r" (not recovered) and no difference.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _runs, also when loaded by path

from _runs import (  # noqa: E402
    DASH,
    Group,
    Run,
    collect,
    fmt,
    fmt_count,
    fmt_mean_std,
    group_runs,
    markdown_table,
)

PROG = "paper_table.py"
OTHER = "other"  # the row of runs that name no experiment
NOT_RECOVERED = "n/r"
RESNET18_TOP1 = 69.76  # torchvision's ResNet18, the bar the paper's ResNet34-RPG claims to beat


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's ImageNet table. `reference` is what the measurement is compared
    with: the paper's number, or for a claim without a number the number the claim names."""

    label: str
    paper: str
    reference: float
    note: str = ""  # said after the difference when it is not against the paper's own number


PAPER_ROWS = {  # the paper's order
    "imagenet_r18_rpg": PaperRow("ResNet18-RPG, ring 2,359,296 (one 512x512x3x3 layer)",
                                 "67.2", 67.2),
    "imagenet_r18_dense": PaperRow("ResNet18 dense", "69.76 (torchvision reference)",
                                   RESNET18_TOP1),
    "imagenet_r34_rpg": PaperRow("ResNet34-RPG, ring 11,160,576 (total ≈ ResNet18)",
                                 f"beats ResNet18 ({RESNET18_TOP1})", RESNET18_TOP1,
                                 note=f" vs ResNet18 {RESNET18_TOP1} (the claim)"),
    "imagenet_r34_rpg_tiny": PaperRow("ResNet34-RPG, > 400x fewer parameters (~54 K in total)",
                                      "41.6", 41.6),
    "imagenet_r34_dense": PaperRow("ResNet34 dense", "73.31 (torchvision reference)", 73.31),
}
HEADERS = ["row", "paper top-1", "measured final top-1 (mean ± std, n)",
           "difference (measured − paper)", "best epoch (picked on test)", "ring", "trainable",
           "dense", "compression", "epochs"]


def row_name(run: Run) -> str:
    return run.experiment or OTHER


def row_order(key: tuple) -> tuple:
    """The paper's rows in the paper's order, then the others by name; within a name, one
    row per (model, method, trainable), so runs of different setups are never averaged."""
    name = key[0]
    known = list(PAPER_ROWS)
    return (known.index(name) if name in PAPER_ROWS else len(known), name, *key[1:])


def label(g: Group, name: str) -> str:
    if name in PAPER_ROWS:
        return PAPER_ROWS[name].label
    return f"{name}: {g.model} {g.method}"


def paper_cells(g: Group, name: str) -> list[str]:
    """The paper column and the difference, which only rows with a paper number have."""
    row = PAPER_ROWS.get(name)
    if row is None:
        return [NOT_RECOVERED, DASH]
    return [row.paper, f"{g.final_mean - row.reference:+.2f}{row.note}"]


def table_row(g: Group, name: str) -> list[str]:
    paper, difference = paper_cells(g, name)
    compression = DASH if g.compression is None else f"{g.compression:.2f}×"
    return [label(g, name), paper, f"{fmt_mean_std(g.final_mean, g.final_std)} (n={g.n})",
            difference, fmt(g.best_mean), fmt_count(g.ring), fmt_count(g.trainable),
            fmt_count(g.dense), compression, g.epochs_label]


def paper_table(runs: list[Run]) -> str:
    groups = group_runs(runs, key=lambda r: (row_name(r), r.model, r.method, r.trainable))
    rows = [table_row(Group(*key[1:], runs=groups[key]), key[0])
            for key in sorted(groups, key=row_order)]
    return markdown_table(HEADERS, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIRS")
    args = p.parse_args(argv)
    print(paper_table(collect(args.run_dirs, PROG, "RUN_DIRS")))


if __name__ == "__main__":
    main()
