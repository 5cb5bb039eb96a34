"""Ranking samplers per system and overall, with bootstrap intervals over seeds.

For one system and one metric, samplers are ranked by their mean final value over seeds
(1 = best; errors: smaller is better, ESS: larger is better; exactly equal means share the
average rank). The ranked metrics of a system are its error metrics (accuracy against the
reference: W1, W2, |⟨u⟩ − ⟨u⟩_ref|, |ΔF − ΔF_ref|, …); ESS says how many independent
samples a run holds, not whether they are right (stuck chains can have a large ESS), so
ESS metrics rank a system only when it has no error metric (no reference). A sampler's
**system rank** is its rank averaged over the system's ranked metrics; its **overall rank** is its system rank averaged over the systems it ran on.
A metric that is undefined (None) in a cell, or a failed cell, counts as the worst value
for that sampler; a metric undefined in every cell of a system (no reference, say) is
left out. Estimates without a direction (``delta_f``, ``delta_f_stderr``) are not ranked.

Intervals: every seed set is resampled with replacement (percentile bootstrap, 1000
resamples, fixed seed; each sampler × system independently), the whole ranking is
recomputed for each resample, and the 2.5 % and 97.5 % quantiles of a sampler's mean
rank form its 95 % interval.

**Ties stay ties.** The displayed rank of a sampler is 1 + the number of samplers that are
*clearly better*: whose interval lies entirely below (better than) its own. Samplers with
overlapping intervals therefore share a rank unless a third sampler separates them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from boltzbench.metrics.speedup import LEVEL, direction

RESAMPLES = 1000
SEED = 20240604
RULE = ("mean rank over the system's error metrics (ESS metrics only for systems without a reference; "
        "1 = best), then over systems; 95 % percentile bootstrap "
        "intervals over seeds; displayed rank = 1 + number of samplers whose interval lies "
        "entirely better, so samplers with overlapping intervals share a rank")


@dataclass(frozen=True)
class RankEntry:
    sampler: str
    mean_rank: float
    low: float
    high: float
    rank: int
    n_systems: int
    tied_with: tuple[str, ...] = ()


@dataclass
class Ranking:
    overall: list[RankEntry]
    per_system: dict[str, list[RankEntry]]
    metrics: dict[str, list[str]] = field(default_factory=dict)
    rule: str = RULE


def displayed_ranks(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """1 + the number of others whose interval lies entirely below (better than) each one."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    return 1 + (high[None, :] < low[:, None]).sum(axis=1)


def _entries(samplers: list[str], point: np.ndarray, reps: np.ndarray, n_systems: dict[str, int],
             level: float) -> list[RankEntry]:
    alpha = (1.0 - level) / 2.0
    low = np.nanquantile(reps, alpha, axis=0)
    high = np.nanquantile(reps, 1.0 - alpha, axis=0)
    rank = displayed_ranks(low, high)
    entries = []
    for i, name in enumerate(samplers):
        tied = tuple(samplers[j] for j in range(len(samplers))
                     if j != i and rank[j] == rank[i] and not (high[j] < low[i] or high[i] < low[j]))
        entries.append(RankEntry(name, float(point[i]), float(low[i]), float(high[i]), int(rank[i]),
                                 n_systems.get(name, 0), tied))
    return sorted(entries, key=lambda e: (e.rank, e.mean_rank, e.sampler))


def _seed_values(runs: list[dict[str, Any]], metric: str, sign: int) -> np.ndarray:
    """Per-seed final values turned into 'smaller is better' scores; worst (inf) if undefined."""
    out = []
    for record in runs:
        value = record.get("final", {}).get("metrics", {}).get(metric) if record.get("status") == "ok" else None
        out.append(np.inf if value is None else -sign * float(value))
    return np.asarray(out, float)


def rank_samplers(records: list[dict[str, Any]], metrics: list[str] | None = None,
                  n_boot: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> Ranking:
    """Per-system and overall ranking of the samplers in ``records`` (see module docstring)."""
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        groups[record["system"]["label"]][record["sampler"]["label"]].append(record)
    per_system: dict[str, list[RankEntry]] = {}
    used: dict[str, list[str]] = {}
    totals: dict[str, list[tuple[float, np.ndarray]]] = defaultdict(list)
    for system, by_sampler in groups.items():
        samplers = sorted(by_sampler)
        names = metrics or list(dict.fromkeys(
            m for runs in by_sampler.values() for r in runs for m in r.get("final", {}).get("metrics", {})))
        names = [m for m in names if direction(m) != 0 and any(
            r.get("status") == "ok" and r.get("final", {}).get("metrics", {}).get(m) is not None
            for runs in by_sampler.values() for r in runs)]
        if metrics is None and any(direction(m) < 0 for m in names):
            names = [m for m in names if direction(m) < 0]  # accuracy first; ESS only without a reference
        used[system] = names
        if not names:
            continue
        point = np.zeros(len(samplers))
        reps = np.zeros((n_boot, len(samplers)))
        for metric in names:
            sign = direction(metric)
            values = [_seed_values(by_sampler[s], metric, sign) for s in samplers]
            means = np.array([v.mean() for v in values])
            boot = np.stack([v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1) for v in values], axis=1)
            point += rankdata(means)
            reps += rankdata(boot, axis=1)
        point /= len(names)
        reps /= len(names)
        per_system[system] = _entries(samplers, point, reps, {s: 1 for s in samplers}, level)
        for i, sampler in enumerate(samplers):
            totals[sampler].append((point[i], reps[:, i]))
    samplers = sorted(totals)
    if not samplers:
        return Ranking([], per_system, used)
    point = np.array([np.mean([p for p, _ in totals[s]]) for s in samplers])
    reps = np.stack([np.mean([r for _, r in totals[s]], axis=0) for s in samplers], axis=1)
    overall = _entries(samplers, point, reps, {s: len(totals[s]) for s in samplers}, level)
    return Ranking(overall, per_system, used)
