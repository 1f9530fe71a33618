"""Arms against the reference arm at the same size, paired by seed, and the predictions of
the capacity study (docs/studies.md) checked against them.

Two groups are at the same size when they have the same model, dataset and trainable count.
The reference arm is plain RPG (even sampling, signs, no offset, one ring for the network).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from _runs import Group, fmt_count, group_runs
from _stats import Paired, interpolate_log, paired

REFERENCE = "RPG"
SIZE_KEYS = ("rpg.params", "match.width", "match.model")  # what sets a run's size
DENSE = ("dense", "width")
IID = "hashing (iid)"
PLAIN = "plain recurrence"


@dataclass
class Pair:
    """An arm against the reference at its size."""

    ref: Group
    arm: Group
    diff: Paired

    @property
    def tn(self) -> float | None:
        """T/N: weights generated per ring entry of the reference."""
        g = self.ref
        return g.generated / g.ring if g.generated and g.ring else None


def by_seed(g: Group) -> dict:
    """{trainer.seed: final top-1}; a seed that occurs twice (rpg.seed varied) pairs with
    nothing, since which of its runs to pair would be a guess."""
    seeds = [r.seed for r in g.runs]
    return {r.seed: r.final_top1 for r in g.runs if seeds.count(r.seed) == 1}


def without(config: tuple, keys) -> dict:
    return {k: v for k, v in config if k not in keys}


def _distance(a: Group, b: Group) -> int:
    ca, cb = dict(a.config), dict(b.config)
    return sum(ca.get(k) != cb.get(k) for k in set(ca) | set(cb))


def pairs(groups: list[Group]) -> list[Pair]:
    """Every non-reference group with a reference group at its size. With several reference
    groups there (runs that differ in, say, epochs) an arm pairs with the one whose config
    is nearest, and with none where two are equally near."""
    result = []
    at_size = group_runs(groups, key=lambda g: (g.model, g.runs[0].data, g.trainable))
    for members in at_size.values():
        refs = [g for g in members if g.method == REFERENCE]
        for arm in (g for g in members if g.method != REFERENCE and refs):
            ranked = sorted(refs, key=lambda r: _distance(r, arm))
            if len(ranked) > 1 and _distance(ranked[0], arm) == _distance(ranked[1], arm):
                continue
            result.append(Pair(ranked[0], arm, paired(by_seed(ranked[0]), by_seed(arm))))
    return result


def rpg_curve(groups: list[Group], ref: Group) -> list[tuple[int, float]]:
    """(trainable, mean top-1) of the reference's family: RPG groups of its model and
    dataset whose configs differ from it only in the size."""
    mine = without(ref.config, SIZE_KEYS)
    return sorted((g.trainable, g.final_mean) for g in groups
                  if g.method == REFERENCE and g.model == ref.model
                  and g.runs[0].data == ref.runs[0].data
                  and without(g.config, SIZE_KEYS) == mine)


def used_entries(ring: int, generated: int) -> float:
    """Ring entries that i.i.d. sampling of `generated` weights reaches, on average."""
    return ring * (1 - math.exp(-generated / ring))


def ci(d: Paired) -> str:
    if d.half is None:
        return "—" if d.mean is None else f"{d.mean:+.2f} (one pair)"
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"


def tn_label(p: Pair) -> str:
    return "T/N —" if p.tn is None else f"T/N = {p.tn:.3g}"


def where(p: Pair) -> str:
    return f"{p.ref.model} at {fmt_count(p.ref.trainable)} trainable ({tn_label(p)})"


def equal_verdict(d: Paired) -> str:
    if d.half is None:
        return f"not tested ({d.n} paired seed{'s' * (d.n != 1)}; needs 2)"
    if d.covers(0.0):
        return f"confirmed within noise (a difference is not detected at ± {d.half:.2f})"
    return "not confirmed"


def loss_verdict(d: Paired, predicted: float) -> str:
    if d.half is None:
        return f"not tested ({d.n} paired seed{'s' * (d.n != 1)}; needs 2)"
    if not d.covers(predicted):
        return "not confirmed"
    if d.covers(0.0):
        return f"not detected at ± {d.half:.2f} (the interval holds 0 and the prediction)"
    return "confirmed"


def ahead_verdict(d: Paired) -> str:
    if d.half is None:
        return f"not tested ({d.n} paired seed{'s' * (d.n != 1)}; needs 2)"
    if d.covers(0.0):
        return f"not detected at ± {d.half:.2f}"
    return "confirmed" if d.mean > 0 else "not confirmed (the arm is ahead)"


def predictions(groups: list[Group], found: list[Pair]) -> list[str]:
    """The capacity study's three predictions, one line per size where the arms exist:
    1. at T/N = 1 RPG equals the dense model of the same trainable count within noise;
    2. i.i.d. sampling loses what the measured RPG curve (mean top-1 against log trainable,
       straight between measured sizes) predicts for its N(1 - e^(-T/N)) used entries;
    3. plain recurrence loses to RPG."""
    lines = []
    for p in found:
        if p.arm.method in DENSE and p.ref.ring and p.ref.ring == p.ref.generated:
            lines.append(f"- RPG equals {p.arm.method} at T/N = 1, {p.ref.model} at "
                         f"{fmt_count(p.ref.trainable)} trainable: RPG − "
                         f"{p.arm.method} = {ci(p.diff)} ({p.diff.n} pairs): "
                         f"{equal_verdict(p.diff)}.")
    for p in found:
        curve = rpg_curve(groups, p.ref)
        if p.arm.method != IID or not p.ref.generated or len(curve) < 2:
            continue
        used = used_entries(p.ref.ring, p.ref.generated)
        xs, ys = zip(*curve)
        at = p.ref.trainable - p.ref.ring + used
        predicted = interpolate_log(xs, ys, p.ref.trainable) - interpolate_log(xs, ys, at)
        lines.append(f"- i.i.d. loses what the RPG curve predicts for {used:,.0f} of "
                     f"{fmt_count(p.ref.ring)} entries used, {where(p)}: predicted "
                     f"{predicted:+.2f}, measured RPG − iid = {ci(p.diff)} ({p.diff.n} pairs): "
                     f"{loss_verdict(p.diff, predicted)}.")
    for p in found:
        if p.arm.method == PLAIN:
            lines.append(f"- plain recurrence loses to RPG, {where(p)}: RPG − plain = "
                         f"{ci(p.diff)} ({p.diff.n} pairs): {ahead_verdict(p.diff)}.")
    return lines
