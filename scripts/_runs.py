"""Finished training runs as the analysis scripts (aggregate.py, paper_table.py) see them.

Both scripts must agree on what a run is, how it is labelled and how its seeds are averaged,
so that a number in the paper table can be found again in a sweep summary: that part lives
here, once. Only the standard library and PyYAML are used, so the scripts start fast and need
neither torch nor the rpg_train package.
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

DASH = "—"  # what a table shows for a number that does not exist (std of one seed, ...)


def dig(tree: Any, dotted: str, default: Any = None) -> Any:
    """tree["a"]["b"] for "a.b"; `default` when a key is missing or null, because older runs
    lack the keys newer ones add and a null setting means "not set" in this project's configs."""
    for key in dotted.split("."):
        if not isinstance(tree, dict) or tree.get(key) is None:
            return default
        tree = tree[key]
    return tree


def setting(config: dict, results: dict, dotted: str, default: Any = None) -> Any:
    """A setting from config.yaml, else from the copy results.json keeps (its "model" and
    "rpg" blocks), so a run whose config.yaml went missing is still labelled."""
    return dig(config, dotted, dig(results, dotted, default))


def is_pruning(config: dict, results: dict) -> bool:
    return dig(config, "prune.init") is not None or results.get("prune") is not None


def method_label(config: dict, results: dict) -> str:
    """The one name a run's method goes by in every table and plot (see the README of the
    studies): the pruning and width baselines, dense, and RPG with its ablation modifiers."""
    if is_pruning(config, results):
        return "pruning"
    scope = setting(config, results, "rpg.scope", "network")
    if scope == "none":
        return "dense" if float(setting(config, results, "model.width", 1.0)) == 1 else "width"
    sampling = setting(config, results, "rpg.sampling", "even")
    label = "hashing (iid)" if sampling == "iid" else "RPG"
    if scope != "network":
        label += f" {scope} scope"
    if setting(config, results, "rpg.sign", True) is False:
        label += " no sign"
    if sampling == "ring":
        label += " ring sampling"
    if float(setting(config, results, "rpg.prune.amount", 0)):  # ring pruning (rpg.prune)
        tuned = int(setting(config, results, "rpg.prune.finetune_epochs", 0))
        label += " + ring pruning" + ("" if tuned else ", not fine-tuned")
    return label


@dataclass
class Run:
    """One finished run: the numbers the tables need, read once from its files."""

    dir: Path
    model: str
    data: str | None
    experiment: str | None
    method: str
    width: float
    scope: str
    sampling: str
    sign: bool
    ring: int
    trainable: int
    dense: int | None
    compression: float | None
    seed: int | None
    epochs: int | None
    init_epochs: int | None
    finetune_epochs: int | None
    final_top1: float
    best_top1: float | None
    selected_top1: float | None
    selected_epoch: int | None

    @property
    def epochs_label(self) -> str:
        """"E0+E1" for pruning (the dense model's epochs, then the fine-tuning ones), since a
        pruned model's training is both; plain epochs otherwise."""
        if self.init_epochs is not None and self.finetune_epochs is not None:
            return f"{self.init_epochs}+{self.finetune_epochs}"
        return DASH if self.epochs is None else str(self.epochs)


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def experiment_name(run_dir: Path) -> str | None:
    """hydra.runtime.choices.experiment from Hydra's own record; None when no experiment
    config was chosen (Hydra writes null, an older dump may hold the string "None")."""
    name = dig(read_yaml(run_dir / ".hydra" / "hydra.yaml"), "hydra.runtime.choices.experiment")
    return None if name in (None, "None", "null", "") else str(name)


def load_run(run_dir: Path) -> Run:
    results = json.loads((run_dir / "results.json").read_text())
    config = read_yaml(run_dir / "config.yaml")
    report = results.get("param_report") or {}
    prune = results.get("prune") or {}
    seed = results.get("seed", dig(config, "trainer.seed"))
    return Run(
        dir=run_dir,
        model=str(setting(config, results, "model.name", "?")),
        data=dig(config, "data.name", results.get("data")),
        experiment=experiment_name(run_dir),
        method=method_label(config, results),
        width=float(setting(config, results, "model.width", 1.0)),
        scope=str(setting(config, results, "rpg.scope", "network")),
        sampling=str(setting(config, results, "rpg.sampling", "even")),
        sign=bool(setting(config, results, "rpg.sign", True)),
        ring=int(report.get("ring") or 0),
        # for pruning the trainer counts the non-zero weights plus every unpruned parameter,
        # as it counts ring plus unshared parameters for RPG: one DoF axis for both
        trainable=int(report["trainable"]),
        dense=report.get("dense"),
        compression=report.get("compression"),
        seed=None if seed is None else int(seed),
        epochs=results.get("epochs", dig(config, "trainer.epochs")),
        init_epochs=prune.get("init_epochs"),
        finetune_epochs=prune.get("finetune_epochs"),
        final_top1=float(results["final_top1"]),
        best_top1=results.get("best_top1"),
        selected_top1=results.get("selected_top1"),
        selected_epoch=results.get("selected_epoch"),
    )


def checked_load(run_dir: Path, prog: str) -> Run:
    """load_run, with a broken results.json reported as one line naming the file rather
    than as a traceback."""
    try:
        return load_run(run_dir)
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(f"{prog}: error: {run_dir / 'results.json'} is not a readable run result "
                 f"({type(e).__name__}: {e})")


def _skipped(path: Path, root: Path) -> bool:
    """Hydra's .hydra/ and W&B's folders hold config.yaml files of their own: not runs."""
    parts = path.relative_to(root).parts[:-1]
    return any(p.startswith(".") or p == "wandb" for p in parts)


def _finished(results: Path) -> bool:
    """A results.json of a finished run: not one that says it diverged (status, written
    since the divergence guard; older files have none and are all finished runs)."""
    try:
        return json.loads(results.read_text()).get("status", "finished") == "finished"
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: checked_load reports it in one line


def find_run_dirs(root: Path) -> tuple[list[Path], list[Path]]:
    """(finished, unfinished) run directories anywhere under root: finished ones hold the
    results.json of a finished run; a directory with a config.yaml and no such file is a run
    that has not finished yet (or died, or diverged), unless it lies inside a finished run."""
    finished = sorted({p.parent for p in root.rglob("results.json")
                       if not _skipped(p, root) and _finished(p)})
    started = {p.parent for p in root.rglob("config.yaml") if not _skipped(p, root)}
    unfinished = sorted(d for d in started - set(finished)
                        if not any(f in d.parents for f in finished))
    return finished, unfinished


def collect(roots: Iterable[Path], prog: str, arg: str) -> list[Run]:
    """Every finished run under the given directories. A missing directory, or one without a
    finished run, is a mistake in the command line: exit with one line naming it. Unfinished
    runs are left out, and stderr says how many, so a partial sweep is never mistaken for a
    whole one."""
    runs: dict[Path, Run] = {}
    for root in roots:
        if not root.is_dir():
            sys.exit(f"{prog}: error: {arg} {str(root)!r} does not exist (or is not a directory)")
        finished, unfinished = find_run_dirs(root)
        if unfinished:
            print(f"{prog}: skipped {len(unfinished)} unfinished run dir(s) (no results.json of a finished run) "
                  f"under {root}: " + ", ".join(str(d) for d in unfinished), file=sys.stderr)
        if not finished:
            sys.exit(f"{prog}: error: {arg} {str(root)!r} holds no finished run "
                     "(no results.json under it)")
        for d in finished:  # a run named twice (nested arguments) counts once
            if d.resolve() not in runs:
                runs[d.resolve()] = checked_load(d, prog)
    return list(runs.values())


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def std(values: list[float]) -> float | None:
    """Sample standard deviation over seeds (ddof=1); None for a single seed, where it is
    undefined rather than zero."""
    return statistics.stdev(values) if len(values) > 1 else None


@dataclass
class Group:
    """The seeds of one configuration: same model, method and trainable count."""

    model: str
    method: str
    trainable: int
    runs: list[Run]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def final(self) -> list[float]:
        return [r.final_top1 for r in self.runs]

    @property
    def final_mean(self) -> float:
        return statistics.fmean(self.final)

    @property
    def final_std(self) -> float | None:
        return std(self.final)

    @property
    def best_mean(self) -> float | None:
        return mean(r.best_top1 for r in self.runs)

    @property
    def selected(self) -> list[float]:
        return [r.selected_top1 for r in self.runs if r.selected_top1 is not None]

    @property
    def selected_mean(self) -> float | None:
        return mean(self.selected)

    @property
    def ring(self) -> int:
        return self.runs[0].ring

    @property
    def dense(self) -> int | None:
        return self.runs[0].dense

    @property
    def compression(self) -> float | None:
        return mean(r.compression for r in self.runs)

    @property
    def epochs_label(self) -> str:
        """One value when the seeds agree (the usual case); all of them, joined by "/",
        when they do not, so that a mixed group shows."""
        labels = list(dict.fromkeys(r.epochs_label for r in self.runs))
        return "/".join(labels)


def group_runs(runs: Iterable[Run], key=lambda r: (r.model, r.method, r.trainable)) -> dict:
    """{key: [runs]} in first-seen order; the default key is the summary's grouping."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return groups


def table_order(run: Run) -> tuple:
    """Model, method, trainable, seed: the order of every summary table. Methods compare
    without case, so "RPG" sorts among the others instead of before "dense"."""
    return (run.model, run.method.lower(), run.method, run.trainable,
            run.seed is None, run.seed or 0, str(run.dir))


def seed_groups(runs: Iterable[Run]) -> list[Group]:
    """One group per (model, method, trainable), in table order, seeds in order inside."""
    groups = group_runs(sorted(runs, key=table_order))
    return [Group(*key, runs=members) for key, members in groups.items()]


def fmt(value: float | None, digits: int = 2) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def fmt_count(value: int | None) -> str:
    return DASH if value is None else f"{int(value):,}"


def fmt_mean_std(mean_value: float, std_value: float | None) -> str:
    return f"{mean_value:.2f} ± {fmt(std_value)}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table; "|" inside a cell is escaped so it cannot split a column."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])
