"""What changed against a baseline results folder (``boltzbench report DIR --baseline OLD``).

For every (system, sampler, metric) present in both, the final metric's values over the ok
seeds of the baseline (x_1..x_m) and of the current run (y_1..y_n) are compared. Values that
are undefined (None, NaN, ±inf, not a number) are left out of the means and the test.

**The regression rule.** With tolerance τ (``--tolerance``, a relative change of the mean;
default 10 %, asv's default ``--factor 1.1``) and s = +1 for errors (larger is worse), −1 for
ESS (smaller is worse), the metric got worse beyond the tolerance when

    s·(μ_y − μ_x) > τ·|μ_x|,   i.e.  L = a_y μ_y + a_x μ_x > 0,  a_y = s,  a_x = −s − τ·sign(x̄).

A **regression** needs evidence of that: a one-sided Welch t-test of H0: L ≤ 0 (worse by at
most the tolerance) against H1: L > 0 at α = 0.05. The statistic is t = L̂ / √V with
L̂ = a_y ȳ + a_x x̄, V = a_y² s_y²/n + a_x² s_x²/m, and ν = V² / [(a_y² s_y²/n)²/(n − 1) +
(a_x² s_x²/m)²/(m − 1)] degrees of freedom (Welch, Biometrika 34, 28, 1947, for linear
combinations of means with unequal variances; Satterthwaite, Biometrics Bull. 2, 110, 1946);
p = P(T_ν > t). Under normal seed-to-seed noise its false-alarm rate is at most α for every
true change within the tolerance (not only for no change), and a regression always has a
mean change beyond the tolerance (t > 0 implies L̂ > 0). With no spread on either
side the values are exact: a regression iff L̂ > 0.

Why Welch and not a permutation or rank test: with 2 vs 2 seeds the smallest one-sided
permutation p-value is 1/C(4, 2) = 1/6 (so nothing could ever be flagged), and with 3 vs 3
it is 1/20 = α. Welch's test works at 2 vs 2: ν lies between 1 and 2, so the one-sided
critical t is 2.9–6.3, and only a change that is large against the seeds' spread counts
(e.g. the md ESS 38.4 → 37.7 from seeds {0, 1} → {2, 3}, −1.8 %, is not a regression; a
2× error with 1 % spread is).

Verdicts, per metric:

* **regression**: the test above rejects; **improvement**: the mirror test (better by more
  than the tolerance) rejects at α;
* **moved** (estimates without a direction, such as ``delta_f``): either one-sided test
  rejects at α/2; such metrics never regress;
* **not testable**: fewer than two defined seeds on either side, and the mean changed by
  more than the tolerance: there is no test, so it is never a regression;
* **worse (not gated)**: a regression of a metric left out of the gate (``--ignore-metric``);
* a metric defined before and undefined in every cell now (for example a state no longer
  visited) is a regression, the reverse an improvement: undefined counts as worst;
* a (system, sampler) pair with ok cells in the baseline and none now is a regression
  ("no ok cell now"), whatever the gate; pairs only on one side are "new" or "removed";
* **not comparable**: a pair whose settings (parameters, budget, metrics) differ between the
  two runs, with the settings named; its metrics are not compared.

Everything else is counted as unchanged (no evidence of a change beyond the tolerance).
Wall-clock seconds are not compared (they depend on the machine).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.stats import t as student_t

from boltzbench.metrics.speedup import MIN_SEEDS, Interval, bootstrap_ci, direction
from boltzbench.reports.selection import differing_settings

#: One-sided false-alarm rate of the regression test.
ALPHA = 0.05
#: Default relative tolerance on the mean (asv's default --factor 1.1).
DEFAULT_TOLERANCE = 0.10
RULE = ("a regression is a metric whose mean got worse by more than the tolerance (relative to the baseline's "
        "mean) with evidence: a one-sided Welch t-test of 'worse by at most the tolerance' rejects at "
        "α = 0.05; with fewer than two seeds on either side there is no test (not testable: never a "
        "regression); a pair with no ok cell now is a regression")


@dataclass(frozen=True)
class Change:
    system: str
    sampler: str
    metric: str
    before: Interval | None
    after: Interval | None
    verdict: str  # regression | improvement | moved | not testable | worse (not gated) | new | removed
    relative: float | None = None  # (mean now − mean before) / |mean before|
    p_value: float | None = None   # one-sided p of the test behind the verdict

    @property
    def is_regression(self) -> bool:
        return self.verdict == "regression"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def final_values(runs: list[dict[str, Any]], metric: str) -> list[float]:
    """The defined final values of ``metric`` over the ok records in ``runs``."""
    values = [_number(((r.get("final") or {}).get("metrics") or {}).get(metric))
              for r in runs if r.get("status") == "ok"]
    return [v for v in values if v is not None]


def final_interval(runs: list[dict[str, Any]], metric: str) -> Interval:
    """Mean over the ok seeds of a final metric with its percentile bootstrap interval."""
    return bootstrap_ci(final_values(runs, metric))


def parse_tolerance(text: str | float | None) -> float:
    """``"5%"`` or ``"0.05"`` → 0.05; None → the default. Raises ValueError naming ``--tolerance``."""
    if text is None:
        return DEFAULT_TOLERANCE
    raw = str(text).strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--tolerance: {text!r} is not a tolerance; valid: a percentage such as 5% or a "
                         "fraction such as 0.05 (≥ 0)")
    if not percent and value >= 1:
        raise ValueError(f"--tolerance: {text!r} would be {100 * value:g} %; write it with a % sign "
                         f"({raw}% or {100 * value:g}%) to say which is meant")
    return value / 100 if percent else value


def welch_p_worse(before: Sequence[float], after: Sequence[float], sign: int, tolerance: float) -> float | None:
    """One-sided p-value of H0 'after is worse than before by at most ``tolerance``'.

    ``sign`` is −1 when smaller is better (an increase is worse), +1 when larger is better.
    None when either side has fewer than two values (no test). See the module docstring.
    """
    x, y = np.asarray(before, float), np.asarray(after, float)
    if x.size < MIN_SEEDS or y.size < MIN_SEEDS:
        return None
    worse = -sign  # +1: larger is worse
    a_y, a_x = worse, -worse - tolerance * np.sign(x.mean())
    estimate = a_y * y.mean() + a_x * x.mean()
    terms = (a_y**2 * y.var(ddof=1) / y.size, a_x**2 * x.var(ddof=1) / x.size)
    variance = terms[0] + terms[1]
    if variance == 0:
        return 0.0 if estimate > 0 else 1.0
    dof = variance**2 / (terms[0] ** 2 / (y.size - 1) + terms[1] ** 2 / (x.size - 1))
    return float(student_t.sf(estimate / math.sqrt(variance), dof))


def _relative(before: Sequence[float], after: Sequence[float]) -> float | None:
    old = float(np.mean(before)) if len(before) else None
    if old is None or not len(after):
        return None
    new = float(np.mean(after))
    return (new - old) / abs(old) if old != 0 else (0.0 if new == old else math.copysign(math.inf, new - old))


def verdict(metric: str, before: Sequence[float], after: Sequence[float], tolerance: float = DEFAULT_TOLERANCE,
            alpha: float = ALPHA) -> tuple[str | None, float | None]:
    """('regression' | 'improvement' | 'moved' | 'not testable' | None, p) for one metric's
    defined values before and after (module docstring); None: no evidence of a change."""
    sign = direction(metric)
    if len(before) < MIN_SEEDS or len(after) < MIN_SEEDS:
        rel = _relative(before, after)
        return ("not testable" if rel is not None and abs(rel) > tolerance else None), None
    if sign == 0:
        p = min(welch_p_worse(before, after, -1, tolerance), welch_p_worse(before, after, +1, tolerance))
        return ("moved" if p < alpha / 2 else None), p
    p_worse = welch_p_worse(before, after, sign, tolerance)
    if p_worse < alpha:
        return "regression", p_worse
    p_better = welch_p_worse(before, after, -sign, tolerance)
    if p_better < alpha:
        return "improvement", p_better
    return None, None


def check_gate_metrics(ignore: Iterable[str], records: Iterable[dict[str, Any]]) -> list[str]:
    """The names in ``ignore``, each checked against the metrics of ``records``.

    Raises ValueError naming ``--ignore-metric`` and the valid choices for an unknown name.
    """
    ignore = list(ignore)
    known = sorted({m for r in records for m in ((r.get("final") or {}).get("metrics") or {})})
    unknown = [m for m in ignore if m not in known]
    if unknown:
        raise ValueError(f"--ignore-metric: unknown metric {', '.join(map(repr, unknown))}; valid choices: "
                         f"{', '.join(known) or '(no metric in the records)'}")
    return ignore


def _group(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["system"]["label"], record["sampler"]["label"])].append(record)
    return groups


def compare(current: list[dict[str, Any]], baseline: list[dict[str, Any]], *,
            tolerance: float = DEFAULT_TOLERANCE, ignore: Iterable[str] = (),
            alpha: float = ALPHA) -> tuple[list[Change], int]:
    """Every flagged change, and the number of compared metrics with no evidence of a change.

    ``ignore``: metrics left out of the gate (their regressions read "worse (not gated)");
    an unknown name raises ValueError (see :func:`check_gate_metrics`).
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"--tolerance: must be a finite number ≥ 0, got {tolerance!r}")
    ignored = set(check_gate_metrics(ignore, list(current) + list(baseline)))
    now, old = _group(current), _group(baseline)
    changes: list[Change] = []
    unchanged = 0
    for key in sorted(set(now) | set(old)):
        system, sampler = key
        if key not in old:
            changes.append(Change(system, sampler, "(cells)", None, None, "new"))
            continue
        if key not in now:
            changes.append(Change(system, sampler, "(cells)", None, None, "removed"))
            continue
        differ = differing_settings(now[key], old[key])
        if differ:  # the same labels, other settings: the runs do not measure the same thing
            changes.append(Change(system, sampler, f"(settings differ: {', '.join(differ)})", None, None,
                                  "not comparable"))
            continue
        ok_now = [r for r in now[key] if r.get("status") == "ok"]
        ok_old = [r for r in old[key] if r.get("status") == "ok"]
        if ok_old and not ok_now:
            changes.append(Change(system, sampler, "(no ok cell now)", None, None, "regression"))
            continue
        metrics = dict.fromkeys(m for r in ok_old + ok_now for m in ((r.get("final") or {}).get("metrics") or {}))
        for metric in metrics:
            x, y = final_values(ok_old, metric), final_values(ok_now, metric)
            before, after = bootstrap_ci(x), bootstrap_ci(y)
            if not x or not y:
                if bool(x) != bool(y):
                    # undefined counts as the worst value (as in the ranking)
                    lost = not y
                    result = "moved" if direction(metric) == 0 else ("regression" if lost else "improvement")
                    if result == "regression" and metric in ignored:
                        result = "worse (not gated)"
                    changes.append(Change(system, sampler, metric, before, after, result))
                continue
            result, p = verdict(metric, x, y, tolerance, alpha)
            if result is None:
                unchanged += 1
                continue
            if result == "regression" and metric in ignored:
                result = "worse (not gated)"
            changes.append(Change(system, sampler, metric, before, after, result, _relative(x, y), p))
    return changes, unchanged
