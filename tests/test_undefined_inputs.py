"""Issue 13, items 1-2: a bad or degenerate input never yields a good score.

The rule (``boltzbench.contracts.support``): a log-weight of −inf is a legal zero weight,
and a sample of zero weight carries no mass, whatever its values; NaN or +inf
log-weights, NaN, ±inf or negative weights, all-zero weights, empty inputs, and NaN or
±inf values carrying weight (either side) make every metric undefined: None from
registered metrics and MetricResult.value, NaN from the low-level float functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import numpy as np
import pytest
import torch
from scipy.stats import norm

from boltzbench.contracts import Budget, Reference, Sampler, Samples, Snapshot, param
from boltzbench.metrics.ess import autocorr_ess, geyer_autocorr_time, kish_ess, kish_ess_fraction
from boltzbench.metrics.wasserstein import emd_w2, sliced_w2, torus_w2, w1_samples, w1_to_cdf, w2_samples
from boltzbench.registry import BUILTIN, get_metric
from boltzbench.runner import make_cell, run_cell

METRICS = sorted(BUILTIN["metrics"])


# --------------------------------------------------------- item 1: far, light outliers


def exact_w2(x, a, y, b) -> float:
    """W2 of two weighted 1D samples in rational arithmetic: the monotone coupling, walked
    point by point (no rounding anywhere but the final square root)."""
    def sorted_side(v, w):
        w = [Fraction(float(t)) for t in w]
        total = sum(w)
        order = np.argsort(v, kind="stable")
        return [Fraction(float(v[i])) for i in order], [w[i] / total for i in order]

    xs, ws = sorted_side(x, a)
    ys, vs = sorted_side(y, b)
    i = j = 0
    left_x, left_y, total = ws[0], vs[0], Fraction(0)
    while True:
        mass = min(left_x, left_y)
        total += mass * (xs[i] - ys[j]) ** 2
        left_x, left_y = left_x - mass, left_y - mass
        if left_x == 0:
            i += 1
            if i == len(xs):
                return math.sqrt(total)
            left_x = ws[i]
        if left_y == 0:
            j += 1
            if j == len(ys):
                return math.sqrt(total)
            left_y = vs[j]


def normal_energies(seed=0):
    """The issue's draw: 1e5 N(0, 1) sample energies, 5000 N(0, 1) reference energies."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=100_000), rng.normal(size=5000)


def test_w2_of_normal_energies_ignores_a_weightless_sample_at_1e18():
    """Issue 13 item 1: POT's wasserstein_1d charged the rounding of the total weight at the
    zero-weight sample at 1e18 (W2 ≈ 1.36e12); without that sample W2 ≈ 0.025 here."""
    x, y = normal_energies()
    clean = w2_samples(x, y)
    assert clean == pytest.approx(0.02507096341, rel=1e-9)  # the rational-arithmetic value of this draw
    weights = np.append(np.ones(x.size), 0.0)
    assert w2_samples(np.append(x, 1e18), y, weights) == pytest.approx(clean, rel=1e-12)
    # the same through the registered metric, the sample's log-weight −inf
    samples = one_population(np.append(x, 1e18), log_weights=np.append(np.zeros(x.size), -np.inf))
    reference = reference_of(y)
    assert get_metric("energy_w2")(samples, reference) == pytest.approx(clean, rel=1e-12)
    assert get_metric("energy_w1")(samples, reference) == pytest.approx(w1_samples(x, y), rel=1e-12)


def test_w2_is_exact_with_a_far_outlier_of_tiny_positive_weight():
    """A light far sample (weight 1e-87 at 1e18, what a float64 flow weight can be) adds its
    true W2² share, about 1e-51: the quantile integral must not charge rounding at it."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=300), rng.normal(0.2, 1.1, size=170)
    a, b = rng.random(300), rng.random(170)
    assert w2_samples(x, y, a, b) == pytest.approx(exact_w2(x, a, y, b), rel=1e-12)
    far, light = np.append(x, 1e18), np.append(a, 1e-87 * a.sum())
    assert w2_samples(far, y, light, b) == pytest.approx(exact_w2(far, light, y, b), rel=1e-12)
    assert w2_samples(far, y, light, b) == pytest.approx(w2_samples(x, y, a, b), rel=1e-12)


def test_w1_to_cdf_ignores_a_weightless_far_sample_and_a_light_one():
    """W1 against the exact N(0, 1) CDF: the old code charged rounding and a straight line
    from the grid's end up to the far sample (W1 ≈ 1.9e6 instead of 0.0029)."""
    x, _ = normal_energies()
    grid = np.linspace(-8.0, 8.0, 2001)
    cdf = norm.cdf(grid)
    clean = w1_to_cdf(x, None, grid, cdf)
    assert clean == pytest.approx(0.00287, abs=5e-5)  # ≈ 0.9/√n for n = 1e5 draws
    far = np.append(x, 1e18)
    assert w1_to_cdf(far, np.append(np.ones(x.size), 0.0), grid, cdf) == pytest.approx(clean, rel=1e-12)
    assert w1_to_cdf(far, np.append(np.ones(x.size), 1e-87), grid, cdf) == pytest.approx(clean, rel=1e-9)
    samples = one_population(np.append(x[:1000], 0.0), observables={"x1": np.append(x[:1000], 1e18)},
                             log_weights=np.append(np.zeros(1000), -np.inf))
    reference = reference_of(x[:10], cdfs={"x1": (grid, cdf)})
    assert get_metric("x1_w1")(samples, reference) == pytest.approx(w1_to_cdf(x[:1000], None, grid, cdf), rel=1e-12)


# ------------------------------------------------ item 2: the estimators, one by one


def spoiled_weights(n):
    """(label, weights) that leave every estimator undefined."""
    base = np.ones(n)
    cases = []
    for label, value in (("NaN weight", np.nan), ("+inf weight", np.inf), ("-inf weight", -np.inf),
                         ("negative weight", -1.0)):
        w = base.copy()
        w[3] = value
        cases.append((label, w))
    cases.append(("all-zero weights", np.zeros(n)))
    return cases


def spoiled_values(x):
    """(label, values) with a NaN or ±inf value carrying weight."""
    cases = []
    for value in (np.nan, np.inf, -np.inf):
        bad = np.array(x, float, copy=True)
        bad[3] = value
        cases.append((f"{value} value", bad))
    return cases


def undefined_inputs(x, y):
    """Every (label, x, x_weights, y, y_weights) that must give an undefined distance."""
    cases = [(label, x, w, y, None) for label, w in spoiled_weights(len(x))]
    cases += [(label, bad, None, y, None) for label, bad in spoiled_values(x)]
    cases += [("reference " + label, x, None, bad, None) for label, bad in spoiled_values(y)]
    cases += [("reference " + label, x, None, y, w) for label, w in spoiled_weights(len(y))]
    cases += [("empty samples", x[:0], None, y, None), ("empty reference", x, None, y[:0], None)]
    return cases


@pytest.mark.parametrize("distance", [w1_samples, w2_samples], ids=lambda f: f.__name__)
def test_1d_distances_are_nan_for_undefined_inputs(distance):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=200), rng.normal(size=150)
    for label, xs, xw, ys, yw in undefined_inputs(x, y):
        assert math.isnan(distance(xs, ys, xw, yw)), label


def test_w1_to_cdf_is_nan_for_undefined_inputs():
    x = np.random.default_rng(2).normal(size=200)
    grid = np.linspace(-6.0, 6.0, 401)
    cdf = norm.cdf(grid)
    for label, w in spoiled_weights(x.size):
        assert math.isnan(w1_to_cdf(x, w, grid, cdf)), label
    for label, bad in spoiled_values(x):
        assert math.isnan(w1_to_cdf(bad, None, grid, cdf)), label
    for label, bad in spoiled_values(cdf):
        assert math.isnan(w1_to_cdf(x, None, grid, bad)), "cdf " + label
    assert math.isnan(w1_to_cdf(x[:0], None, grid, cdf)), "empty"


@pytest.mark.parametrize("distance", [emd_w2, torus_w2, sliced_w2], ids=lambda f: f.__name__)
def test_point_cloud_distances_are_undefined_for_undefined_inputs(distance):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 2)), rng.normal(size=(150, 2)) + 1.0
    assert distance(x, y).value > 0.5
    for label, xs, xw, ys, yw in undefined_inputs(x, y):
        assert distance(xs, ys, xw, yw).value is None, label


def test_emd_w2_with_one_nan_weight_is_undefined_not_a_one_point_distance():
    """Issue 13 item 2: one NaN weight among 5000 gave W2 from one point (2.585 vs 1.238)."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5000, 2)), rng.normal(size=(5000, 2)) + 1.0
    weights = np.ones(5000)
    weights[1234] = np.nan
    assert emd_w2(x, y).value == pytest.approx(math.sqrt(2.0), abs=0.15)  # a unit shift in both axes
    assert emd_w2(x, y, weights).value is None


@pytest.mark.parametrize("distance", [w1_samples, w2_samples], ids=lambda f: f.__name__)
def test_a_zero_weight_sample_is_dropped_whatever_its_value(distance):
    rng = np.random.default_rng(6)
    x, y, w = rng.normal(size=200), rng.normal(size=150), rng.random(200)
    clean = distance(x, y, w)
    for value in (np.nan, np.inf, -np.inf, 1e300):
        assert distance(np.append(x, value), y, np.append(w, 0.0)) == pytest.approx(clean, rel=1e-12), value


def test_kish_ess_minus_inf_is_a_zero_weight_and_the_rest_undefined():
    assert kish_ess([0.0, math.log(2.0), -np.inf]) == pytest.approx(9 / 5, rel=1e-12)
    assert kish_ess_fraction([0.0, math.log(2.0), -np.inf]) == pytest.approx(9 / 15, rel=1e-12)
    for bad in ([0.0, np.nan], [0.0, np.inf], [-np.inf, -np.inf], []):
        assert math.isnan(kish_ess(bad)), bad
        assert math.isnan(kish_ess_fraction(bad)), bad


@pytest.mark.parametrize("method", ["window", "geyer", "geyer_monotone"])
def test_autocorr_ess_of_a_non_finite_trace_is_nan(method):
    """The old code returned the full C·T for a trace with a NaN (a perfect score)."""
    trace = np.random.default_rng(7).normal(size=(500, 4))
    assert 1000 < autocorr_ess(trace, method=method) <= 2000
    for value in (np.nan, np.inf, -np.inf):
        bad = trace.copy()
        bad[10, 2] = value
        assert math.isnan(autocorr_ess(bad, method=method)), value
    assert math.isnan(autocorr_ess(np.zeros((0, 3)), method=method))
    bad = trace.copy()
    bad[3, 1] = np.nan
    assert math.isnan(geyer_autocorr_time(bad))


# ------------------------------------------------- item 2: every registered metric

N, M = 300, 400
GRID = np.linspace(-6.0, 6.0, 601)


def one_population(energies, log_weights=None, observables=None, positions=None, states=None):
    """Samples of one weighted population: (1, n) leading shape, as flows yield them."""
    energies = np.asarray(energies, float).reshape(1, -1)
    n = energies.shape[1]
    return Samples(
        positions=np.zeros((1, n, 2)) if positions is None else np.asarray(positions, float).reshape(1, n, -1),
        energies=energies,
        log_weights=None if log_weights is None else np.asarray(log_weights, float).reshape(1, n),
        observables={k: np.asarray(v, float).reshape(1, n, *np.shape(v)[1:]) for k, v in (observables or {}).items()},
        states=np.full((1, n), -1) if states is None else np.asarray(states).reshape(1, n),
    )


def reference_of(energies, observables=None, exact=None, cdfs=None) -> Reference:
    return Reference(energies=np.asarray(energies, float), observables=observables or {},
                     exact=exact or {}, cdfs=cdfs or {}, provenance={"method": "hand-built for tests"})


def full_inputs(seed=8, weighted=True, extra=None):
    """Samples and a reference on which every built-in metric has a value; ``extra``, a dict
    of values for one more sample, appends it (with log-weight −inf)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 2))
    data = {"energies": 0.5 * (x**2).sum(1), "x1": x[:, 0], "phi": rng.uniform(-np.pi, np.pi, N),
            "psi": rng.uniform(-np.pi, np.pi, N), "pairs": rng.uniform(0.8, 2.0, (N, 3)),
            "positions": x, "states": (x[:, 0] > 0).astype(int), "log_w": rng.normal(0, 0.3, N)}
    if extra is not None:
        data = {k: np.concatenate([v, np.asarray([extra[k]], dtype=v.dtype)]) for k, v in data.items()}
    samples = one_population(
        data["energies"], log_weights=data["log_w"] if weighted else None, positions=data["positions"],
        states=data["states"], observables={"x1": data["x1"], "phi": data["phi"], "psi": data["psi"],
                                            "pair_distance/AA": data["pairs"]})
    y = rng.normal(size=(M, 2))
    reference = reference_of(
        0.5 * (y**2).sum(1), exact={"delta_f": 0.0},
        observables={"x1": y[:, 0], "phi": rng.uniform(-np.pi, np.pi, M), "psi": rng.uniform(-np.pi, np.pi, M),
                     "pair_distance/AA": rng.uniform(0.8, 2.0, (M, 3)).ravel(), "positions": y},
        cdfs={"x1": (GRID, norm.cdf(GRID))})
    return samples, reference


def values(samples, reference):
    return {name: get_metric(name)(samples, reference) for name in METRICS}


ALL = tuple(name for name in METRICS if not name.startswith("pair_distance_w1_")) + ("pair_distance_w1_AA",)
ENERGY = ("energy_w1", "energy_w2", "mean_energy_error", "heat_capacity_error")
CHAIN_ESS = ("ess", "ess_geyer", "ess_fraction")


def _set_log_weight(value):
    def spoil(samples, reference):
        samples.log_weights[0, 7] = value
    return spoil


def _set(field, value, key=None):
    def spoil(samples, reference):
        target = getattr(samples, field) if key is None else samples.observables[key]
        target[0, 7] = value
    return spoil


def _set_reference(key, value):
    def spoil(samples, reference):
        if key == "energies":
            reference.energies[5] = value
        elif key == "cdf":
            reference.cdfs["x1"][1][5] = value
        else:
            reference.observables[key][5] = value
    return spoil


def _all_minus_inf(samples, reference):
    samples.log_weights[:] = -np.inf


SPOILS = {  # label: (weighted samples?, spoil, metrics that must be None)
    "NaN log-weight": (True, _set_log_weight(np.nan), ALL),
    "+inf log-weight": (True, _set_log_weight(np.inf), ALL),
    "all log-weights -inf": (True, _all_minus_inf, ALL),
    "NaN energy, weighted": (True, _set("energies", np.nan), ENERGY),
    "+inf energy, chains": (False, _set("energies", np.inf), ENERGY + CHAIN_ESS),
    "-inf energy, chains": (False, _set("energies", -np.inf), ENERGY + CHAIN_ESS),
    "NaN x1": (True, _set(None, np.nan, "x1"), ("x1_w1",)),
    "inf phi": (True, _set(None, np.inf, "phi"), ("dihedral_w2",)),
    "NaN position": (True, _set("positions", np.nan), ("config_emd_w2", "config_sliced_w2")),
    "inf pair distance": (False, _set(None, np.inf, "pair_distance/AA"), ("pair_distance_w1", "pair_distance_w1_AA")),
    "reference NaN energy": (True, _set_reference("energies", np.nan), ENERGY),
    "reference inf position": (True, _set_reference("positions", np.inf), ("config_emd_w2", "config_sliced_w2")),
    "reference NaN psi": (False, _set_reference("psi", np.nan), ("dihedral_w2",)),
    "reference NaN x1 cdf": (True, _set_reference("cdf", np.nan), ("x1_w1",)),
    "reference NaN pair distance": (True, _set_reference("pair_distance/AA", np.nan),
                                    ("pair_distance_w1", "pair_distance_w1_AA")),
}


@pytest.mark.parametrize("label", list(SPOILS))
def test_registered_metrics_are_none_for_undefined_inputs(label):
    weighted, spoil, expected = SPOILS[label]
    samples, reference = full_inputs(weighted=weighted)
    clean = values(samples, reference)  # each has a value here: None below means undefined
    assert all(clean[name] is not None and math.isfinite(clean[name]) for name in expected), clean
    spoil(samples, reference)
    got = values(samples, reference)
    assert {name: got[name] for name in expected} == dict.fromkeys(expected)


def test_registered_metrics_are_none_for_empty_samples():
    samples, reference = full_inputs(weighted=False)
    empty = Samples(positions=samples.positions[:, :0], energies=samples.energies[:, :0], log_weights=None,
                    observables={k: v[:, :0] for k, v in samples.observables.items()}, states=samples.states[:, :0])
    got = values(empty, reference)
    assert {name: got[name] for name in ALL} == dict.fromkeys(ALL)


@pytest.mark.parametrize("extra_energy", [1e18, np.inf, np.nan])
def test_a_minus_inf_log_weight_equals_dropping_the_sample(extra_energy):
    """Every registered metric with one more sample of log-weight −inf (far or non-finite
    values) equals the metric without it; the ESS fraction counts it as a draw."""
    extra = {"energies": extra_energy, "x1": 1e18, "phi": np.nan, "psi": np.inf, "pairs": [np.inf, 1e18, np.nan],
             "positions": [np.nan, 1e18], "states": 1, "log_w": -np.inf}
    with_it, reference = full_inputs(extra=extra)
    without, _ = full_inputs()
    got, expected = values(with_it, reference), values(without, reference)
    assert got.pop("ess_fraction") == pytest.approx(expected.pop("ess_fraction") * N / (N + 1), rel=1e-12)
    for name, value in expected.items():
        assert got[name] == (None if value is None else pytest.approx(value, rel=1e-12)), name


# ---------------------------------------------------------------------- the runner


@dataclass
class FixedLogWeights(Sampler):
    """One snapshot of 64 starting configurations with zero log-weights, except sample 5,
    which sits far out (x1 = 1e6, u ≈ 2.5e23) and gets log-weight ``bad`` ("nan", "inf",
    "-inf"), or is left out ("drop"); "all-inf" gives every sample log-weight −inf."""

    name: ClassVar[str] = "fixed_log_weights"
    description: ClassVar[str] = "test sampler: one weighted snapshot with a chosen log-weight"
    bad: str = param("nan", "log-weight of sample 5: nan, inf, -inf, drop or all-inf")

    def run(self, system, budget, generator):
        x = system.sample_initial(64, generator)
        x[5, 0] = 1e6
        u = system.energy(x)
        log_w = torch.zeros(64, dtype=torch.float64)
        keep = torch.ones(64, dtype=torch.bool)
        if self.bad == "drop":
            keep[5] = False
        elif self.bad == "all-inf":
            log_w[:] = -math.inf
        else:
            log_w[5] = float(self.bad)
        yield Snapshot(positions=x[keep][None], energies=u[keep][None], log_weights=log_w[keep][None],
                       cost=system.ledger.as_dict())


SAMPLER = f"{__name__}:FixedLogWeights"
CELL_METRICS = ("energy_w1", "energy_w2", "x1_w1", "mean_energy_error", "heat_capacity_error",
                "delta_f", "delta_f_stderr", "ess")


def run_fixed(bad):
    cell = make_cell("double_well", SAMPLER, sampler_params={"bad": bad}, metrics=CELL_METRICS,
                     budget=Budget(max_evals=64))
    return run_cell(cell).record


@pytest.mark.parametrize("bad", ["nan", "inf", "all-inf"])
def test_nan_or_plus_inf_log_weights_fail_the_cell_with_a_diagnostic(bad):
    """Like NaN energies: status failed, the error names the log-weights and the cost (64
    evaluations), instead of an ``ok`` cell with every metric null."""
    record = run_fixed(bad)
    assert record["status"] == "failed"
    assert "NonFiniteEnergy" in record["error"] and "log-weights" in record["error"]
    assert "by cost 64 evaluations" in record["error"]
    assert ("-inf" in record["error"]) == (bad == "all-inf")


def test_a_minus_inf_log_weight_is_legal_in_a_cell_and_equals_dropping_the_sample():
    """The far sample of zero weight changes nothing (the old energy_w2 charged the total
    weight's rounding, about 1e-15, at its u ≈ 2.5e23)."""
    legal, dropped = run_fixed("-inf"), run_fixed("drop")
    assert legal["status"] == dropped["status"] == "ok"
    got, expected = legal["final"]["metrics"], dropped["final"]["metrics"]
    assert expected["delta_f"] is not None and expected["energy_w2"] is not None
    for name, value in expected.items():
        assert got[name] == (None if value is None else pytest.approx(value, rel=1e-12)), name


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_autocorrelation_ess_does_not_depend_on_the_trace_scale(scale):
    """ρ(t) is scale-free: a white-noise trace around 1e200 (squares overflow) or of size
    1e-200 (squares underflow) has the ESS of the same trace at scale 1, not C·T or C/2."""
    from boltzbench.metrics.ess import autocorr_ess

    trace = np.random.default_rng(3).normal(size=(1000, 2))
    for method in ("window", "geyer"):
        plain = autocorr_ess(trace, method)
        assert 0.5 * trace.size < plain <= trace.size
        assert autocorr_ess(scale * trace + (scale if scale > 1 else 0.0), method) == pytest.approx(plain, rel=1e-6)
