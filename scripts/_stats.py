"""The statistics of the sweep summaries: paired confidence intervals over seeds, and the two
forms of the DoF law (log-linear, and saturating). scipy gives the Student t quantile and the
non-linear least squares, rather than a t-table and an optimiser written here."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

SATURATION_MARGIN = 0.5  # points below the plateau a where the saturated range begins


@dataclass
class Paired:
    """(reference − arm) over the seeds both have: mean, the 95 % Student-t half-width
    (n − 1 degrees of freedom), and n. half is None below 2 pairs (no interval)."""

    mean: float | None
    half: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half

    def covers(self, value: float) -> bool:
        return self.half is not None and self.low <= value <= self.high

    def verdict(self, ref: str = "RPG") -> str:
        """Where the interval covers 0 the difference is "not detected at ± half", never
        called equal; otherwise which side is ahead and by how much."""
        if self.half is None:
            return f"no interval ({self.n} paired seed{'s' * (self.n != 1)}; needs 2)"
        if self.covers(0.0):
            return f"not detected at ± {self.half:.2f}"
        return f"{ref} {'ahead' if self.mean > 0 else 'behind'} by {abs(self.mean):.2f}"


def paired(reference: dict, arm: dict) -> Paired:
    """Paired difference of two {seed: top-1} maps over the seeds present in both."""
    seeds = sorted(set(reference) & set(arm), key=str)
    diffs = [reference[s] - arm[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return Paired(None, None, 0)
    if n == 1:
        return Paired(diffs[0], None, 1)
    from scipy import stats
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return Paired(statistics.fmean(diffs), float(half), n)


def r_squared(ys: list[float], predicted: list[float]) -> float | None:
    """None when every y is the same (no variance to explain: 0/0 is not a JSON number)."""
    y_mean = statistics.fmean(ys)
    ss_tot = sum((y - y_mean) ** 2 for y in ys)
    ss_res = sum((y - p) ** 2 for y, p in zip(ys, predicted))
    return 1 - ss_res / ss_tot if ss_tot > 0 else None


def fit_log10(dofs: list[float], top1s: list[float]) -> dict:
    """Least squares top1 = a + b*log10(DoF)."""
    xs = [math.log10(d) for d in dofs]
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(top1s)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    b = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, top1s)) / sxx
    a = y_mean - b * x_mean
    return {"a": a, "b": b, "r2": r_squared(top1s, [a + b * x for x in xs]), "n": len(xs)}


def saturating(dof: float, fit: dict) -> float:
    return fit["a"] - fit["b"] * dof ** -fit["c"]


def fit_saturating(dofs: list[float], top1s: list[float]) -> dict | None:
    """Least squares top1 = a - b*DoF^(-c) with b >= 0, 0 <= c <= 5 and a <= 100 (top-1 is a
    percentage); None when it does not converge. DoF is scaled by its smallest value while
    fitting, so that b stays near the size of the accuracy gap."""
    import numpy as np
    from scipy.optimize import curve_fit

    x0 = min(dofs)
    xs, ys = np.asarray(dofs, float) / x0, np.asarray(top1s, float)
    top = min(100.0, ys.max() + 0.1 * (ys.max() - ys.min()) + 1e-3)
    p0 = [top, max(top - ys[xs.argmin()], 1e-3), 0.5]
    try:
        (a, b, c), _ = curve_fit(lambda x, a, b, c: a - b * x ** -c, xs, ys, p0=p0,
                                 bounds=([-np.inf, 0, 0], [100, np.inf, 5]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    fit = {"a": float(a), "b": float(b * x0 ** c), "c": float(c), "n": len(dofs)}
    fit["r2"] = r_squared(top1s, [saturating(d, fit) for d in dofs])
    return fit


def saturation_start(fit: dict, margin: float = SATURATION_MARGIN) -> float:
    """The DoF above which the saturating fit is within `margin` points of its plateau a."""
    if fit["b"] <= margin or fit["c"] == 0:
        return 0.0 if fit["b"] <= margin else math.inf
    return (fit["b"] / margin) ** (1 / fit["c"])


def interpolate_log(xs: list[float], ys: list[float], x: float) -> float:
    """y at x on the polyline through (log10 xs, ys), sorted by x; outside the range, the
    nearest segment extended."""
    pts = sorted(zip(xs, ys))
    if len(pts) == 1:
        return pts[0][1]
    lx = math.log10(x)
    i = next((k for k in range(1, len(pts) - 1) if lx <= math.log10(pts[k][0])), len(pts) - 1)
    (x1, y1), (x2, y2) = pts[i - 1], pts[i]
    t = (lx - math.log10(x1)) / (math.log10(x2) - math.log10(x1))
    return y1 + t * (y2 - y1)
