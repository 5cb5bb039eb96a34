"""Wasserstein, ESS and free-energy estimators against known answers.

Expected values come from closed forms (normal W2, translations, AR(1) τ, binomial
variances) or from an independent implementation (scipy's W1), never from the estimator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from scipy.stats import norm

from boltzbench.contracts import Reference, Samples
from boltzbench.metrics.ess import (
    autocorr_ess,
    ess_fraction,
    ess_geyer,
    family_effective_population,
    geyer_autocorr_time,
    integrated_autocorr_time,
    kish_ess,
    kish_ess_fraction,
)
from boltzbench.metrics.free_energy import (
    delta_f,
    delta_f_estimate,
    delta_f_stderr,
    free_energy_differences,
)
from boltzbench.metrics.observables import energy_histogram
from boltzbench.metrics.wasserstein import (
    MetricResult,
    config_emd_w2,
    config_sliced_w2,
    dihedral_w2,
    emd_w2,
    energy_w2,
    pair_distance_w1,
    pair_distance_w1_AB,
    pair_distance_w1_by_pair,
    sliced_w2,
    torus_cost,
    torus_w2,
    w1_samples,
    w2_samples,
)


def make_samples(energies, log_weights=None, states=None, observables=None, positions=None) -> Samples:
    energies = np.asarray(energies, float)
    return Samples(
        positions=np.zeros(energies.shape + (1,)) if positions is None else np.asarray(positions, float),
        energies=energies,
        log_weights=None if log_weights is None else np.asarray(log_weights, float),
        observables={k: np.asarray(v, float) for k, v in (observables or {}).items()},
        states=np.full(energies.shape, -1) if states is None else np.asarray(states),
    )


def make_reference(energies=(0.0,), observables=None, exact=None) -> Reference:
    return Reference(np.asarray(energies, float), observables or {}, exact or {}, {}, {"method": "test"})


def quantile_sample(mu: float, sigma: float, n: int) -> np.ndarray:
    """A deterministic 'sample' of N(μ, σ²): its quantiles at (i + ½)/n."""
    return mu + sigma * norm.ppf((np.arange(n) + 0.5) / n)


def ar1(phi: float, n_steps: int, n_chains: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n_steps, n_chains))
    x[0] = rng.standard_normal(n_chains)
    scale = math.sqrt(1 - phi * phi)
    eps = rng.standard_normal((n_steps, n_chains))
    for t in range(1, n_steps):
        x[t] = phi * x[t - 1] + scale * eps[t]
    return x


# ------------------------------------------------------------------------- 1D W1, W2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_w1_matches_scipy_on_random_weighted_samples(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=300), rng.gamma(2.0, size=170)
    a, b = rng.random(300), rng.random(170)
    expected = scipy.stats.wasserstein_distance(x, y, a, b)
    assert w1_samples(x, y, a, b) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert w1_samples(x, y) == pytest.approx(scipy.stats.wasserstein_distance(x, y), rel=1e-10)


@pytest.mark.parametrize("mu1, s1, mu2, s2", [(0.0, 1.0, 0.0, 1.0), (0.0, 1.0, 2.0, 1.0),
                                              (1.0, 0.5, -1.0, 3.0), (5.0, 2.0, 4.0, 0.2)])
def test_w2_between_normals_closed_form(mu1, s1, mu2, s2):
    expected = math.sqrt((mu1 - mu2) ** 2 + (s1 - s2) ** 2)
    x, y = quantile_sample(mu1, s1, 20_000), quantile_sample(mu2, s2, 30_000)
    assert w2_samples(x, y) == pytest.approx(expected, abs=2e-3)
    # random samples: close, not exact
    rng = np.random.default_rng(3)
    value = w2_samples(rng.normal(mu1, s1, 100_000), rng.normal(mu2, s2, 100_000))
    assert value == pytest.approx(expected, abs=0.03)


def test_w2_honours_weights():
    # a grid weighted by the N(0, 1) and N(1, 2²) densities represents those normals
    grid = np.linspace(-12.0, 14.0, 40_001)
    value = w2_samples(grid, grid, norm.pdf(grid), norm.pdf(grid, 1.0, 2.0))
    assert value == pytest.approx(math.sqrt(2.0), abs=2e-3)
    # hand case: ¾δ₀ + ¼δ₁ against δ₀: W2² = ¼
    assert w2_samples([0.0, 1.0], [0.0], [3.0, 1.0]) == pytest.approx(0.5, abs=1e-12)
    # W2 ≥ W1 on the same pair (Jensen), strictly when the move is not rigid
    assert w2_samples([0.0, 4.0], [1.0]) > w1_samples([0.0, 4.0], [1.0])


def test_energy_w2_reads_weighted_energies():
    energies = np.array([[0.0, 1.0]])
    reference = make_reference(energies=[0.0])
    assert energy_w2(make_samples(energies), reference) == pytest.approx(math.sqrt(0.5), abs=1e-12)
    weighted = make_samples(energies, log_weights=[[math.log(3.0), 0.0]])
    assert energy_w2(weighted, reference) == pytest.approx(0.5, abs=1e-12)


# ----------------------------------------------------------------------------- torus


def test_torus_cost_across_the_seam():
    x = np.array([[math.pi - 0.1, 0.0]])
    y = np.array([[-math.pi + 0.1, 0.0]])
    assert torus_cost(x, y)[0, 0] == pytest.approx(0.04, abs=1e-12)  # 0.2², not (2π − 0.2)²
    both = torus_cost(np.array([[3.0, -3.0]]), np.array([[-3.0, 3.0]]))[0, 0]
    assert both == pytest.approx(2 * (2 * math.pi - 6.0) ** 2, abs=1e-12)
    assert torus_cost(np.array([[0.5, 0.5]]), np.array([[0.5 + 2 * math.pi, 0.5 - 4 * math.pi]]))[0, 0] == \
        pytest.approx(0.0, abs=1e-12)


def test_torus_w2_point_masses_across_the_seam():
    result = torus_w2([[math.pi - 0.1, 1.0]], [[-math.pi + 0.1, 1.0]])
    assert isinstance(result, MetricResult)
    assert result.value == pytest.approx(0.2, abs=1e-9)
    assert (result.n_samples, result.n_reference) == (1, 1)
    assert "EMD" in result.estimator and "1000" in result.estimator


def test_torus_w2_of_a_small_rotation_wrapping_the_seam():
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(2.8, 3.1, 400), rng.uniform(-0.5, 0.5, 400)], axis=1)
    shifted = x + np.array([0.3, 0.0])
    wrapped = (shifted + math.pi) % (2 * math.pi) - math.pi  # most points cross to −π
    assert (wrapped[:, 0] < 0).mean() > 0.5
    assert torus_w2(x, wrapped).value == pytest.approx(0.3, abs=1e-6)


def test_dihedral_w2_metric():
    rng = np.random.default_rng(1)
    phi, psi = rng.uniform(-math.pi, math.pi, (2, 30, 10))
    samples = make_samples(np.zeros((30, 10)), observables={"phi": phi, "psi": psi})
    same = make_reference(observables={"phi": phi.ravel(), "psi": psi.ravel()})
    assert dihedral_w2(samples, same) == pytest.approx(0.0, abs=1e-9)
    moved = make_reference(observables={"phi": phi.ravel() + 0.05, "psi": psi.ravel()})
    assert 0.0 < dihedral_w2(samples, moved) <= 0.05 + 1e-9
    assert dihedral_w2(samples, make_reference()) is None


# ------------------------------------------------------------------- configurations


def test_emd_w2_of_a_translation_is_its_length():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 3))
    shift = np.array([0.3, -0.4, 1.2])
    assert emd_w2(x, x + shift).value == pytest.approx(np.linalg.norm(shift), rel=1e-9)
    # weighted hand case in 2D: ¾ at the origin, ¼ at (1, 0), against δ_origin: W2² = ¼
    assert emd_w2([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0]], [3.0, 1.0]).value == pytest.approx(0.5, abs=1e-12)


def test_emd_w2_subsamples_with_a_fixed_seed():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(1500, 2)), rng.normal(size=(1200, 2)) + 1.0
    first, again = emd_w2(x, y, max_samples=400), emd_w2(x, y, max_samples=400)
    assert first == again
    assert (first.n_samples, first.n_reference) == (400, 400)
    assert first.value == pytest.approx(math.sqrt(2.0), abs=0.2)


def test_sliced_w2_of_a_translation():
    # SW₂² of a translation by s in R^d is E_θ (θ·s)² = |s|²/d
    rng = np.random.default_rng(5)
    d = 6
    x = rng.normal(size=(800, d))
    shift = np.full(d, 0.5)
    result = sliced_w2(x, x + shift)
    assert result.value == pytest.approx(np.linalg.norm(shift) / math.sqrt(d), rel=0.3)
    assert result.value <= emd_w2(x, x + shift).value + 1e-9
    assert sliced_w2(x, x + shift).value == result.value  # seeded projections


def test_config_metrics_need_reference_positions():
    rng = np.random.default_rng(6)
    positions = rng.normal(size=(50, 4, 3))
    samples = make_samples(np.zeros((50, 4)), positions=positions)
    shift = np.array([1.0, 2.0, 2.0])
    reference = make_reference(observables={"positions": positions.reshape(-1, 3) + shift})
    assert config_emd_w2(samples, reference) == pytest.approx(3.0, rel=1e-9)
    assert 0.0 < config_sliced_w2(samples, reference) < 3.0
    assert config_emd_w2(samples, make_reference()) is None
    # weights count: ¾ of the mass on configuration (0, 0, 0), ¼ on (1, 0, 0), against δ at the origin
    weighted = make_samples(np.zeros((1, 2)), log_weights=[[math.log(3.0), 0.0]],
                            positions=[[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    origin = make_reference(observables={"positions": np.zeros((5, 3))})
    assert config_emd_w2(weighted, origin) == pytest.approx(0.5, abs=1e-12)
    assert config_sliced_w2(weighted, origin) <= 0.5 + 1e-12
    assert config_sliced_w2(samples, make_reference()) is None


# ------------------------------------------------------------------- pair distances


def test_pair_distance_w1_pools_pairs_and_is_permutation_invariant():
    rng = np.random.default_rng(7)
    ab = rng.uniform(0.8, 3.0, size=(20, 5, 12))
    aa = rng.uniform(0.9, 3.0, size=(20, 5, 6))
    reference = make_reference(observables={"pair_distance/AB": ab.ravel() - 0.25,
                                            "pair_distance/AA": aa.reshape(-1, 6)})
    samples = make_samples(np.zeros((20, 5)), observables={"pair_distance/AB": ab, "pair_distance/AA": aa})
    by_pair = pair_distance_w1_by_pair(samples, reference)
    assert set(by_pair) == {"AA", "AB"}
    assert by_pair["AB"].value == pytest.approx(0.25, abs=1e-12)
    assert by_pair["AA"].value == pytest.approx(0.0, abs=1e-12)
    assert by_pair["AB"].n_samples == ab.size
    assert pair_distance_w1(samples, reference) == pytest.approx(0.125, abs=1e-12)
    assert pair_distance_w1_AB(samples, reference) == pytest.approx(0.25, abs=1e-12)
    permuted = make_samples(np.zeros((20, 5)), observables={"pair_distance/AB": ab[..., rng.permutation(12)],
                                                            "pair_distance/AA": aa})
    assert pair_distance_w1(permuted, reference) == pytest.approx(0.125, abs=1e-12)
    assert pair_distance_w1(samples, make_reference()) is None


def test_pair_distance_weights_follow_their_configuration():
    # two configurations with one pair each: d = 1 (weight ¾) and d = 2 (weight ¼); reference δ₁
    samples = make_samples(np.zeros((1, 2)), log_weights=[[math.log(3.0), 0.0]],
                           observables={"pair_distance/AA": [[[1.0], [2.0]]]})
    reference = make_reference(observables={"pair_distance/AA": [1.0, 1.0]})
    assert pair_distance_w1_by_pair(samples, reference)["AA"].value == pytest.approx(0.25, abs=1e-12)


# ------------------------------------------------------------------------------- ESS


def test_kish_hand_computed_weights():
    # w = (1, 2, 3, 4): (Σw)²/Σw² = 100/30
    assert kish_ess(np.log([1.0, 2.0, 3.0, 4.0])) == pytest.approx(10 / 3, rel=1e-12)
    assert kish_ess_fraction(np.log([1.0, 2.0, 3.0, 4.0])) == pytest.approx(10 / 12, rel=1e-12)
    # w = (1, 0, 0, 0) up to e⁻⁸⁰⁰: one effective sample, fraction ¼
    assert kish_ess_fraction([0.0, -800.0, -800.0, -800.0]) == pytest.approx(0.25, rel=1e-12)
    weighted = make_samples([[0.0, 0.0, 0.0, 0.0]], log_weights=np.log([[1.0, 2.0, 3.0, 4.0]]))
    assert ess_fraction(weighted, make_reference()) == pytest.approx(10 / 12, rel=1e-12)
    assert ess_geyer(weighted, make_reference()) == pytest.approx(10 / 3, rel=1e-12)


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("method", ["window", "geyer", "geyer_monotone"])
def test_autocorr_ess_of_ar1_several_chains(phi, method):
    x = ar1(phi, n_steps=20_000, n_chains=16, seed=21)
    tau = (1 + phi) / (1 - phi)
    assert autocorr_ess(x, method=method) == pytest.approx(x.size / tau, rel=0.1)


@pytest.mark.parametrize("phi", [0.3, 0.8])
def test_geyer_tau_of_ar1_one_chain(phi):
    x = ar1(phi, n_steps=200_000, n_chains=1, seed=22)
    assert geyer_autocorr_time(x) == pytest.approx((1 + phi) / (1 - phi), rel=0.1)
    assert integrated_autocorr_time(x) == pytest.approx((1 + phi) / (1 - phi), rel=0.1)


def test_geyer_sees_chains_stuck_in_different_states():
    rng = np.random.default_rng(42)
    x = np.arange(8.0)[None, :] + 0.01 * rng.standard_normal((2_000, 8))
    assert autocorr_ess(x, method="geyer") < 2 * 8


def test_geyer_sequence_stops_at_the_first_non_positive_pair():
    # an anticorrelated AR(1) (φ = −0.5): τ = (1 − 0.5)/(1 + 0.5) = 1/3
    x = ar1(-0.5, n_steps=100_000, n_chains=4, seed=23)
    assert geyer_autocorr_time(x) == pytest.approx(1 / 3, rel=0.1)


def test_autocorr_ess_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="geyer"):
        autocorr_ess(np.zeros((10, 2)), method="magic")


def test_family_effective_population():
    schedule = [{"beta": 0.5, "ess_fraction": 0.9, "family_entropy": math.log(50.0), "n_families": 60},
                {"beta": 1.0, "ess_fraction": 0.8, "family_entropy": math.log(20.0), "n_families": 30}]
    assert family_effective_population({"schedule": schedule}) == pytest.approx(20.0, rel=1e-12)
    assert family_effective_population({}) is None
    assert family_effective_population({"schedule": []}) is None


# ----------------------------------------------------------------------- free energy


def test_delta_method_by_hand_for_weighted_samples():
    # w = (1, 1, 2, 2) on states (0, 1, 0, 1): P = ½ each, ΔF = 0, Kish n_eff = 3.6
    samples = make_samples(np.zeros((1, 4)), log_weights=np.log([[1.0, 1.0, 2.0, 2.0]]), states=[[0, 1, 0, 1]])
    estimate = delta_f_estimate(samples)
    assert estimate.value == pytest.approx(0.0, abs=1e-12)
    assert estimate.n_eff == pytest.approx(3.6, rel=1e-12)
    assert estimate.stderr == pytest.approx(math.sqrt(4.0 / 3.6), rel=1e-12)
    assert "delta" in estimate.method
    assert delta_f_stderr(samples, make_reference()) == pytest.approx(math.sqrt(4.0 / 3.6), rel=1e-12)


def test_delta_method_stderr_matches_the_spread_over_experiments():
    rng = np.random.default_rng(8)
    p_b, n = 0.2, 2_000
    truth = -math.log(p_b / (1 - p_b))
    z = []
    for _ in range(300):
        states = (rng.random((1, n)) < p_b).astype(int)
        estimate = delta_f_estimate(make_samples(np.zeros((1, n)), log_weights=np.zeros((1, n)), states=states))
        z.append((estimate.value - truth) / estimate.stderr)
    assert np.std(z) == pytest.approx(1.0, abs=0.15)
    assert abs(np.mean(z)) < 0.2


def test_bootstrap_over_chains_matches_binomial_error_for_independent_draws():
    rng = np.random.default_rng(9)
    states = (rng.random((100, 50)) < 0.3).astype(int)
    estimate = delta_f_estimate(make_samples(np.zeros((100, 50)), states=states))
    p_b = states.mean()
    assert estimate.stderr == pytest.approx(math.sqrt((1 / p_b + 1 / (1 - p_b)) / states.size), rel=0.2)
    assert "bootstrap" in estimate.method


def test_bootstrap_over_chains_sees_stuck_chains():
    # 40 chains, each stuck in one state for all 100 steps: about 40 independent draws, not 4000
    rng = np.random.default_rng(10)
    per_chain = np.array([0, 1] * 20)
    rng.shuffle(per_chain)
    states = np.repeat(per_chain[None, :], 100, axis=0)
    estimate = delta_f_estimate(make_samples(np.zeros((100, 40)), states=states))
    assert estimate.value == pytest.approx(0.0, abs=1e-12)
    assert estimate.stderr == pytest.approx(math.sqrt(4.0 / 40), rel=0.25)
    assert estimate.stderr > 5 * math.sqrt(4.0 / 4000)


def test_free_energy_undefined_cases_and_several_states():
    one_state = make_samples(np.zeros((10, 4)), states=np.zeros((10, 4), int))
    assert delta_f(one_state, make_reference()) is None
    assert delta_f_stderr(one_state, make_reference()) is None
    # a state seen by a single chain of 10: most resamples miss it, so no error bar
    rare = np.zeros((10, 10), int)
    rare[:, 3] = 1
    assert delta_f_stderr(make_samples(np.zeros((10, 10)), states=rare), make_reference()) is None
    # three states with populations 1 : 2 : 4
    states = np.array([[0, 1, 1, 2, 2, 2, 2]])
    estimates = free_energy_differences(make_samples(np.zeros((1, 7)), log_weights=np.zeros((1, 7)), states=states))
    assert estimates["0→1"].value == pytest.approx(-math.log(2.0), abs=1e-12)
    assert estimates["0→2"].value == pytest.approx(-math.log(4.0), abs=1e-12)


# ------------------------------------------------------------------ energy histogram


def test_energy_histogram_is_a_json_density():
    x = np.linspace(0.0, 2.0, 200_001)
    hist = energy_histogram(x, bins=20, coverage=1.0)
    assert len(hist["edges"]) == 21 and len(hist["density"]) == 20
    np.testing.assert_allclose(hist["density"], 0.5, rtol=1e-3)  # U(0, 2) has density ½
    # weights: all the mass on the upper half doubles the density there and empties the rest
    weighted = energy_histogram(x, weights=(x > 1.0).astype(float), bins=20, coverage=1.0)
    np.testing.assert_allclose(weighted["density"][:9], 0.0)
    np.testing.assert_allclose(weighted["density"][11:], 1.0, rtol=1e-3)
    import json
    json.dumps(hist, allow_nan=False)


def test_weighted_samples_are_resampled_by_weight_not_subsampled_uniformly():
    """A proposal N(0, 8²I) reweighted to N(0, I) in 2D (ESS fraction 3 %): W2 to target
    draws from the 2·10⁵ weighted samples equals that from 2·10⁵ exact draws at the same
    subsample size; a uniform subsample that keeps the weights has ~30 effective points and
    gives twice the value."""
    from boltzbench.metrics.wasserstein import emd_w2, subsample

    rng = np.random.default_rng(0)
    n = 200_000
    x = 8 * rng.standard_normal((n, 2))
    log_w = -0.5 * (x ** 2).sum(1) * (1 - 1 / 64)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    y = rng.standard_normal((5000, 2))
    resampled = emd_w2(x, y, w, None).value
    exact = emd_w2(rng.standard_normal((n, 2)), y, None, None).value
    assert abs(resampled - exact) < 0.03
    idx = subsample(n, 1000, 0)
    assert emd_w2(x[idx], y, w[idx] / w[idx].sum(), None).value > 1.5 * resampled
