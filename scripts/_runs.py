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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    label = {"iid": "hashing (iid)", "plain": "plain recurrence"}.get(sampling, "RPG")
    if scope != "network":
        label += f" {scope} scope"
    # the plain-recurrence control is used without signs: name the signs when it has them
    signed = setting(config, results, "rpg.sign", True) is not False
    if sampling == "plain" and signed:
        label += " + signs"
    elif sampling != "plain" and not signed:
        label += " no sign"
    k = int(setting(config, results, "rpg.k", 1))
    if k > 1:  # denser projections: k signed entries a weight
        label += f" k={k}"
    if setting(config, results, "rpg.offset", False) is True:
        label += " + subspace offset"
    if sampling == "ring":
        label += " ring sampling"
    if float(setting(config, results, "rpg.prune.amount", 0)):  # ring pruning (rpg.prune)
        tuned = int(setting(config, results, "rpg.prune.finetune_epochs", 0))
        label += " + ring pruning" + ("" if tuned else ", not fine-tuned")
    return label


# What makes two runs one configuration: their whole resolved config.yaml except the keys
# below, which do not change what a finished run measures. Seeds are what a configuration's
# runs differ in; the rest are paths, logging, resume and the keys hydra.job.config
# .override_dirname leaves out of a study's directory names for the same reason.
SEED_KEYS = ("trainer.seed", "rpg.seed")
IGNORED_KEYS = frozenset({
    *SEED_KEYS, "out_dir", "data.root", "trainer.resume", "trainer.progress", "trainer.device",
    "data.num_workers", "data.download",
    # guards and timers: they stop or checkpoint a run, never change a finished one's numbers
    "trainer.checkpoint_every_min", "trainer.dist_timeout_s", "trainer.nan_check_every",
    "trainer.max_loss",
    "optim.lr_batch",  # folded into the applied learning rate (applied_lr)
})
IGNORED_PREFIXES = ("logger.", "hydra.")
SET_OR_NOT_KEYS = ("prune.init",)  # a path (which seed's dense run): only whether it is set
# keys added after the first runs: a config.yaml without one ran as this value; any other
# missing key reads as null ("not set"), as everywhere in this project's configs
LEGACY = {"model.width": 1.0, "rpg.sampling": "even", "rpg.sign": True, "rpg.offset": False,
          "rpg.prune.amount": 0.0, "rpg.prune.finetune_epochs": 0, "data.val_split": 0,
          "data.re_prob": 0.0, "data.mixup": 0.0, "data.cutmix": 0.0, "optim.no_wd_1d": False,
          "trainer.accumulate": 1, "trainer.sync_bn": False, "trainer.nan_policy": "stop"}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf; lists become tuples so that a key can hold them."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat


def applied_lr(config: dict, results: dict) -> float | None:
    """The learning rate the run applied. Runs record it (results.json "lr") since optim.lr
    became a rate per optim.lr_batch images; older runs had no lr_batch and applied optim.lr
    as it was. So lr 0.1 of an old run and lr 0.2 per 256 at batch 128 compare equal."""
    if results.get("lr") is not None:
        return float(results["lr"])
    lr, per = dig(config, "optim.lr"), dig(config, "optim.lr_batch")
    if lr is None or per is None:
        return lr
    batch = results.get("global_batch") or (dig(config, "data.batch_size", 1)
                                            * dig(config, "trainer.accumulate", 1))
    return lr * batch / per


def config_key(config: dict, results: dict) -> tuple:
    """The configuration a run belongs to, as sorted (key, value) pairs; runs with equal keys
    are seeds of one configuration. Without config.yaml, results.json's model and rpg blocks."""
    if not config:
        config = {k: results[k] for k in ("model", "rpg") if isinstance(results.get(k), dict)}
    flat = LEGACY | flatten(config)
    for key in SET_OR_NOT_KEYS:
        flat[key] = True if flat.get(key) is not None else None
    if "optim.lr" in flat:
        flat["optim.lr"] = round(applied_lr(config, results), 12)
    return tuple(sorted((k, v) for k, v in flat.items() if v is not None
                        and k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)))


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
    config: tuple = ()  # config_key: runs with equal ones are seeds of one configuration
    rpg_seed: int | None = None
    generated: int | None = None  # weights the rings generate (T); ring is N
    logger_group: str | None = None  # the W&B group the run logged to (logger.group)

    @property
    def seeds(self) -> tuple:
        """What tells the runs of one configuration apart."""
        return (self.seed, self.rpg_seed)

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
        config=config_key(config, results),
        rpg_seed=setting(config, results, "rpg.seed"),
        generated=report.get("generated"),
        logger_group=dig(config, "logger.group"),
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


MARKER = "failed.txt"  # rpg_train.sweep.MARKER: the job's last attempt failed


def why_not_finished(job: Path) -> str | None:
    """None for a finished run; otherwise why not, in a few words. A failed.txt wins over a
    results.json (which an earlier attempt may have left); a results.json whose status is not
    "finished" (a diverged run) is no result; older files have no status and all finished."""
    if (job / MARKER).is_file():
        reason = (job / MARKER).read_text().strip().splitlines()
        return "failed" + (f": {reason[0]}" if reason else "")
    if not (job / "results.json").is_file():
        return "no results.json (running, stopped or killed)"
    try:
        status = json.loads((job / "results.json").read_text()).get("status", "finished")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: checked_load reports it in one line
    return None if status == "finished" else f"status {status}"


@dataclass
class Jobs:
    """The jobs of some sweeps: finished runs, and the others with why they are left out."""

    runs: list[Run]
    not_finished: list[tuple[Path, str]]

    @property
    def total(self) -> int:
        return len(self.runs) + len(self.not_finished)

    def summary(self) -> str | None:
        """"2 of 20 jobs failed or did not finish (left out): DIR (why); ..."; None if none."""
        if not self.not_finished:
            return None
        return (f"{len(self.not_finished)} of {self.total} jobs failed or did not finish "
                "(left out): " + "; ".join(f"{d} ({why})" for d, why in self.not_finished))


def find_jobs(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(finished run dirs, [(other job dir, why)]) anywhere under root. A job dir holds a
    config.yaml, a results.json or a failed.txt, and does not lie inside a finished run."""
    jobs = {p.parent for name in ("results.json", "config.yaml", MARKER)
            for p in root.rglob(name) if not _skipped(p, root)}
    why = {d: why_not_finished(d) for d in jobs}
    finished = sorted(d for d in jobs if why[d] is None)
    others = [(d, why[d]) for d in sorted(jobs) if why[d] is not None
              and not any(f in d.parents for f in finished)]
    return finished, others


def collect_jobs(roots: Iterable[Path], prog: str, arg: str) -> Jobs:
    """Every job under the given directories. A missing directory, or one without a finished
    run, is a mistake in the command line: exit with one line naming it. Jobs that failed or
    did not finish are kept aside with the reason, and stderr lists them, so a partial sweep
    is never mistaken for a whole one."""
    runs: dict[Path, Run] = {}
    others: dict[Path, tuple[Path, str]] = {}
    for root in roots:
        if not root.is_dir():
            sys.exit(f"{prog}: error: {arg} {str(root)!r} does not exist (or is not a directory)")
        finished, not_finished = find_jobs(root)
        for d, why in not_finished:
            others.setdefault(d.resolve(), (d, why))
        if not_finished:
            print(f"{prog}: left out {len(not_finished)} job(s) under {root} that failed or did "
                  "not finish: " + "; ".join(f"{d} ({why})" for d, why in not_finished),
                  file=sys.stderr)
        if not finished:
            sys.exit(f"{prog}: error: {arg} {str(root)!r} holds no finished run "
                     "(no results.json of a finished run under it)")
        for d in finished:  # a run named twice (nested arguments) counts once
            if d.resolve() not in runs:
                runs[d.resolve()] = checked_load(d, prog)
    return Jobs(list(runs.values()), list(others.values()))


def collect(roots: Iterable[Path], prog: str, arg: str) -> list[Run]:
    """The finished runs of collect_jobs."""
    return collect_jobs(roots, prog, arg).runs


def mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def std(values: list[float]) -> float | None:
    """Sample standard deviation over seeds (ddof=1); None for a single seed, where it is
    undefined rather than zero."""
    return statistics.stdev(values) if len(values) > 1 else None


@dataclass
class Group:
    """The seeds of one configuration: same model, method and trainable count, and the same
    config_key (config). `setting` names the keys that tell it from a group with the same
    model, method and trainable count, if any ("" when none does)."""

    model: str
    method: str
    trainable: int
    runs: list[Run]
    config: tuple = ()
    setting: str = ""

    @property
    def label(self) -> str:
        """The method, and the telling keys where two groups would read the same."""
        return self.method + (f" [{self.setting}]" if self.setting else "")

    @property
    def generated(self) -> int | None:
        return self.runs[0].generated

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
    return (run.model, run.method.lower(), run.method, run.trainable, repr(run.config),
            run.seed is None, run.seed or 0, str(run.dir))


def fmt_value(value: Any) -> str:
    return str(list(value) if isinstance(value, tuple) else value)


def telling_keys(groups: list[Group]) -> None:
    """Sets each group's `setting`: among groups of one model, method and trainable count,
    the config keys whose values differ between them, as "key=value, ..."."""
    for same in group_runs(groups, key=lambda g: (g.model, g.method, g.trainable)).values():
        if len(same) < 2:
            continue
        configs = [dict(g.config) for g in same]
        keys = sorted({k for c in configs for k in c
                       if len({fmt_value(d.get(k)) for d in configs}) > 1})
        for g, c in zip(same, configs):
            g.setting = ", ".join(f"{k}={fmt_value(c.get(k))}" for k in keys)


def seed_groups(runs: Iterable[Run], prog: str = "aggregate.py") -> list[Group]:
    """One group per configuration (model, method, trainable and config_key), in table order,
    seeds in order inside. Two runs of one configuration with the same seeds are an error
    naming both: averaging them would count one measurement twice as two seeds."""
    groups = group_runs(sorted(runs, key=table_order),
                        key=lambda r: (r.model, r.method, r.trainable, r.config))
    for members in groups.values():
        seen: dict[tuple, Run] = {}
        for run in members:
            if run.seeds in seen:
                sys.exit(f"{prog}: error: {seen[run.seeds].dir} and {run.dir} are the same "
                         f"configuration with the same seed (trainer.seed={run.seed}, "
                         f"rpg.seed={run.rpg_seed}); give one of them")
            seen[run.seeds] = run
    result = [Group(*key[:3], runs=members, config=key[3]) for key, members in groups.items()]
    telling_keys(result)
    return result


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
