"""Speedups over the baseline sampler, read from records' accuracy-versus-cost curves.

For one system, the **cost to target** of a cell is the cost (energy + force evaluations,
and wall seconds) of the first snapshot of its curve at which the metric reaches the
target ε (≤ ε for errors, ≥ ε for ESS-like metrics). No interpolation between snapshots:
the resolution is one snapshot interval. The curve's cost already includes setup (it is
the ledger's ``total_evals``, ``total_wall_s``), so setup costs always count.

The **speedup** of sampler S over the baseline B (the record's ``matrix.baseline``) is the
ratio of mean costs over seeds, mean_B(cost)/mean_S(cost), in evaluations and in wall
seconds. A cell that never reaches ε is *censored*: its cost is at least its total cost,
which stands in for it, and the result is labelled a bound:

* the baseline censored in some seed (S never) → the speedup is a **lower bound** ("≥ 40×");
* S censored in some seed (the baseline never) → an **upper bound** ("≤ 0.5×");
* both censored → undefined.

**ESS per cost** relative to the baseline: mean_S(ESS/cost)/mean_B(ESS/cost), from the
final ``ess`` metric and the total cost, in evaluations and wall seconds.

Confidence intervals: percentile bootstrap over seeds (Efron & Tibshirani 1993, ch. 13),
the seeds of S and of B resampled independently, 2000 resamples from a fixed seed.
With few seeds the intervals are crude (with two seeds the bootstrap has three
distinct means); they are what the data support. **One seed: no interval.** An interval
exists only when every resampled group has at least two values: a single value has no
spread to resample, so it gets the point value with ``low = high = None`` (shown as
"value (one seed: no interval)"), never a zero-width interval that would look certain.

**Default target** (when none is given): per system, the median over samplers of each
sampler's mean final value of the metric ("median_final"), so that about half of the
samplers reach it. Other rules: "baseline_final" (what the baseline reaches at the end
of its budget: "how much sooner does S get there"), "baseline_initial:F" (a fraction F of
the baseline's mean first-snapshot value), or an explicit number.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240603
LEVEL = 0.95
#: Fewest values (seeds) a group needs for an interval; below it the value has none.
MIN_SEEDS = 2
NO_INTERVAL = "one seed: no interval"
DEFAULT_TARGET_RULE = "median_final"
RULE = ("cost to target = cost (evaluations and wall seconds, setup included) of the first snapshot at "
        "which the metric reaches the target; speedup = mean over seeds of the baseline's cost / the "
        "sampler's; a cell that never reaches the target counts with its total cost and makes the "
        "speedup a bound (≥ when the baseline missed, ≤ when the sampler missed, undefined when both "
        "did); ESS per cost relative to the baseline likewise; 95 % percentile bootstrap intervals over "
        "seeds, both groups resampled independently; default target: median over samplers of the mean "
        "final value of the metric (or a number, baseline_final, baseline_initial:F)")
#: Metrics for which larger is better (the rest are errors: smaller is better).
HIGHER_IS_BETTER = frozenset({"ess", "ess_geyer", "ess_fraction"})
#: Metrics that are estimates, not errors: neither direction is better.
NO_DIRECTION = frozenset({"delta_f", "delta_f_stderr"})


def direction(metric: str) -> int:
    """+1 if larger is better, −1 if smaller is better, 0 if neither (an estimate)."""
    if metric in NO_DIRECTION:
        return 0
    if metric in HIGHER_IS_BETTER or metric.startswith("ess"):
        return 1
    return -1


# ---------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval.

    ``bound`` is "" for an estimate, "lower" or "upper" when censoring makes the value a
    bound, "undefined" when nothing can be said (then ``value`` is None). ``low`` and
    ``high`` are None when there is a value but no interval (fewer than two seeds in a
    resampled group, see the module docstring).
    """

    value: float | None
    low: float | None
    high: float | None
    bound: str = ""

    @property
    def has_interval(self) -> bool:
        """True when there is a value with an interval (at least two seeds per group)."""
        return self.value is not None and self.bound != "undefined" and self.low is not None and self.high is not None

    def text(self, digits: int = 3, unit: str = "") -> str:
        if self.value is None or self.bound == "undefined":
            return "undefined"
        prefix = {"lower": "≥ ", "upper": "≤ "}.get(self.bound, "")
        text = f"{prefix}{self.value:.{digits}g}{unit}"
        if self.bound == "" and not self.has_interval:
            text += f" ({NO_INTERVAL})"
        elif self.bound == "" and self.low != self.high:
            text += f" [{self.low:.{digits}g}, {self.high:.{digits}g}]"
        return text


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                 n_boot: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL,
                 seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over ``values``.

    ``statistic`` maps an (n_boot, n) array of resamples to (n_boot,) values. One value
    gives the value without an interval (``low = high = None``); no values give an
    undefined one.
    """
    x = np.asarray([v for v in values if v is not None], float)
    if x.size == 0:
        return Interval(None, None, None, "undefined")
    stat = statistic or (lambda a: a.mean(axis=-1))
    point = float(stat(x[None, :])[0])
    if x.size < MIN_SEEDS:
        return Interval(point, None, None)
    picks = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    reps = stat(x[picks])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return Interval(point, float(low), float(high))


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], n_boot: int = BOOTSTRAP_RESAMPLES,
             level: float = LEVEL, seed: int = BOOTSTRAP_SEED) -> Interval:
    """mean(numerator)/mean(denominator) with a percentile bootstrap interval, the two
    groups resampled independently; no interval when either group has one value (the
    bootstrap could not see that group's spread)."""
    num, den = np.asarray(numerator, float), np.asarray(denominator, float)
    if num.size == 0 or den.size == 0 or den.mean() <= 0:
        return Interval(None, None, None, "undefined")
    point = float(num.mean() / den.mean())
    if num.size < MIN_SEEDS or den.size < MIN_SEEDS:
        return Interval(point, None, None)
    rng = np.random.default_rng(seed)
    num_rep = num[rng.integers(0, num.size, size=(n_boot, num.size))].mean(axis=1)
    den_rep = den[rng.integers(0, den.size, size=(n_boot, den.size))].mean(axis=1)
    reps = num_rep / den_rep
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return Interval(point, float(low), float(high))


# ------------------------------------------------------------------ cost to target


def reaches(value: float | None, target: float, sign: int) -> bool:
    """Does ``value`` meet ``target`` in the metric's direction (sign +1: ≥, else ≤)?"""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value >= target if sign > 0 else value <= target


def cost_to_target(curve: list[dict[str, Any]], metric: str, target: float,
                   sign: int | None = None) -> tuple[float, float] | None:
    """(evaluations, wall seconds) of the first curve point that reaches ``target``, or
    None if none does. ``sign`` defaults to :func:`direction` (errors: ≤ target)."""
    sign = direction(metric) if sign is None else sign
    for point in curve:
        if reaches(point.get("metrics", {}).get(metric), target, sign):
            return float(point["cost"]), float(point.get("wall_s") or 0.0)
    return None


@dataclass(frozen=True)
class CellCost:
    """A cell's cost to target, or its total cost with ``censored`` when it never got there."""

    evals: float
    wall_s: float
    censored: bool


def cell_cost(record: dict[str, Any], metric: str, target: float) -> CellCost:
    hit = cost_to_target(record.get("curve", []), metric, target)
    if hit is not None:
        return CellCost(hit[0], hit[1], False)
    cost = record.get("cost", {})
    return CellCost(float(cost.get("total_evals", 0.0)), float(cost.get("total_wall_s", 0.0)), True)


# --------------------------------------------------------------------------- targets


def _final(record: dict[str, Any], metric: str) -> float | None:
    return record.get("final", {}).get("metrics", {}).get(metric)


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def parse_target(text: str | float | None) -> str | float | None:
    """A target given as text: a number, or one of the rules; raises ValueError naming the
    valid forms."""
    if text is None or isinstance(text, (int, float)):
        return text
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"--target: must be finite, got {text!r}")
        return value
    if text in ("median_final", "baseline_final"):
        return text
    if text.startswith("baseline_initial:"):
        try:
            fraction = float(text.split(":", 1)[1])
        except ValueError:
            fraction = -1.0
        if 0 < fraction < math.inf:
            return text
    raise ValueError(f"--target: {text!r} is not a number or a rule; valid: a number, median_final, "
                     f"baseline_final, baseline_initial:F with F > 0")


def choose_target(by_sampler: dict[str, list[dict[str, Any]]], metric: str, baseline: str | None,
                  rule: str | float | None = None) -> tuple[float | None, str]:
    """The target ε for one system and a sentence saying how it was chosen.

    ``rule``: a number, "median_final" (default), "baseline_final" or
    "baseline_initial:F" (see the module docstring).
    """
    rule = DEFAULT_TARGET_RULE if rule is None else rule
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return float(rule), f"given: {metric} {'≥' if direction(metric) > 0 else '≤'} {rule:.4g}"
    try:
        return float(rule), f"given: {metric} {'≥' if direction(metric) > 0 else '≤'} {float(rule):.4g}"
    except ValueError:
        pass
    if rule == "median_final":
        means = [m for m in (_mean([_final(r, metric) for r in runs]) for runs in by_sampler.values())
                 if m is not None]
        if not means:
            return None, f"median over samplers of the final {metric}: undefined"
        return float(np.median(means)), f"median over samplers of the mean final {metric}"
    runs = by_sampler.get(baseline or "", [])
    if rule == "baseline_final":
        value = _mean([_final(r, metric) for r in runs])
        return value, f"the baseline's ({baseline}) mean final {metric}"
    if isinstance(rule, str) and rule.startswith("baseline_initial:"):
        fraction = float(rule.split(":", 1)[1])
        first = [r["curve"][0]["metrics"].get(metric) for r in runs if r.get("curve")]
        value = _mean(first)
        return (None if value is None else fraction * value,
                f"{fraction:g} × the baseline's ({baseline}) mean first-snapshot {metric}")
    raise ValueError(f"target: unknown rule {rule!r}; valid: a number, median_final, "
                     f"baseline_final, baseline_initial:F")


# --------------------------------------------------------------------------- speedups


@dataclass(frozen=True)
class SpeedupRow:
    """One sampler's speedup over the baseline on one system."""

    sampler: str
    seeds: int
    reached: int
    cost_evals: Interval
    speedup_evals: Interval
    speedup_wall: Interval
    ess_per_eval: Interval
    ess_per_second: Interval


@dataclass(frozen=True)
class SpeedupTable:
    system: str
    metric: str
    target: float | None
    target_rule: str
    baseline: str | None
    rows: list[SpeedupRow]


def _bounded(ratio: Interval, sampler_censored: bool, baseline_censored: bool) -> Interval:
    if ratio.value is None:
        return ratio
    if sampler_censored and baseline_censored:
        return Interval(None, None, None, "undefined")
    if baseline_censored:
        return Interval(ratio.value, ratio.low, ratio.high, "lower")
    if sampler_censored:
        return Interval(ratio.value, ratio.low, ratio.high, "upper")
    return ratio


def _ess_rates(runs: list[dict[str, Any]], key: str) -> list[float]:
    rates = []
    for record in runs:
        ess = _final(record, "ess")
        cost = record.get("cost", {}).get(key)
        if ess is not None and cost:
            rates.append(float(ess) / float(cost))
    return rates


def speedup_table(records: list[dict[str, Any]], metric: str, target: str | float | None = None,
                  baseline: str | None = None, n_boot: int = BOOTSTRAP_RESAMPLES,
                  level: float = LEVEL, seed: int = BOOTSTRAP_SEED) -> SpeedupTable:
    """Speedups of every sampler over the baseline on the ok records of ONE system."""
    ok = [r for r in records if r.get("status") == "ok"]
    system = ok[0]["system"]["label"] if ok else (records[0]["system"]["label"] if records else "?")
    if baseline is None:
        baseline = next((r.get("matrix", {}).get("baseline") for r in ok if r.get("matrix", {}).get("baseline")), None)
    by_sampler: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in ok:
        by_sampler[record["sampler"]["label"]].append(record)
    eps, rule_text = choose_target(by_sampler, metric, baseline, target)
    rows = []
    base_runs = by_sampler.get(baseline or "", [])
    undefined = Interval(None, None, None, "undefined")
    for sampler, runs in by_sampler.items():
        costs = [cell_cost(r, metric, eps) for r in runs] if eps is not None else []
        cost_interval = (bootstrap_ci([c.evals for c in costs], n_boot=n_boot, level=level, seed=seed)
                         if costs else undefined)
        if costs and any(c.censored for c in costs):
            cost_interval = Interval(cost_interval.value, cost_interval.low, cost_interval.high, "lower")
        if sampler == baseline:  # 1 by definition, whatever its spread over seeds
            one = Interval(1.0, 1.0, 1.0)
            rows.append(SpeedupRow(sampler, len(runs), sum(not c.censored for c in costs), cost_interval,
                                   one, one, one, one))
            continue
        if eps is None or not base_runs:
            speed_e = speed_w = undefined
        else:
            base = [cell_cost(r, metric, eps) for r in base_runs]
            s_cens, b_cens = any(c.censored for c in costs), any(c.censored for c in base)
            speed_e = _bounded(ratio_ci([c.evals for c in base], [c.evals for c in costs], n_boot, level, seed),
                               s_cens, b_cens)
            speed_w = _bounded(ratio_ci([c.wall_s for c in base], [c.wall_s for c in costs], n_boot, level, seed),
                               s_cens, b_cens)
        ess_e = ratio_ci(_ess_rates(runs, "total_evals"), _ess_rates(base_runs, "total_evals"), n_boot, level, seed)
        ess_w = ratio_ci(_ess_rates(runs, "total_wall_s"), _ess_rates(base_runs, "total_wall_s"), n_boot, level, seed)
        rows.append(SpeedupRow(sampler, len(runs), sum(not c.censored for c in costs), cost_interval,
                               speed_e, speed_w, ess_e, ess_w))
    return SpeedupTable(system, metric, eps, rule_text, baseline, rows)
