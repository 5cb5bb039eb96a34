"""Ranking samplers per system, and overall from pairwise comparisons on shared systems.

**Per system.** For one system and one metric, samplers are ranked by their mean final
value over seeds (1 = best; errors: smaller is better, ESS: larger is better; exactly equal
means share the average rank). The ranked metrics of a system are its error metrics
(accuracy against the reference: W1, W2, |⟨u⟩ − ⟨u⟩_ref|, |ΔF − ΔF_ref|, …); ESS says how
many independent samples a run holds, not whether they are right (stuck chains can have a
large ESS), so ESS metrics rank a system only when it has no error metric (no reference).
A sampler's **system rank** is its rank averaged over the system's ranked metrics. A metric
that is undefined in a cell (None, NaN, ±inf or not a number), or a failed cell, counts as
the worst value for that sampler; a metric undefined in every cell of a system (no
reference, say) is left out. Estimates without a direction (``delta_f``,
``delta_f_stderr``) are not ranked.

**Intervals.** A rank or a win rate is a function of the samplers' means over seeds. Each
(sampler, system) group's vector of metric means is redrawn 1000 times (fixed seed, groups
independent) from the posterior of a normal mean under the noninformative prior
p(μ, σ²) ∝ 1/σ², μ | seeds ~ x̄ + (s/√n)·t_{n−1} (Gelman et al., *Bayesian Data Analysis*,
3rd ed., §3.2), with the seeds' correlation between metrics kept: the draw is
x̄ + Σ_i g_i (x_i − x̄) / √((n − 1) n) / √(χ²_{n−1}/(n − 1)), g_i ~ N(0, 1), so that each metric's
marginal is exactly that Student-t. Every statistic below is recomputed on each draw, and
the 2.5 % and 97.5 % quantiles form its 95 % interval. Why not the percentile bootstrap of
seeds (used for the tables' intervals): its variance of a mean is (n − 1)/n of the unbiased
one and it has normal, not Student, tails, so with few seeds it separates samplers that do
not differ. Measured for the pairwise rule below (one metric, two samplers whose seeds come
from one normal distribution, 2000 trials; tests/test_ranking_stats.py checks the 2- and
3-seed cases), the share of pairs declared different was 33 %, 20 %, 12 %, 8 % with the
percentile bootstrap at 2, 3, 5, 10 seeds, and 0.5 %, 0.9 %, 2.4 %, 3.9 % with these draws
(nominal 5 %, two-sided): conservative with few seeds, as the Behrens–Fisher solution is.
A metric undefined in some seed of a group is that group's worst value with no spread (an
undefined result is not noise around a number).

**One seed: no interval.** A group with fewer than two seeds has no spread to draw from.
A system on which any sampler has fewer than two seeds therefore has no rank intervals
(every rank depends on every sampler's mean), and its ranks are not separated: all its
samplers share rank 1.

**Ties and displayed ranks (per system).** Two intervals are *tied* when they overlap or
touch: low_a ≤ high_b and low_b ≤ high_a (a shared end point is a tie). Ties are closed
transitively: a tie group is a maximal set of samplers whose intervals' union is one
connected interval, so A tied with B and B with C puts all three in one group even when A
and C do not touch. Groups are disjoint along the rank axis and hence ordered; every member
gets its group's rank by standard competition ranking ("1, 1, 3"): 1 + the number of
samplers in better groups. "Tied with" lists the other members of the group.

**Overall: only samplers that met are compared.** For samplers A and B with shared systems
S_AB (both have cells there), the **win rate** of A over B is

    w_AB = mean over s in S_AB of [fraction of s's ranked metrics on which A's mean over
           seeds is better than B's, exact equality counting ½],   w_BA = 1 − w_AB.

Every shared system weighs the same whatever its number of metrics, and no third sampler
enters. Its 95 % interval uses the same draws as the system ranks. A **beats B with
evidence** when the interval lies entirely above ½ (low > ½); an interval that contains or
touches ½ is no evidence either way (a tie). A pair with a sampler that has fewer than two
seeds on a shared system has no interval and is never separated. Samplers without a shared
system **never met** and are not compared.

**Overall order: Copeland score** (Copeland 1951; Saari & Merlin, Econ. Theory 8, 51, 1996):
the number of samplers a sampler beats with evidence minus the number that beat it with
evidence. The overall rank is standard competition ranking by score (1 + the number of
samplers with a higher score: "1, 1, 3"); samplers with equal scores share a rank and are
listed as tied with each other. A sampler is never ranked on systems it did not run: a win
over one sampler on one system counts one, like any other win; whom each sampler never met
is listed beside it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from scipy.stats import rankdata

from boltzbench.metrics.speedup import LEVEL, MIN_SEEDS, direction

RESAMPLES = 1000
SEED = 20240604
RULE = ("per system: mean rank over the system's error metrics (ESS metrics only for systems without a "
        "reference; 1 = best), 95 % intervals from Student-t draws of each sampler's means over seeds; "
        "intervals that overlap or touch are tied, ties chain into groups, and a group's rank is 1 + the number of samplers in "
        "better groups (standard competition ranking, \"1, 1, 3\"); a system where a sampler has fewer than "
        "two seeds has no intervals and all its samplers share rank 1 (one seed: no interval). Overall: "
        "samplers are compared only on the systems both ran; A beats B with evidence when the 95 % "
        "interval of A's win rate over B (mean over shared systems of the fraction of metrics on which "
        "A is better) lies entirely above ½; score = samplers beaten − samplers beaten by (Copeland); "
        "overall rank = 1 + the number of samplers with a higher score; samplers that never met are "
        "not compared")


@dataclass(frozen=True)
class RankEntry:
    """A sampler on one system: mean rank over metrics, its interval (None: no interval),
    displayed rank, and the other members of its tie group."""

    sampler: str
    mean_rank: float
    low: float | None
    high: float | None
    rank: int
    n_systems: int
    tied_with: tuple[str, ...] = ()
    seeds: int = 0


@dataclass(frozen=True)
class Pair:
    """Samplers ``a`` and ``b`` compared on their shared systems.

    ``win_rate`` is a's over b (None when they never met); ``low``/``high`` its interval
    (None: no interval). ``winner`` is the sampler that wins with evidence, else None.
    """

    a: str
    b: str
    systems: tuple[str, ...]
    win_rate: float | None
    low: float | None
    high: float | None

    @property
    def met(self) -> bool:
        return bool(self.systems)

    @property
    def winner(self) -> str | None:
        if self.low is None or self.high is None:
            return None
        if self.low > 0.5:
            return self.a
        if self.high < 0.5:
            return self.b
        return None

    def flipped(self) -> "Pair":
        """The same comparison seen from b."""
        def mirror(x):
            return None if x is None else 1.0 - x
        return Pair(self.b, self.a, self.systems, mirror(self.win_rate), mirror(self.high), mirror(self.low))


@dataclass(frozen=True)
class OverallEntry:
    """A sampler's overall place: Copeland score and whom it beat, lost to, tied, never met."""

    sampler: str
    rank: int
    score: int
    wins: tuple[str, ...]
    losses: tuple[str, ...]
    ties: tuple[str, ...]
    never_met: tuple[str, ...]
    n_systems: int
    tied_with: tuple[str, ...] = ()


@dataclass
class Ranking:
    overall: list[OverallEntry]
    per_system: dict[str, list[RankEntry]]
    metrics: dict[str, list[str]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], Pair] = field(default_factory=dict)
    #: per system, the samplers with fewer than two seeds there (no interval)
    few_seeds: dict[str, list[str]] = field(default_factory=dict)
    rule: str = RULE

    def pair(self, a: str, b: str) -> Pair:
        """The comparison of ``a`` with ``b`` (win rate of a over b)."""
        return self.pairs[(a, b)] if (a, b) in self.pairs else self.pairs[(b, a)].flipped()


def tie_groups(low, high) -> list[list[int]]:
    """Indices grouped into maximal sets whose intervals' union is connected, best first.

    Intervals that overlap or touch (low_a ≤ high_b and low_b ≤ high_a) are tied, and ties
    chain. An interval that is None or NaN is unbounded: it ties with everything.
    """
    lo = np.array([-np.inf if v is None or np.isnan(v) else v for v in np.asarray(low, dtype=object)], float)
    hi = np.array([np.inf if v is None or np.isnan(v) else v for v in np.asarray(high, dtype=object)], float)
    groups: list[list[int]] = []
    reach = -np.inf
    for i in sorted(range(lo.size), key=lambda k: (lo[k], hi[k], k)):
        if not groups or lo[i] > reach:
            groups.append([])
            reach = hi[i]
        groups[-1].append(i)
        reach = max(reach, hi[i])
    return groups


def displayed_ranks(low, high) -> np.ndarray:
    """Standard competition ranks ("1, 1, 3") of the tie groups of :func:`tie_groups`."""
    groups = tie_groups(low, high)
    rank = np.zeros(len(np.asarray(low, dtype=object)), int)
    better = 0
    for group in groups:
        rank[group] = 1 + better
        better += len(group)
    return rank


def competition_ranks(scores) -> np.ndarray:
    """1 + the number of entries with a strictly higher score ("1, 1, 3")."""
    s = np.asarray(scores, float)
    return 1 + (s[None, :] > s[:, None]).sum(axis=1)


def _value(record: dict[str, Any], metric: str) -> float | None:
    """A finite final metric of an ok record, else None (undefined)."""
    if record.get("status") != "ok":
        return None
    value = ((record.get("final") or {}).get("metrics") or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _scores(runs: list[dict[str, Any]], names: list[str]) -> np.ndarray:
    """(runs, metrics) 'smaller is better' scores; undefined → +inf (the worst)."""
    out = np.empty((len(runs), len(names)))
    for i, record in enumerate(runs):
        for k, metric in enumerate(names):
            value = _value(record, metric)
            out[i, k] = np.inf if value is None else -direction(metric) * value
    return out


def mean_draws(x: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Draws of the column means of ``x`` (seeds × metrics) from their Student-t posterior.

    μ = x̄ + Σ_i g_i (x_i − x̄) / √((n − 1) n) / √(χ²_{n−1}/(n − 1)) with g_i ~ N(0, 1): each
    column's marginal is x̄ + (s/√n)·t_{n−1} (Gelman et al., BDA3 §3.2), the columns keep the
    seeds' correlation. A column with a non-finite value keeps its mean (+inf: the worst)
    without spread; with one seed every draw is the value itself.
    """
    x = np.asarray(x, float)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        return np.broadcast_to(mean, (n_draws, x.shape[1])).copy()
    finite = np.isfinite(x).all(axis=0)
    dev = np.where(finite, x - np.where(finite, mean, 0.0), 0.0)
    g = rng.standard_normal((n_draws, n))
    scale = np.sqrt(rng.chisquare(n - 1, n_draws) / (n - 1))
    return mean + (g @ dev) / np.sqrt((n - 1) * n) / scale[:, None]


def _ranked_metrics(by_sampler: dict[str, list[dict[str, Any]]], metrics: list[str] | None) -> list[str]:
    names = metrics or list(dict.fromkeys(
        m for runs in by_sampler.values() for r in runs for m in ((r.get("final") or {}).get("metrics") or {})))
    names = [m for m in names if direction(m) != 0
             and any(_value(r, m) is not None for runs in by_sampler.values() for r in runs)]
    if metrics is None and any(direction(m) < 0 for m in names):
        names = [m for m in names if direction(m) < 0]  # accuracy first; ESS only without a reference
    return names


def _seeds(runs: list[dict[str, Any]]) -> int:
    return len({r.get("seed") for r in runs})


def _interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(low), float(high)


def rank_samplers(records: list[dict[str, Any]], metrics: list[str] | None = None,
                  n_boot: int = RESAMPLES, level: float = LEVEL, seed: int = SEED) -> Ranking:
    """Per-system ranks, pairwise comparisons and the overall order (module docstring)."""
    rng = np.random.default_rng(seed)
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        groups[record["system"]["label"]][record["sampler"]["label"]].append(record)
    per_system: dict[str, list[RankEntry]] = {}
    used: dict[str, list[str]] = {}
    few: dict[str, list[str]] = {}
    # per (system, pair): point fraction of metrics won by the first, its resamples, testable?
    duels: dict[tuple[str, str], list[tuple[str, float, np.ndarray, bool]]] = defaultdict(list)
    for system in sorted(groups):
        by_sampler = groups[system]
        samplers = sorted(by_sampler)
        names = _ranked_metrics(by_sampler, metrics)
        used[system] = names
        if not names:
            continue
        seeds = {s: _seeds(by_sampler[s]) for s in samplers}
        few[system] = [s for s in samplers if seeds[s] < MIN_SEEDS]
        means = np.empty((len(names), len(samplers)))
        boot = np.empty((n_boot, len(names), len(samplers)))
        for k, sampler in enumerate(samplers):
            scores = _scores(by_sampler[sampler], names)
            means[:, k] = scores.mean(axis=0)
            boot[:, :, k] = mean_draws(scores, n_boot, rng)
        point = rankdata(means, axis=1).mean(axis=0)
        reps = rankdata(boot, axis=2).mean(axis=1)
        if few[system]:
            low = high = [None] * len(samplers)
        else:
            low, high = zip(*(_interval(reps[:, k], level) for k in range(len(samplers))))
        entries = []
        rank = displayed_ranks(low, high)
        for k, sampler in enumerate(samplers):
            tied = tuple(samplers[j] for j in range(len(samplers)) if j != k and rank[j] == rank[k])
            entries.append(RankEntry(sampler, float(point[k]), low[k], high[k], int(rank[k]), 1, tied,
                                     seeds[sampler]))
        per_system[system] = sorted(entries, key=lambda e: (e.rank, e.mean_rank, e.sampler))
        for i, j in combinations(range(len(samplers)), 2):
            won = lambda x: ((x[..., i] < x[..., j]) + 0.5 * (x[..., i] == x[..., j])).mean(axis=-1)  # noqa: E731
            testable = seeds[samplers[i]] >= MIN_SEEDS and seeds[samplers[j]] >= MIN_SEEDS
            duels[(samplers[i], samplers[j])].append((system, float(won(means)), won(boot), testable))
    samplers = sorted({e.sampler for entries in per_system.values() for e in entries})
    pairs: dict[tuple[str, str], Pair] = {}
    for a, b in combinations(samplers, 2):
        shared = duels.get((a, b), [])
        if not shared:
            pairs[(a, b)] = Pair(a, b, (), None, None, None)
            continue
        rate = float(np.mean([p for _, p, _, _ in shared]))
        low = high = None
        if all(t for _, _, _, t in shared):
            low, high = _interval(np.mean([r for _, _, r, _ in shared], axis=0), level)
        pairs[(a, b)] = Pair(a, b, tuple(s for s, _, _, _ in shared), rate, low, high)
    return Ranking(_overall(samplers, pairs, per_system), per_system, used, pairs, few)


def _overall(samplers: list[str], pairs: dict[tuple[str, str], Pair],
             per_system: dict[str, list[RankEntry]]) -> list[OverallEntry]:
    """Copeland scores from the pairs, standard competition ranks, ties = equal scores."""
    if not samplers:
        return []
    result: dict[str, dict[str, list[str]]] = {s: defaultdict(list) for s in samplers}
    for (a, b), pair in pairs.items():
        if not pair.met:
            result[a]["never"].append(b)
            result[b]["never"].append(a)
        elif pair.winner is None:
            result[a]["ties"].append(b)
            result[b]["ties"].append(a)
        else:
            loser = b if pair.winner == a else a
            result[pair.winner]["wins"].append(loser)
            result[loser]["losses"].append(pair.winner)
    score = np.array([len(result[s]["wins"]) - len(result[s]["losses"]) for s in samplers])
    rank = competition_ranks(score)
    n_systems = {s: sum(any(e.sampler == s for e in entries) for entries in per_system.values()) for s in samplers}
    entries = [OverallEntry(s, int(rank[i]), int(score[i]), tuple(sorted(result[s]["wins"])),
                            tuple(sorted(result[s]["losses"])), tuple(sorted(result[s]["ties"])),
                            tuple(sorted(result[s]["never"])), n_systems[s],
                            tuple(samplers[j] for j in range(len(samplers)) if j != i and rank[j] == rank[i]))
               for i, s in enumerate(samplers)]
    return sorted(entries, key=lambda e: (e.rank, e.sampler))
