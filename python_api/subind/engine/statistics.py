"""Statistics for experiment tables: every number with its uncertainty.

* ``mean_ci``: the mean over seeds with a 95 % bootstrap confidence interval.
  With the few seeds a CPU affords (5–10), the plain percentile bootstrap is
  too narrow (its intervals are those of a z interval with the biased
  standard deviation), so the percentiles are widened as in Hesterberg's
  *expanded percentile* interval: the tail probability α/2 is replaced by
  Φ(−√(n/(n−1))·t_{n−1, 1−α/2}), which matches the t interval's width for
  normal data and keeps the bootstrap's shape otherwise.
* ``paired``: a comparison of two conditions paired by seed — the mean
  difference with its bootstrap CI over pairs, the wins/losses/ties and the
  exact two-sided sign test (ties dropped).
* ``crossing``: the smallest N at which a mean accuracy curve reaches a
  threshold, log-interpolated between grid points (linear from N = 0);
  None when the grid never reaches it — never extrapolated.
* ``efficiency_ratio``: N_other / N_reference at a threshold with a paired
  bootstrap CI over seeds (the resamples in which a curve never reaches the
  threshold are counted and reported, not dropped silently).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

LEVEL = 0.95
DRAWS = 4000


def _tail(n: int, level: float) -> float:
    """The expanded percentile interval's tail probability for n values."""
    from scipy import stats

    if n < 2:
        return (1 - level) / 2
    t = stats.t.ppf(1 - (1 - level) / 2, n - 1)
    return float(stats.norm.cdf(-math.sqrt(n / (n - 1)) * t))


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    def cell(self, digits: int = 3) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (n=1, no CI)"
        return (f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}] "
                f"(n={self.n})")

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "seeds": self.n}

    @classmethod
    def of(cls, row: dict) -> "Estimate":
        return cls(row["mean"], row["low"], row["high"], row["seeds"])


def mean_ci(values: Sequence[float], level: float = LEVEL, draws: int = DRAWS,
            seed: int = 0) -> Estimate:
    """The mean of ``values`` and its expanded-percentile bootstrap interval
    (module doc); a single value has no interval (low = high = the value)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(draws, x.size))].mean(axis=1)
    tail = _tail(x.size, level)
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(mean, float(low), float(high), int(x.size))


def sign_test_p(wins: int, losses: int) -> float:
    """The exact two-sided sign test's p-value for ``wins`` against ``losses``
    (ties left out before): 2·P(X ≤ min) for X ~ Binomial(wins + losses, ½),
    at most 1."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Paired:
    difference: Estimate   # mean of (a − b) over the pairs, with its CI
    wins: int              # pairs where a > b
    losses: int
    ties: int
    sign_p: float

    def as_dict(self) -> dict:
        return {**self.difference.as_dict(), "wins": self.wins, "losses": self.losses,
                "ties": self.ties, "sign_test_p": self.sign_p}


def paired(a: Mapping, b: Mapping, tolerance: float = 1e-9, seed: int = 0) -> Paired:
    """``a`` − ``b`` over the keys (seeds) both hold."""
    keys = sorted(set(a) & set(b))
    diffs = [a[k] - b[k] for k in keys]
    wins = sum(d > tolerance for d in diffs)
    losses = sum(d < -tolerance for d in diffs)
    return Paired(mean_ci(diffs, seed=seed), wins, losses, len(diffs) - wins - losses,
                  sign_test_p(wins, losses))


def crossing(ns: Sequence[float], means: Sequence[float], threshold: float) -> Optional[float]:
    """The smallest N at which the curve (``ns`` ascending, their mean
    accuracies) reaches ``threshold``: interpolated in log N between the grid
    points around the first crossing (linearly when the lower point is N = 0),
    the first grid point when it already reaches it there, None when no grid
    point does."""
    points = sorted(zip(ns, means))
    for i, (n, m) in enumerate(points):
        if m >= threshold:
            if i == 0:
                return float(n)
            n0, m0 = points[i - 1]
            share = (threshold - m0) / (m - m0)
            if share >= 1:  # reached exactly at this grid point
                return float(n)
            if n0 <= 0:
                return float(n0 + share * (n - n0))
            return float(math.exp(math.log(n0) + share * (math.log(n) - math.log(n0))))
    return None


@dataclass(frozen=True)
class Ratio:
    ratio: Optional[float]      # N_other / N_reference on the mean curves (None: not reached)
    low: Optional[float]
    high: Optional[float]
    undefined_draws: int        # bootstrap resamples in which a curve never reached it
    draws: int

    def cell(self) -> str:
        if self.ratio is None:
            return "not reached within the grid"
        interval = (f" [{self.low:.2f}, {self.high:.2f}]" if self.low is not None
                    else " (no CI)")
        note = (f"; {self.undefined_draws}/{self.draws} resamples not reached"
                if self.undefined_draws else "")
        return f"{self.ratio:.2f}×{interval}{note}"

    def as_dict(self) -> dict:
        return asdict(self)


def efficiency_ratio(curves_other: Mapping, curves_reference: Mapping, ns: Sequence[float],
                     threshold: float, draws: int = DRAWS, seed: int = 0) -> Ratio:
    """N_other / N_reference at ``threshold`` on the curves of mean accuracy
    over seeds; ``curves_*`` map a seed to {N: accuracy}.  The CI resamples
    the seeds both conditions hold (paired) and recomputes both curves."""
    seeds = sorted(set(curves_other) & set(curves_reference))

    def mean_curve(curves, chosen):
        return [float(np.mean([curves[s][n] for s in chosen])) for n in ns]

    def ratio_of(chosen):
        a = crossing(ns, mean_curve(curves_other, chosen), threshold)
        b = crossing(ns, mean_curve(curves_reference, chosen), threshold)
        if a is None or b is None or b <= 0:
            return None
        return a / b

    if not seeds or any(n not in curves_other[s] or n not in curves_reference[s]
                        for s in seeds for n in ns):
        return Ratio(None, None, None, 0, 0)
    point = ratio_of(seeds)
    if point is None or len(seeds) < 2:
        return Ratio(point, None, None, 0, 0)
    rng = np.random.default_rng(seed)
    found, undefined = [], 0
    for _ in range(draws):
        value = ratio_of([seeds[i] for i in rng.integers(0, len(seeds), len(seeds))])
        if value is None:
            undefined += 1
        else:
            found.append(value)
    if not found:
        return Ratio(point, None, None, undefined, draws)
    tail = _tail(len(seeds), LEVEL)
    low, high = np.quantile(found, [tail, 1 - tail])
    return Ratio(point, float(low), float(high), undefined, draws)


# ----------------------------------------------------------- experiment tables
#: the condition every other is compared with
REFERENCE = "subtask_induction"
THRESHOLDS = (0.90, 0.95, 0.99)


def compare_conditions(records: Sequence[dict], metric, *, panel=lambda r: "",
                       unit=lambda r: r["seed"], reference: str = REFERENCE,
                       thresholds: Sequence[float] = THRESHOLDS,
                       ratio_of: Sequence[str] = ("random", "scratch")) -> dict:
    """The statistics of one metric over an experiment's run records (each
    with ``condition`` and ``n_disambiguation``): per (panel, N, condition)
    the mean with its CI over units (seeds, or (layers, seed) pairs); per
    (panel, N) ``reference`` minus every other condition, paired by unit;
    per panel and threshold the N at which each condition's mean curve
    reaches it and the ratios N_condition / N_reference for ``ratio_of``.
    ``metric(record)`` is the value (None: undefined)."""
    values: dict = {}
    for r in records:
        value = metric(r)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            values.setdefault((panel(r), r["n_disambiguation"], r["condition"]),
                              {})[unit(r)] = float(value)
    points = [{"panel": p, "n_disambiguation": n, "condition": c,
               **mean_ci(list(v.values())).as_dict()}
              for (p, n, c), v in sorted(values.items(), key=lambda kv: _order(kv[0]))]
    comparisons = []
    for (p, n, c), v in sorted(values.items(), key=lambda kv: _order(kv[0])):
        mine = values.get((p, n, reference))
        if c != reference and mine is not None:
            comparisons.append({"panel": p, "n_disambiguation": n, "condition": c,
                                **paired(mine, v).as_dict()})
    efficiency = []
    for p in sorted({k[0] for k in values}):
        ns = sorted({k[1] for k in values if k[0] == p})
        if len(ns) < 2 or not thresholds:
            continue
        curves = {c: _curves(values, p, c, ns) for c in sorted({k[2] for k in values
                                                                if k[0] == p})}
        for t in thresholds:
            row = {"panel": p, "threshold": t,
                   "n_reached": {c: crossing(ns, [float(np.mean([curve[n]
                                                                 for curve in cv.values()]))
                                                  for n in ns], t) if cv else None
                                 for c, cv in curves.items()},
                   "ratios": {}}
            for c in ratio_of:
                if c in curves and reference in curves:
                    row["ratios"][c] = efficiency_ratio(curves[c], curves[reference], ns,
                                                        t).as_dict()
            efficiency.append(row)
    return {"points": points, "paired": comparisons, "efficiency": efficiency}


def _order(key) -> tuple:
    panel, n, condition = key
    return (str(panel), n, condition != REFERENCE, condition)


def _curves(values: dict, panel, condition: str, ns: Sequence) -> dict:
    """{unit: {N: value}} for the units that have every N of the grid."""
    units = set.intersection(*[set(values.get((panel, n, condition), {})) for n in ns])
    return {u: {n: values[(panel, n, condition)][u] for n in ns} for u in sorted(units, key=str)}


def markdown_lines(stats: dict, what: str, digits: int = 3) -> list[str]:
    """Markdown tables of ``compare_conditions``' result for one metric."""
    def est(row):
        return Estimate.of(row).cell(digits)

    panels = sorted({row["panel"] for row in stats["points"]}, key=str)
    label = lambda p: f"{p}, " if p else ""
    model = "model, " * any(panels)
    lines = [f"### {what}: mean [95 % CI] over seeds", "",
             "| " + " | ".join([model + "N", "condition", what]) + " |",
             "|---|---|---|"]
    lines += [f"| {label(r['panel'])}{r['n_disambiguation']} | "
              f"{r['condition'].replace('_', ' ')} | {est(r)} |" for r in stats["points"]]
    if stats["paired"]:
        lines += ["", f"### {what}: {REFERENCE.replace('_', ' ')} minus each condition, paired "
                      "by seed", "",
                  f"| {model}N | minus | difference [95 % CI] | wins / losses / ties | "
                  "sign test p |", "|---|---|---|---|---|"]
        lines += [f"| {label(r['panel'])}{r['n_disambiguation']} | "
                  f"{r['condition'].replace('_', ' ')} | {est(r)} | {r['wins']} / {r['losses']} / {r['ties']} | "
                  f"{r['sign_test_p']:.3g} |" for r in stats["paired"]]
        most = max(r["seeds"] for r in stats["paired"])
        lines += ["", f"(the exact two-sided sign test cannot go below 2/2^n for n untied "
                      f"pairs: with {most} pairs, p ≥ {sign_test_p(most, 0):.3g})"]
    if stats["efficiency"]:
        conditions = sorted({c for row in stats["efficiency"] for c in row["n_reached"]},
                            key=lambda c: (c != REFERENCE, c))
        ratios = sorted({c for row in stats["efficiency"] for c in row["ratios"]})
        lines += ["", f"### Data efficiency ({what}): the smallest N whose mean reaches the "
                      "threshold (log-interpolated; never extrapolated)", "",
                  "| " + " | ".join([model + "threshold", *[c.replace("_", " ") for c in
                                                           conditions],
                                     *[f"{c} / {REFERENCE.replace('_', ' ')} [95 % CI]"
                                       for c in ratios]]) + " |",
                  "|" + "---|" * (1 + len(conditions) + len(ratios))]
        for row in stats["efficiency"]:
            reached = [("not reached" if row["n_reached"].get(c) is None
                        else f"{row['n_reached'][c]:.0f}") for c in conditions]
            cells = [Ratio(**row["ratios"][c]).cell() if c in row["ratios"] else "–"
                     for c in ratios]
            lines.append(f"| {label(row['panel'])}{row['threshold']:g} | "
                         + " | ".join([*reached, *cells]) + " |")
    return lines


def write_tables(out, by_metric: dict) -> list:
    """``out``/statistics.json (every metric's ``compare_conditions``) and
    ``out``/statistics.csv (one row per point and per paired comparison),
    written atomically."""
    import csv
    import io
    import json
    from pathlib import Path

    from .files import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["metric", "kind", "panel", "n_disambiguation", "condition", "mean",
                     "ci_low", "ci_high", "seeds", "wins", "losses", "ties", "sign_test_p"])
    for metric, stats in by_metric.items():
        for row in stats["points"]:
            writer.writerow([metric, "mean", row["panel"], row["n_disambiguation"],
                             row["condition"], row["mean"], row["low"], row["high"],
                             row["seeds"], "", "", "", ""])
        for row in stats["paired"]:
            writer.writerow([metric, f"{REFERENCE} minus", row["panel"],
                             row["n_disambiguation"], row["condition"], row["mean"], row["low"],
                             row["high"], row["seeds"], row["wins"], row["losses"], row["ties"],
                             row["sign_test_p"]])
    out = Path(out)
    return [atomic_write_text(out / "statistics.json", json.dumps(by_metric, indent=1,
                                                                   default=str)),
            atomic_write_text(out / "statistics.csv", buffer.getvalue())]
