"""Speedups, bootstrap intervals and rankings on synthetic records with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from boltzbench.metrics.ranking import displayed_ranks, rank_samplers
from boltzbench.metrics.speedup import (
    Interval,
    bootstrap_ci,
    choose_target,
    cost_to_target,
    direction,
    parse_target,
    ratio_ci,
    speedup_table,
)


def record(sampler: str, seed: int, costs, values, *, metric="energy_w1", wall=None, ess=None,
           system="dw", baseline="md", status="ok", final=None):
    """A record in the runner's format, reduced to what speedups and rankings read."""
    wall = wall if wall is not None else [c / 1000.0 for c in costs]
    curve = [{"cost": float(c), "wall_s": float(w), "metrics": {metric: v}} for c, w, v in zip(costs, wall, values)]
    metrics = dict(final if final is not None else {metric: values[-1] if values else None})
    if ess is not None:
        metrics["ess"] = ess
    return {
        "schema": "boltzbench.record/1", "cell_id": f"{system}-{sampler}-{seed}", "status": status,
        "error": None if status == "ok" else "boom",
        "system": {"label": system, "name": system, "params": {}},
        "sampler": {"label": sampler, "name": sampler, "params": {}},
        "seed": seed, "metrics": list(metrics), "matrix": {"name": "t", "baseline": baseline},
        "cost": {"total_evals": float(costs[-1]) if costs else 0.0,
                 "total_wall_s": float(wall[-1]) if costs else 0.0},
        "curve": curve, "final": {"metrics": metrics, "diagnostics": {}},
    }


COSTS = [100, 200, 300, 400, 500]


def rows_by_sampler(table):
    return {row.sampler: row for row in table.rows}


# ------------------------------------------------------------------ cost to target


def test_cost_to_target_is_the_first_snapshot_reaching_it():
    curve = record("md", 0, COSTS, [5.0, 2.0, 3.0, 1.0, 0.5])["curve"]
    assert cost_to_target(curve, "energy_w1", 2.5) == (200.0, 0.2)
    assert cost_to_target(curve, "energy_w1", 1.0) == (400.0, 0.4)
    assert cost_to_target(curve, "energy_w1", 0.1) is None
    # ESS-like metrics are reached from below
    ess_curve = record("md", 0, COSTS, [1.0, 5.0, 20.0, 40.0, 80.0], metric="ess")["curve"]
    assert direction("ess") == 1 and direction("energy_w1") == -1 and direction("delta_f") == 0
    assert cost_to_target(ess_curve, "ess", 30.0) == (400.0, 0.4)


def test_speedup_arithmetic_on_synthetic_curves():
    records = [
        record("md", 0, COSTS, [5, 4, 3, 2, 1]),        # reaches 2.5 at 400
        record("md", 1, COSTS, [5, 2, 2, 2, 1]),        # at 200
        record("fast", 0, COSTS, [2, 1, 1, 1, 1]),      # at 100
        record("fast", 1, COSTS, [3, 2, 1, 1, 1]),      # at 200
    ]
    table = speedup_table(records, "energy_w1", target=2.5)
    rows = rows_by_sampler(table)
    assert table.target == 2.5 and table.baseline == "md"
    fast = rows["fast"]
    assert fast.speedup_evals.value == pytest.approx(300 / 150)   # mean(400, 200)/mean(100, 200)
    assert fast.speedup_evals.bound == ""
    assert fast.reached == 2
    assert fast.cost_evals.value == pytest.approx(150.0)
    assert fast.speedup_evals.low <= 2.0 <= fast.speedup_evals.high
    assert rows["md"].speedup_evals.value == 1.0


def test_speedup_in_wall_seconds_uses_the_wall_clock_of_the_same_snapshot():
    records = [record("md", 0, COSTS, [5, 4, 3, 2, 1], wall=[1, 2, 3, 4, 5]),
               record("gpu", 0, COSTS, [5, 4, 3, 2, 1], wall=[0.1, 0.2, 0.3, 0.4, 0.5])]
    rows = rows_by_sampler(speedup_table(records, "energy_w1", target=2.5))
    assert rows["gpu"].speedup_evals.value == pytest.approx(1.0)
    assert rows["gpu"].speedup_wall.value == pytest.approx(10.0)


def test_baseline_that_never_reaches_the_target_gives_a_lower_bound():
    records = [record("md", 0, [1000, 2000, 4000], [9, 8, 7]),
               record("md", 1, [1000, 2000, 4000], [9, 8, 7]),
               record("pt", 0, COSTS, [1, 1, 1, 1, 1]),
               record("pt", 1, COSTS, [1, 1, 1, 1, 1])]
    row = rows_by_sampler(speedup_table(records, "energy_w1", target=2.0))["pt"]
    assert row.speedup_evals.value == pytest.approx(40.0)
    assert row.speedup_evals.bound == "lower"
    assert row.speedup_evals.text(3, "×") == "≥ 40×"


def test_sampler_that_never_reaches_gives_an_upper_bound_and_both_undefined():
    records = [record("md", 0, COSTS, [5, 4, 3, 2, 1]),
               record("slow", 0, [1000, 2000], [9, 9]),
               ]
    row = rows_by_sampler(speedup_table(records, "energy_w1", target=2.5))["slow"]
    assert row.speedup_evals.bound == "upper"
    assert row.speedup_evals.value == pytest.approx(400 / 2000)
    assert row.speedup_evals.text().startswith("≤ ")
    assert row.reached == 0
    both = [record("md", 0, COSTS, [9] * 5), record("slow", 0, COSTS, [9] * 5)]
    assert rows_by_sampler(speedup_table(both, "energy_w1", target=2.5))["slow"].speedup_evals.text() == "undefined"


def test_setup_cost_counts_because_curve_costs_include_it():
    # a flow spends 10 000 evaluations on setup; its curve starts there
    records = [record("md", 0, [5000, 10000, 20000], [3, 2, 1]),
               record("flow", 0, [10100, 10200, 10300], [0.5, 0.5, 0.5])]
    row = rows_by_sampler(speedup_table(records, "energy_w1", target=2.0))["flow"]
    assert row.cost_evals.value == pytest.approx(10100.0)
    assert row.speedup_evals.value == pytest.approx(10000 / 10100)


def test_ess_per_cost_relative_to_baseline():
    records = [record("md", 0, [1000], [1.0], ess=10.0), record("md", 1, [1000], [1.0], ess=30.0),
               record("pt", 0, [2000], [1.0], ess=400.0), record("pt", 1, [2000], [1.0], ess=400.0)]
    row = rows_by_sampler(speedup_table(records, "energy_w1", target=2.0))["pt"]
    assert row.ess_per_eval.value == pytest.approx((400 / 2000) / (20 / 1000))


# -------------------------------------------------------------------------- targets


def test_default_target_is_the_median_of_the_samplers_final_means():
    by_sampler = {"a": [record("a", 0, COSTS, [1.0]), record("a", 1, COSTS, [3.0])],  # mean 2
                  "b": [record("b", 0, COSTS, [10.0])],
                  "md": [record("md", 0, [100, 200], [8.0, 5.0])]}
    value, text = choose_target(by_sampler, "energy_w1", "md")
    assert value == pytest.approx(5.0) and "median" in text
    assert choose_target(by_sampler, "energy_w1", "md", "baseline_final")[0] == pytest.approx(5.0)
    assert choose_target(by_sampler, "energy_w1", "md", "baseline_initial:0.5")[0] == pytest.approx(4.0)
    assert choose_target(by_sampler, "energy_w1", "md", 0.3)[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="median_final"):
        choose_target(by_sampler, "energy_w1", "md", "nonsense")


def test_parse_target():
    assert parse_target("0.25") == 0.25
    assert parse_target("median_final") == "median_final"
    assert parse_target("baseline_initial:0.1") == "baseline_initial:0.1"
    assert parse_target(None) is None
    for bad in ("fast", "baseline_initial:x", "baseline_initial:-1", "nan"):
        with pytest.raises(ValueError, match="--target"):
            parse_target(bad)


# ------------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    experiments = 400
    for i in range(experiments):
        values = rng.normal(3.0, 2.0, size=30)
        interval = bootstrap_ci(values, n_boot=400, seed=i)
        hits += interval.low <= 3.0 <= interval.high
    assert 0.88 <= hits / experiments <= 0.985


def test_bootstrap_interval_width_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.normal(size=25))
    large = bootstrap_ci(rng.normal(size=2500))
    ratio = (small.high - small.low) / (large.high - large.low)
    assert ratio == pytest.approx(10.0, rel=0.3)


def test_bootstrap_degenerate_cases():
    assert bootstrap_ci([]).bound == "undefined"
    # one seed: the value without an interval (was the zero-width interval [2.5, 2.5])
    one = bootstrap_ci([2.5])
    assert (one.value, one.low, one.high) == (2.5, None, None) and not one.has_interval
    assert one.text() == "2.5 (one seed: no interval)"
    assert bootstrap_ci([1.0, None, 3.0]).value == pytest.approx(2.0)
    same = ratio_ci([2.0, 2.0], [1.0, 1.0])
    assert (same.value, same.low, same.high) == (2.0, 2.0, 2.0) and same.has_interval
    # a ratio needs two values in each group: one baseline seed leaves its spread unseen
    lone = ratio_ci([2.0, 4.0], [1.0])
    assert (lone.value, lone.low, lone.high) == (3.0, None, None)
    assert ratio_ci([1.0], []).bound == "undefined"
    assert Interval(None, None, None, "undefined").text() == "undefined"


# -------------------------------------------------------------------------- ranking


def finals(sampler, values, system="dw", metric="energy_w1", **kw):
    return [record(sampler, seed, [100], [v], system=system, metric=metric, **kw) for seed, v in enumerate(values)]


def test_displayed_ranks_count_clearly_better_samplers():
    # ties chain: the third touches the second, which touches the first: one group (the old
    # rule gave 1, 1, 2, though the third was tied with a sampler ranked 1)
    assert list(displayed_ranks([1.0, 1.1, 1.9], [1.2, 2.0, 3.0])) == [1, 1, 1]
    assert list(displayed_ranks([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])) == [1, 2, 3]
    assert list(displayed_ranks([1.0, 1.0], [2.0, 2.0])) == [1, 1]


def test_ranking_keeps_overlapping_samplers_tied():
    records = (finals("a", [1.0, 1.01, 0.99, 1.0]) + finals("b", [5.0, 5.1, 4.9, 5.0])
               + finals("c", [5.05, 4.95, 5.0, 5.02]) + finals("d", [9.0, 9.1, 8.9, 9.0]))
    result = rank_samplers(records)
    system = {e.sampler: e for e in result.per_system["dw"]}
    assert system["a"].rank == 1 and system["a"].low == system["a"].high == 1.0
    assert system["b"].rank == system["c"].rank == 2 and system["d"].rank == 4
    ranks = {e.sampler: e for e in result.overall}
    assert ranks["a"].rank == 1
    assert ranks["b"].rank == ranks["c"].rank == 2
    assert "c" in ranks["b"].tied_with and "b" in ranks["c"].tied_with
    assert ranks["d"].rank == 4
    assert [e.sampler for e in result.overall][0] == "a"


def test_ranking_exact_ties_share_the_average_rank():
    records = finals("a", [1.0, 1.0]) + finals("b", [1.0, 1.0]) + finals("c", [0.5, 0.5])
    result = rank_samplers(records)
    ranks = {e.sampler: e for e in result.per_system["dw"]}
    assert ranks["c"].mean_rank == 1.0
    assert ranks["a"].mean_rank == ranks["b"].mean_rank == 2.5
    assert ranks["a"].rank == ranks["b"].rank == 2
    assert result.pair("a", "b").win_rate == 0.5 and result.pair("a", "b").winner is None
    assert [(e.sampler, e.rank) for e in result.overall] == [("c", 1), ("a", 2), ("b", 2)]


def test_ranking_direction_undefined_values_failures_and_systems():
    records = (finals("md", [10.0, 11.0], metric="ess") + finals("pt", [100.0, 110.0], metric="ess")
               + finals("md", [1.0, 1.1], system="lj") + finals("pt", [None, None], system="lj")
               + [record("flow", 0, [], [], status="failed", final={})])
    result = rank_samplers(records)
    dw = {e.sampler: e for e in result.per_system["dw"]}
    assert dw["pt"].mean_rank == 1.0 and dw["md"].mean_rank == 2.0          # larger ESS is better
    lj = {e.sampler: e for e in result.per_system["lj"]}
    assert lj["md"].mean_rank == 1.0 and lj["pt"].mean_rank == 2.0          # undefined counts as worst
    # md and pt each win one of their two shared systems: win rate ½, no evidence
    assert result.pair("md", "pt").win_rate == 0.5 and result.pair("md", "pt").winner is None
    overall = {e.sampler: e for e in result.overall}
    assert overall["md"].rank == overall["pt"].rank == 1
    assert overall["md"].n_systems == 2
    # a sampler whose only cell failed is ranked last on its system, but with one seed
    # there is no interval: the system's ranks are not separated
    flow_system = {e.sampler: e for e in result.per_system["dw"]}.get("flow")
    assert flow_system is not None and flow_system.mean_rank == 3.0
    assert flow_system.low is None and {e.rank for e in result.per_system["dw"]} == {1}
    assert result.few_seeds["dw"] == ["flow"]
    assert result.metrics["dw"] == ["ess"]


def test_estimates_without_direction_are_not_ranked():
    records = finals("a", [1.0], metric="delta_f") + finals("b", [2.0], metric="delta_f")
    result = rank_samplers(records)
    assert result.overall == [] and result.metrics["dw"] == []


def test_ranking_uses_error_metrics_when_there_are_any():
    # a ranks first on the error, b on ESS: the error decides
    records = [record("a", seed, [100], [1.0], final={"energy_w1": 1.0, "ess": 10.0}) for seed in (0, 1)]
    records += [record("b", seed, [100], [2.0], final={"energy_w1": 2.0, "ess": 1000.0}) for seed in (0, 1)]
    result = rank_samplers(records)
    assert result.metrics["dw"] == ["energy_w1"]
    assert [e.sampler for e in result.overall] == ["a", "b"]
    assert result.per_system["dw"][0].mean_rank == 1.0
    # asked for explicitly, ESS is ranked too
    both = rank_samplers(records, metrics=["energy_w1", "ess"])
    assert {e.sampler: e.mean_rank for e in both.per_system["dw"]} == {"a": 1.5, "b": 1.5}
    assert both.pair("a", "b").win_rate == 0.5
