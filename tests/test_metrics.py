"""Metric estimators against cases with known answers.

Every expected value here is computed by hand or from a closed form (the normal CDF, the
integrated autocorrelation time of an AR(1) process), never by re-running the estimator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from boltzbench.contracts import Reference, Samples
from boltzbench.metrics.ess import (
    autocorr_ess,
    autocorrelation,
    ess,
    integrated_autocorr_time,
    kish_ess,
)
from boltzbench.metrics.free_energy import delta_f_error, free_energy_difference
from boltzbench.metrics.observables import heat_capacity_error, mean_energy_error
from boltzbench.metrics.wasserstein import energy_w1, w1_samples, w1_to_cdf, x1_w1

LN3 = math.log(3.0)


# --------------------------------------------------------------------------- helpers


def make_samples(energies, log_weights=None, states=None, observables=None) -> Samples:
    """Samples with (T, C) energies; positions are a dummy (T, C, 1) array."""
    energies = np.asarray(energies, float)
    assert energies.ndim == 2
    if states is None:
        states = np.full(energies.shape, -1)
    return Samples(
        positions=np.zeros(energies.shape + (1,)),
        energies=energies,
        log_weights=None if log_weights is None else np.asarray(log_weights, float),
        observables={k: np.asarray(v, float) for k, v in (observables or {}).items()},
        states=np.asarray(states),
    )


def make_reference(energies=(0.0,), exact=None, cdfs=None, observables=None) -> Reference:
    return Reference(
        energies=np.asarray(energies, float),
        observables=observables or {},
        exact=exact or {},
        cdfs=cdfs or {},
        provenance={"method": "hand-built for tests"},
    )


def ar1(phi: float, n_steps: int, n_chains: int, seed: int) -> np.ndarray:
    """(T, C) stationary AR(1): x_t = φ x_{t−1} + sqrt(1 − φ²) ε_t, unit variance."""
    rng = np.random.default_rng(seed)
    x = np.empty((n_steps, n_chains))
    x[0] = rng.standard_normal(n_chains)
    eps = rng.standard_normal((n_steps, n_chains))
    scale = math.sqrt(1.0 - phi * phi)
    for t in range(1, n_steps):
        x[t] = phi * x[t - 1] + scale * eps[t]
    return x


# ------------------------------------------------------------------ W1 between samples


@pytest.mark.parametrize("delta", [0.0, 0.37, -2.5, 10.0])
def test_w1_samples_shift_gives_shift(delta):
    x = np.random.default_rng(0).normal(size=500)
    assert w1_samples(x, x + delta) == pytest.approx(abs(delta), abs=1e-9)


def test_w1_samples_shift_with_weights_gives_shift():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=300), rng.random(300)
    assert w1_samples(x, x + 0.8, w, w) == pytest.approx(0.8, abs=1e-9)


def test_w1_samples_point_masses_by_hand():
    # μ = ¼δ₀ + ¾δ₁, ν = δ₀: move ¾ of the mass a distance 1.
    assert w1_samples([0.0, 1.0], [0.0], [0.25, 0.75]) == pytest.approx(0.75, abs=1e-12)
    # μ = ¼δ₀ + ¾δ₁, ν = ¾δ₀ + ¼δ₁: move ½ of the mass a distance 1.
    assert w1_samples([0.0, 1.0], [0.0, 1.0], [1, 3], [3, 1]) == pytest.approx(0.5, abs=1e-12)
    # μ = ½δ₀ + ½δ₄, ν = δ₁: ½·1 + ½·3.
    assert w1_samples([0.0, 4.0], [1.0]) == pytest.approx(2.0, abs=1e-12)
    # the unweighted version of the first case is ½, not ¾: weights are not ignored
    assert w1_samples([0.0, 1.0], [0.0]) == pytest.approx(0.5, abs=1e-12)


def test_w1_samples_weight_two_equals_duplicate_point():
    y = np.array([-1.0, 0.5, 2.0, 3.0])
    duplicated = w1_samples([0.0, 0.0, 1.0], y)
    weighted = w1_samples([0.0, 1.0], y, [2.0, 1.0])
    assert weighted == pytest.approx(duplicated, abs=1e-12)
    # and the weight matters: uniform weights on the two points give something else
    assert abs(w1_samples([0.0, 1.0], y) - duplicated) > 0.05


def test_w1_samples_unnormalized_weights_are_normalized():
    x, y = [0.0, 1.0, 3.0], [0.5, 2.0]
    assert w1_samples(x, y, [1, 2, 3], [5, 5]) == pytest.approx(
        w1_samples(x, y, [10, 20, 30], [0.1, 0.1]), abs=1e-12)


# ------------------------------------------------------------- W1 against an exact CDF

UNIT_GRID = np.linspace(0.0, 1.0, 1001)
NORMAL_GRID = np.linspace(-9.0, 9.0, 9001)


def test_w1_to_cdf_normal_samples_close_to_normal_cdf():
    x = np.random.default_rng(12345).normal(size=200_000)
    value = w1_to_cdf(x, None, NORMAL_GRID, norm.cdf(NORMAL_GRID))
    assert 0.0 < value < 0.01


def test_w1_to_cdf_point_mass_against_uniform():
    # ∫₀¹ |1 − t| dt = ½, on a fine grid and on the coarsest grid (linear CDF is exact)
    assert w1_to_cdf([0.0], None, UNIT_GRID, UNIT_GRID) == pytest.approx(0.5, abs=1e-6)
    assert w1_to_cdf([0.0], None, np.array([0.0, 1.0]), np.array([0.0, 1.0])) == pytest.approx(0.5, abs=1e-12)
    # a point mass at the middle: ∫₀^½ t dt + ∫_½¹ (1 − t) dt = ¼
    assert w1_to_cdf([0.5], None, UNIT_GRID, UNIT_GRID) == pytest.approx(0.25, abs=1e-6)


def test_w1_to_cdf_crossing_inside_one_grid_interval():
    # F_n = ½ on [0, 1) crosses F(t) = t inside the single grid cell: ∫|½ − t| = ¼
    assert w1_to_cdf([0.0, 1.0], None, np.array([0.0, 1.0]), np.array([0.0, 1.0])) == pytest.approx(0.25, abs=1e-12)


def test_w1_to_cdf_honours_weights():
    # weights 3:1 on {0, 1}: F_n = ¾ on [0, 1), ∫₀¹|¾ − t| dt = ¾²/2 + ¼²/2 = 0.3125
    assert w1_to_cdf([0.0, 1.0], [3.0, 1.0], UNIT_GRID, UNIT_GRID) == pytest.approx(0.3125, abs=1e-9)
    # uniform weights on {0, 1}: F_n = ½, ∫₀¹|½ − t| dt = ¼
    assert w1_to_cdf([0.0, 1.0], None, UNIT_GRID, UNIT_GRID) == pytest.approx(0.25, abs=1e-9)
    # weights 3:1 on {0, ½}: F_n = ¾ on [0, ½), 1 after: ∫₀^½|¾ − t| + ∫_½¹(1 − t) = ¼ + ⅛
    assert w1_to_cdf([0.0, 0.5], [3.0, 1.0], UNIT_GRID, UNIT_GRID) == pytest.approx(0.375, abs=1e-9)
    # uniform weights on {0, ½}: ∫₀^½|½ − t| + ∫_½¹(1 − t) = ⅛ + ⅛
    assert w1_to_cdf([0.0, 0.5], None, UNIT_GRID, UNIT_GRID) == pytest.approx(0.25, abs=1e-9)


def test_w1_to_cdf_samples_outside_the_grid():
    # point mass at −1 against U(0, 1): ∫_{−1}^0 1 dt + ∫_0^1 (1 − t) dt = 1.5
    assert w1_to_cdf([-1.0], None, UNIT_GRID, UNIT_GRID) == pytest.approx(1.5, abs=1e-9)
    # point mass at 3: ∫_0^1 t dt + ∫_1^3 1 dt = 2.5
    assert w1_to_cdf([3.0], None, UNIT_GRID, UNIT_GRID) == pytest.approx(2.5, abs=1e-9)


@pytest.mark.parametrize("c, c_ref", [(0.0, 0.0), (1.3, 0.0), (-2.0, 0.7), (5.0, 5.0)])
def test_w1_to_cdf_point_mass_against_point_like_cdf(c, c_ref):
    # the CDF ramps from 0 to 1 over [c_ref − ε, c_ref + ε]: W1 = |c − c_ref| + ε/2 when
    # c lies outside the ramp, and ε/2 when c = c_ref (two triangles of area ε/4).
    eps = 1e-6
    grid = np.array([c_ref - eps, c_ref + eps])
    value = w1_to_cdf([c], None, grid, np.array([0.0, 1.0]))
    expected = eps / 2 if c == c_ref else abs(c - c_ref)
    assert value == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("delta", [0.5, -1.25])
def test_w1_to_cdf_shifted_normal(delta):
    x = np.random.default_rng(7).normal(loc=delta, size=200_000)
    assert w1_to_cdf(x, None, NORMAL_GRID, norm.cdf(NORMAL_GRID)) == pytest.approx(abs(delta), abs=0.01)


def test_w1_to_cdf_agrees_with_w1_samples_against_a_large_reference_sample():
    rng = np.random.default_rng(2024)
    x = rng.normal(0.3, 1.2, size=20_000)
    reference = rng.normal(size=1_000_000)
    cdf = norm.cdf(NORMAL_GRID)
    # exact W1(N(0.3, 1.2²), N(0, 1)) = E|0.3 + 0.2 Z|
    exact = 0.3 * (2 * norm.cdf(1.5) - 1) + 0.2 * 2 * norm.pdf(1.5)
    a, b = w1_to_cdf(x, None, NORMAL_GRID, cdf), w1_samples(x, reference)
    assert a == pytest.approx(b, abs=0.005)
    assert a == pytest.approx(exact, abs=0.02)
    # weighted: the same agreement with non-uniform weights
    w = rng.random(x.size)
    a_w, b_w = w1_to_cdf(x, w, NORMAL_GRID, cdf), w1_samples(x, reference, w)
    assert a_w == pytest.approx(b_w, abs=0.005)


def test_energy_w1_and_x1_w1_read_the_samples():
    energies = np.array([[1.0, 2.0], [3.0, 4.0]])
    samples = make_samples(energies, observables={"x1": [[0.0, 0.0], [0.0, 0.0]]})
    reference = make_reference(energies=energies.ravel() + 0.5,
                               cdfs={"x1": (UNIT_GRID, UNIT_GRID)})
    assert energy_w1(samples, reference) == pytest.approx(0.5, abs=1e-12)
    assert x1_w1(samples, reference) == pytest.approx(0.5, abs=1e-6)
    assert x1_w1(samples, make_reference()) is None


# --------------------------------------------------------------------------- Kish ESS


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_kish_uniform_is_n(n):
    assert kish_ess(np.full(n, -3.2)) == pytest.approx(n, rel=1e-12)


def test_kish_one_dominating_weight():
    log_w = np.zeros(1000)
    log_w[17] = 50.0
    assert kish_ess(log_w) == pytest.approx(1.0, abs=1e-12)


def test_kish_hand_computed():
    # w = (1, 1, 2, 2): (Σw)²/Σw² = 36/10
    assert kish_ess(np.log([1.0, 1.0, 2.0, 2.0])) == pytest.approx(3.6, rel=1e-12)
    # shape does not matter
    assert kish_ess(np.log([[1.0, 1.0], [2.0, 2.0]])) == pytest.approx(3.6, rel=1e-12)


@pytest.mark.parametrize("shift", [-1e4, -7.0, 3.0, 1e4])
def test_kish_invariant_to_constant_shift(shift):
    log_w = np.random.default_rng(3).normal(size=200)
    base = kish_ess(log_w)
    assert 1.0 < base < 200.0
    assert kish_ess(log_w + shift) == pytest.approx(base, rel=1e-10)


# ---------------------------------------------------------------- autocorrelation ESS


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_integrated_autocorr_time_of_ar1(phi):
    x = ar1(phi, n_steps=20_000, n_chains=32, seed=11)
    tau = integrated_autocorr_time(x)
    assert tau == pytest.approx((1 + phi) / (1 - phi), rel=0.1)
    assert autocorr_ess(x) == pytest.approx(x.size * (1 - phi) / (1 + phi), rel=0.1)


def test_autocorrelation_of_ar1_decays_geometrically():
    rho = autocorrelation(ar1(0.8, n_steps=20_000, n_chains=16, seed=5))
    assert rho[0] == pytest.approx(1.0)
    for t in (1, 2, 5):
        assert rho[t] == pytest.approx(0.8**t, abs=0.02)


def test_autocorr_ess_of_iid_noise_is_c_times_t():
    x = np.random.default_rng(99).standard_normal((5_000, 16))
    value = autocorr_ess(x)
    assert value == pytest.approx(x.size, rel=0.1)
    assert value <= x.size  # capped at C·T


def test_autocorr_ess_sees_chains_stuck_in_different_states():
    # 8 chains, each stuck at its own level, plus tiny noise: per-chain means would hide
    # this (the residuals are i.i.d. and would give ESS ≈ C·T); the grand mean does not.
    rng = np.random.default_rng(42)
    n_steps, n_chains = 2_000, 8
    levels = np.arange(n_chains, dtype=float)
    x = levels[None, :] + 0.01 * rng.standard_normal((n_steps, n_chains))
    value = autocorr_ess(x)
    assert value < 0.01 * x.size
    assert value < 2 * n_chains  # about one independent sample per chain at most


def test_autocorr_ess_constant_trace_is_not_infinite():
    value = autocorr_ess(np.ones((100, 4)))
    assert np.isfinite(value) and value <= 4.0


def test_ess_metric_dispatches_on_weights():
    rng = np.random.default_rng(8)
    energies = rng.standard_normal((1, 4))
    weighted = make_samples(energies, log_weights=np.log([[1.0, 1.0, 2.0, 2.0]]))
    assert ess(weighted, make_reference()) == pytest.approx(3.6, rel=1e-12)
    chains = make_samples(rng.standard_normal((4_000, 8)))
    assert ess(chains, make_reference()) == pytest.approx(32_000, rel=0.1)


# ------------------------------------------------------------------------ free energy


def test_free_energy_difference_known_populations():
    states = np.array([0, 1, 1, 1])
    uniform = np.full(4, 0.25)
    assert free_energy_difference(states, uniform) == pytest.approx(-LN3, abs=1e-12)
    # the sign convention: ΔF_ab = F_b − F_a; swapping the states flips it
    assert free_energy_difference(states, uniform, a=1, b=0) == pytest.approx(LN3, abs=1e-12)
    # weights, not counts: one sample each with weights ¼ and ¾
    assert free_energy_difference([0, 1], [0.25, 0.75]) == pytest.approx(-LN3, abs=1e-12)
    # unlabelled samples (−1) carry weight but are in neither state
    assert free_energy_difference([0, 1, -1], [0.1, 0.3, 0.6]) == pytest.approx(-LN3, abs=1e-12)


def test_free_energy_difference_empty_state_is_none():
    assert free_energy_difference([0, 0, -1], [0.5, 0.3, 0.2]) is None
    assert free_energy_difference([1, 1], [0.5, 0.5]) is None
    # a visited state with zero weight is as empty as an unvisited one
    assert free_energy_difference([0, 1], [1.0, 0.0]) is None


def test_delta_f_error_unweighted_and_weighted():
    energies = np.zeros((1, 2))
    states = np.array([[0, 1]])
    reference = make_reference(exact={"delta_f": -LN3})
    unweighted = make_samples(energies, states=states)  # ΔF = 0
    assert delta_f_error(unweighted, reference) == pytest.approx(LN3, abs=1e-12)
    weighted = make_samples(energies, log_weights=[[0.0, LN3]], states=states)  # ΔF = −ln 3
    assert delta_f_error(weighted, reference) == pytest.approx(0.0, abs=1e-12)


def test_delta_f_error_none_cases():
    energies = np.zeros((2, 2))
    visited_both = make_samples(energies, states=[[0, 1], [0, 0]])
    assert delta_f_error(visited_both, make_reference()) is None  # no exact ΔF
    reference = make_reference(exact={"delta_f": 0.0})
    assert delta_f_error(visited_both, reference) == pytest.approx(LN3, abs=1e-12)
    only_left = make_samples(energies, states=[[0, 0], [0, 0]])
    assert delta_f_error(only_left, reference) is None


# ------------------------------------------------------------------------ observables


def test_mean_energy_error_against_exact_mean():
    samples = make_samples([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5
    reference = make_reference(energies=[100.0, 200.0], exact={"mean_energy": 2.0})
    assert mean_energy_error(samples, reference) == pytest.approx(0.5, abs=1e-12)


def test_mean_energy_error_falls_back_to_reference_sample_mean():
    samples = make_samples([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5
    reference = make_reference(energies=[3.0, 4.0, 5.0])  # mean 4
    assert mean_energy_error(samples, reference) == pytest.approx(1.5, abs=1e-12)


def test_mean_energy_error_weighted():
    energies = [[1.0, 2.0], [3.0, 4.0]]
    reference = make_reference(exact={"mean_energy": 3.5})
    # weights ∝ (0, 0, 1, 1) up to e^-50: weighted mean 3.5, unweighted 2.5
    weighted = make_samples(energies, log_weights=[[-50.0, -50.0], [0.0, 0.0]])
    assert mean_energy_error(weighted, reference) == pytest.approx(0.0, abs=1e-12)
    assert mean_energy_error(make_samples(energies), reference) == pytest.approx(1.0, abs=1e-12)
    # weights (1, 1, 1, 3)/6: mean (1 + 2 + 3 + 12)/6 = 3
    weighted = make_samples(energies, log_weights=[[0.0, 0.0], [0.0, LN3]])
    assert mean_energy_error(weighted, reference) == pytest.approx(0.5, abs=1e-12)


# ----------------------------------------------------------------- Samples.weights()


def test_samples_weights_uniform_without_log_weights():
    w = make_samples(np.zeros((3, 4))).weights()
    assert w.shape == (12,)
    np.testing.assert_allclose(w, np.full(12, 1 / 12), rtol=1e-15)


@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4, 7e5])
def test_samples_weights_normalize_without_overflow(offset):
    log_w = np.array([[0.0, math.log(2.0)], [math.log(3.0), math.log(4.0)]]) + offset
    with np.errstate(all="raise"):
        w = make_samples(np.zeros((2, 2)), log_weights=log_w).weights()
    assert np.all(np.isfinite(w))
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    # flattened in (T, C) order: w ∝ (1, 2, 3, 4)
    np.testing.assert_allclose(w, np.array([1.0, 2.0, 3.0, 4.0]) / 10.0, rtol=1e-9)


def test_heat_capacity_error_on_a_harmonic_oscillator():
    """d harmonic degrees of freedom at kT = 1: u = |x|²/2, C = Var(u) = d/2 exactly.
    Sampling at kT = 2 doubles every u, so C is 4× too large (relative error 3);
    reweighting those samples by exp(−u + u/2) recovers the target."""
    d, n = 10, 200_000
    rng = np.random.default_rng(0)
    exact_c = d / 2
    reference = make_reference(energies=0.5 * (rng.standard_normal((n, d)) ** 2).sum(1))
    assert np.var(reference.energies) == pytest.approx(exact_c, rel=0.02)
    u_right = 0.5 * (rng.standard_normal((n, d)) ** 2).sum(1)
    assert heat_capacity_error(make_samples(u_right.reshape(-1, 100)), reference) < 0.03
    u_hot = 0.5 * ((np.sqrt(2.0) * rng.standard_normal((n, d))) ** 2).sum(1)  # target energies of kT = 2 samples
    assert heat_capacity_error(make_samples(u_hot.reshape(-1, 100)), reference) == pytest.approx(3.0, rel=0.05)
    log_w = (-u_hot + u_hot / 2).reshape(-1, 100)
    assert heat_capacity_error(make_samples(u_hot.reshape(-1, 100), log_weights=log_w), reference) < 0.1


@pytest.mark.parametrize("seed", [2, 3, 8])
def test_w1_with_float32_weights_and_a_far_outlier_of_no_weight(seed):
    """A reweighted float32 flow: one sample with overlapping particles (u = 1e18) whose
    weight underflows to 0. W1 must not see it. POT's quantile functions charged the
    rounding of the total weight (−1e-8 for these seeds) at u = 1e18: W1 ≈ 1e10."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=10_000), rng.normal(0.3, 1.0, size=7_000)
    log_w = np.append(rng.normal(size=10_000), -200.0).astype(np.float32)
    w = np.exp(log_w - log_w.max())
    w = w / w.sum()  # what Samples.weights() gives for float32 log-weights
    assert w[-1] == 0.0 and float(np.sum(w, dtype=np.float64)) < 1.0
    assert w1_samples(np.append(x, 1e18), y, w) == pytest.approx(w1_samples(x, y, w[:-1]), rel=1e-9)
    assert w1_samples(x, y, w[:-1]) == pytest.approx(0.3, abs=0.05)
    # a far outlier with real weight still counts: mass 1e-3 at 1e4 adds about 10
    heavy = np.append(w[:-1] * (1 - 1e-3), 1e-3)
    assert w1_samples(np.append(x, 1e4), y, heavy) == pytest.approx(w1_samples(x, y, w[:-1]) + 10.0, abs=0.1)
