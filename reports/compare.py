"""What changed against a baseline results folder (``boltzbench report DIR --baseline OLD``).

For every (system, sampler, metric) present in both, the final metric's mean over seeds
and its 95 % percentile bootstrap interval are compared (the same intervals as the
report's tables):

* **moved**: the new mean lies outside the old interval, or the old mean outside the new
  interval;
* **regression**: the metric got *worse* beyond both intervals — the new mean is outside
  the old interval on the worse side *and* the old mean is outside the new interval on the
  better side (errors: larger is worse; ESS: smaller is worse); an **improvement** is the
  mirror image; a move that is neither is "moved";
* with one seed an interval is a single point, so any change larger than a relative
  tolerance of 1e-6 counts as beyond it (same seed, same machine: same numbers);
* a metric defined before and undefined in every cell now (for example a state no longer
  visited) is a regression, the reverse an improvement: undefined counts as worst;
* a (system, sampler) pair with ok cells in the baseline and none now is a regression
  ("no ok cell now"); pairs only on one side are "new" or "removed".

Metrics without a direction (estimates such as ``delta_f``) can move but never regress.
Wall-clock seconds are not compared (they depend on the machine).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from boltzbench.metrics.speedup import Interval, bootstrap_ci, direction

RTOL = 1e-6


@dataclass(frozen=True)
class Change:
    system: str
    sampler: str
    metric: str
    before: Interval | None
    after: Interval | None
    verdict: str  # regression | improvement | moved | new | removed

    @property
    def is_regression(self) -> bool:
        return self.verdict == "regression"


def final_interval(runs: list[dict[str, Any]], metric: str) -> Interval:
    """Mean over the ok seeds of a final metric with its percentile bootstrap interval."""
    values = [r["final"]["metrics"].get(metric) for r in runs if r.get("status") == "ok"]
    return bootstrap_ci([v for v in values if v is not None])


def _group(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["system"]["label"], record["sampler"]["label"])].append(record)
    return groups


def _outside(value: float, interval: Interval) -> int:
    """+1 above the interval, −1 below, 0 inside (with the relative tolerance)."""
    tol = RTOL * max(abs(value), abs(interval.low), abs(interval.high), 1e-12)
    if value > interval.high + tol:
        return 1
    if value < interval.low - tol:
        return -1
    return 0


def verdict(metric: str, before: Interval, after: Interval) -> str | None:
    """'regression', 'improvement', 'moved', or None when neither mean left the other's interval."""
    new_vs_old = _outside(after.value, before)
    old_vs_new = _outside(before.value, after)
    if new_vs_old == 0 and old_vs_new == 0:
        return None
    sign = direction(metric)
    if sign != 0 and new_vs_old != 0 and old_vs_new == -new_vs_old:
        worse = new_vs_old == (-1 if sign > 0 else 1)
        return "regression" if worse else "improvement"
    return "moved"


def compare(current: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> tuple[list[Change], int]:
    """Every flagged change, and the number of compared metrics that stayed within intervals."""
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
        ok_now = [r for r in now[key] if r.get("status") == "ok"]
        ok_old = [r for r in old[key] if r.get("status") == "ok"]
        if ok_old and not ok_now:
            changes.append(Change(system, sampler, "(no ok cell now)", None, None, "regression"))
            continue
        metrics = dict.fromkeys(m for r in ok_old + ok_now for m in r["final"]["metrics"])
        for metric in metrics:
            before, after = final_interval(ok_old, metric), final_interval(ok_now, metric)
            if before.value is None or after.value is None:
                if (before.value is None) != (after.value is None):
                    # undefined counts as the worst value (as in the ranking)
                    lost = after.value is None
                    result = "moved" if direction(metric) == 0 else ("regression" if lost else "improvement")
                    changes.append(Change(system, sampler, metric, before, after, result))
                continue
            result = verdict(metric, before, after)
            if result is None:
                unchanged += 1
            else:
                changes.append(Change(system, sampler, metric, before, after, result))
    return changes, unchanged
