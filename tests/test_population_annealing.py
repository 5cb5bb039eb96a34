"""Population annealing against exact answers: resampling, the adaptive schedule, free
energies of the harmonic oscillator and the double well, and the double well's wells at kT = 1.

Error bars: the production passes of a run are independent annealing runs from fresh
populations, so per-pass estimates are i.i.d. and their standard error (std over passes /
√n) is honest; the free-energy test uses the sampler's own error bar, which is of that kind
(module docstring of population_annealing.py). The n passes of a snapshot are its samples
in pass order: positions (1, n·P, dof) reshape to (n, P, dof).
"""

import math

import numpy as np
import pytest
import scipy.integrate
import torch

from boltzbench import Budget, ParameterError, get_sampler, get_system
from boltzbench.cli import main
from boltzbench.samplers.population_annealing import (family_entropy, fixed_schedule, multinomial_resample,
                                                      next_beta, relative_ess, systematic_resample)


def run(system, budget, seed=0, **params):
    snapshots = list(get_sampler("pa", **params).run(system, budget, torch.Generator().manual_seed(seed)))
    return snapshots[-1], snapshots


def per_pass(snapshot, values):
    """(n_passes, P) view of a per-sample array of a snapshot."""
    return np.asarray(values).reshape(snapshot.diagnostics["passes"], -1)


def assert_within(estimates, exact, z=4.5, what=""):
    mean, se = estimates.mean(), estimates.std(ddof=1) / math.sqrt(len(estimates))
    assert abs(mean - exact) < z * se, f"{what}: {mean:.5f} ± {se:.5f}, exact {exact:.5f}"
    return se


def double_well_log_z(beta, temperature=1.0, a=1.0, b=6.0, c=1.0, d=1.0):
    """ln ∫ exp(−β·U(x)/kT) dx by quadrature (x2 Gaussian in closed form)."""
    f = lambda x: math.exp(-beta * (a / 4 * x**4 - b / 2 * x**2 + c * x) / temperature)  # noqa: E731
    z1 = sum(scipy.integrate.quad(f, lo, hi, epsabs=0, epsrel=1e-12, limit=200)[0] for lo, hi in [(-15, 0), (0, 15)])
    return math.log(z1) + 0.5 * math.log(2 * math.pi * temperature / (d * beta))


# ---------------------------------------------------------------------- the pieces

@pytest.mark.parametrize("resample", [systematic_resample, multinomial_resample])
def test_resampling_conserves_size_and_expected_copies(resample):
    """E[copies of i] = P·w_i for both schemes, checked over 20 000 resamplings; the
    population size never changes; systematic copies are ⌊P·w_i⌋ or ⌈P·w_i⌉."""
    P, repeats = 8, 20_000
    w = torch.tensor([0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.04, 0.01], dtype=torch.float64)
    log_w = torch.log(w) + 3.7  # unnormalized
    gen = torch.Generator().manual_seed(0)
    copies = np.empty((repeats, P))
    for r in range(repeats):
        index = resample(log_w, P, gen)
        assert index.shape == (P,)
        copies[r] = np.bincount(index.numpy(), minlength=P)
    expected = P * w.numpy()
    se = copies.std(axis=0, ddof=1) / math.sqrt(repeats)
    assert np.all(np.abs(copies.mean(axis=0) - expected) < 4.5 * se + 1e-9), (copies.mean(axis=0), expected)
    assert (copies.sum(axis=1) == P).all()
    if resample is systematic_resample:
        assert np.all((copies >= np.floor(expected)) & (copies <= np.ceil(expected)))
    else:
        assert copies.std(axis=0) @ np.ones(P) > 1.0  # multinomial really is random


def test_adaptive_step_hits_the_target_ess():
    u = torch.from_numpy(np.random.default_rng(1).gamma(5.0, 2.0, 1000))
    beta = next_beta(u, 0.1, 0.9)
    assert 0.1 < beta < 1.0
    assert relative_ess(-(beta - 0.1) * u) == pytest.approx(0.9, abs=1e-9)
    assert relative_ess(-(beta - 0.1) * 1.1 * u) < 0.9  # a larger step would go below
    assert next_beta(u * 1e-6, 0.1, 0.9) == 1.0  # when the last step is gentle, it is taken
    assert relative_ess(torch.zeros(10, dtype=torch.float64)) == pytest.approx(1.0)
    assert relative_ess(torch.tensor([0.0, -1e9, -1e9, -1e9])) == pytest.approx(0.25)


def test_family_entropy_and_fixed_schedules():
    entropy, families = family_entropy(torch.tensor([0, 0, 1, 2]))
    assert families == 3 and entropy == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert family_entropy(torch.arange(16)) == (pytest.approx(math.log(16)), 16)
    linear, geometric = fixed_schedule("linear", 0.2, 4), fixed_schedule("geometric", 0.2, 4)
    assert linear.tolist() == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert geometric.tolist() == pytest.approx([0.2 ** 0.75, 0.2 ** 0.5, 0.2 ** 0.25, 1.0])


# -------------------------------------------------------------------- free energies

@pytest.mark.parametrize("params", [
    dict(schedule="adaptive", resampling="systematic"),
    dict(schedule="geometric", n_steps=30, resampling="multinomial"),
], ids=["adaptive-systematic", "geometric-multinomial"])
def test_harmonic_free_energy_matches_the_exact_ratio(params):
    """ln Z(1)/Z(β₀) = (dim/2)·ln β₀ for the harmonic oscillator, within the sampler's own error
    bar (spread of independent passes), which must be small enough to matter; ⟨u⟩ at β = 1 is
    dim/2; the per-step diagnostics obey what the method guarantees."""
    dim, beta_start = 6, 0.05
    system = get_system("harmonic", dim=dim, sigma=[0.5, 1, 1, 2, 2, 3])
    snapshot, snapshots = run(system, Budget(max_evals=2_500_000, n_snapshots=4), seed=1, population=500,
                              beta_start=beta_start, initial_sweeps=200, **params)
    d = snapshot.diagnostics
    exact = system.log_partition(1.0) - system.log_partition(beta_start)
    assert exact == pytest.approx(dim / 2 * math.log(beta_start))
    assert d["passes"] >= 8 and d["log_z_ratio_error"] < 0.05
    assert abs(d["log_z_ratio"] - exact) < 4.5 * d["log_z_ratio_error"], (d["log_z_ratio"], d["log_z_ratio_error"], exact)
    assert d["free_energy_difference"] == -d["log_z_ratio"]
    assert_within(per_pass(snapshot, snapshot.energies).mean(axis=1), dim / 2, what="<u>")
    schedule = d["schedule"]
    betas = [s["beta"] for s in schedule]
    assert betas == sorted(betas) and betas[-1] == 1.0 and betas[0] > beta_start
    if params["schedule"] == "adaptive":
        assert all(s["ess_fraction"] == pytest.approx(0.9, abs=1e-6) for s in schedule[:-1])
        assert schedule[-1]["ess_fraction"] >= 0.9 - 1e-6
    else:
        assert len(schedule) == 30
    for before, after in zip(schedule, schedule[1:]):  # families only die out
        assert after["n_families"] <= before["n_families"]
    assert all(0 < s["family_entropy"] <= math.log(s["n_families"]) + 1e-12 for s in schedule)
    assert schedule[0]["n_families"] <= 500 and schedule[-1]["family_entropy"] > 0
    # production passes use the step sizes frozen after the warm-up pass: acceptance near the target
    assert all(abs(s["acceptance"] - 0.4) < 0.15 for s in schedule)


@pytest.fixture(scope="module")
def double_well_run():
    system = get_system("double_well")  # kT = 1: barrier ≈ 11.5 kT, P(right) ≈ 0.8 %
    snapshot, snapshots = run(system, Budget(max_evals=6_000_000, n_snapshots=5), seed=0, population=1000)
    return system, snapshot, snapshots


def test_pa_double_well_at_kT_1_matches_quadrature(double_well_run):
    """From β₀ = 0.1 (kT_eff = 10, barrier ≈ 1 kT) PA gets the well weights at kT = 1 right,
    where plain MD/MC keep the 50/50 of their start: ⟨u⟩, P(right), the x1 marginal in bins,
    per-pass estimates against quadrature; the pooled (Ẑ-weighted) estimate too."""
    system, snapshot, _ = double_well_run
    ref = system.reference()
    x1 = per_pass(snapshot, snapshot.positions[0, :, 0])
    u = per_pass(snapshot, snapshot.energies)
    se_u = assert_within(u.mean(axis=1), ref.exact["mean_energy"], what="<u>")
    se_p = assert_within((x1 > 0).mean(axis=1), ref.exact["p_right"], what="P(right)")
    assert se_u < 0.02 and se_p < 0.001  # power: all-left or half-right are far outside
    w = torch.softmax(snapshot.log_weights.reshape(-1), 0).numpy()
    assert abs(float(w @ (x1.ravel() > 0)) - ref.exact["p_right"]) < 4.5 * se_p
    grid, cdf = ref.cdfs["x1"]
    edges = np.array([-4.0, -3.0, -2.5, -2.0, -1.0, 0.0, 1.5, 2.5, 4.0])
    for lo, hi, p in zip(edges[:-1], edges[1:], np.diff(np.interp(edges, grid, cdf))):
        assert_within(((x1 >= lo) & (x1 < hi)).mean(axis=1), p, z=5.0, what=f"P({lo} <= x1 < {hi})")


def test_pa_double_well_free_energy_and_snapshots(double_well_run):
    system, snapshot, snapshots = double_well_run
    d = snapshot.diagnostics
    exact = double_well_log_z(1.0) - double_well_log_z(0.1)
    assert d["log_z_ratio_error"] < 0.02
    assert abs(d["log_z_ratio"] - exact) < 4 * d["log_z_ratio_error"], (d["log_z_ratio"], d["log_z_ratio_error"], exact)
    # snapshots: β = 1 samples of the completed passes, equal weights within a pass, Ẑ_r across
    n, P = d["passes"], d["population"]
    assert snapshot.positions.shape == (1, n * P, 2) and snapshot.log_weights.shape == (1, n * P)
    log_w = per_pass(snapshot, snapshot.log_weights)
    assert np.allclose(log_w, (np.array(d["pass_log_z_ratios"]) - math.log(P))[:, None])
    assert torch.allclose(snapshot.energies[0], system._energy(snapshot.positions[0]))
    passes = [s.diagnostics["passes"] for s in snapshots]
    assert passes == sorted(passes) and len(snapshots) >= 5
    assert snapshot.cost["total_evals"] >= 6_000_000
    # cost: the warm-up pass (100 replicas) is charged; an unfinished last pass is charged too
    assert 0 < d["warmup_evals"] < 100 * 200
    per_pass_cost = P * (1 + 100 + 10 * d["n_temperatures"])
    assert snapshot.cost["total_evals"] >= d["warmup_evals"] + n * per_pass_cost * 0.9


def test_pa_double_well_free_energy_at_a_second_temperature():
    """The same against quadrature for the double well at kT = 2 (β relative to that target),
    with a linear schedule in β."""
    system = get_system("double_well", temperature=2.0)
    snapshot, _ = run(system, Budget(max_evals=2_000_000, n_snapshots=1), seed=3, population=500,
                      beta_start=0.2, schedule="linear", n_steps=20)
    d = snapshot.diagnostics
    exact = double_well_log_z(1.0, 2.0) - double_well_log_z(0.2, 2.0)
    assert len(d["schedule"]) == 20 and d["log_z_ratio_error"] < 0.03
    assert abs(d["log_z_ratio"] - exact) < 4.5 * d["log_z_ratio_error"], (d["log_z_ratio"], exact)


# ------------------------------------------------------------------- run contract

def test_same_seed_same_numbers_different_seed_different():
    def once(seed):
        snapshot, _ = run(get_system("double_well"), Budget(max_evals=60_000), seed=seed, population=50,
                          initial_sweeps=20, move="mc+md")
        return snapshot

    a, b, c = once(5), once(5), once(6)
    assert torch.equal(a.positions, b.positions) and a.diagnostics == b.diagnostics
    assert not torch.equal(a.positions, c.positions)


def test_budget_too_small_for_one_pass_is_a_clear_error():
    with pytest.raises(RuntimeError, match="first complete annealing pass"):
        run(get_system("double_well"), Budget(max_evals=5_000), population=1000)


def test_molecular_dynamics_moves_skip_the_warmup_pass():
    system = get_system("harmonic", dim=2)
    snapshot, _ = run(system, Budget(max_evals=400_000, n_snapshots=1), seed=2, population=200, move="md",
                      dt=0.1, sweeps=5, initial_sweeps=50)
    d = snapshot.diagnostics
    assert d["warmup_evals"] == 0 and d["passes"] >= 2
    assert all(s["acceptance"] == 1.0 for s in d["schedule"])  # unadjusted Langevin steps


# ----------------------------------------------------------------------- bad input

@pytest.mark.parametrize("params,field", [
    ({"population": 1}, "population"),
    ({"population": 0}, "population"),
    ({"target_ess": 0.0}, "target_ess"),
    ({"target_ess": 1.0}, "target_ess"),
    ({"target_ess": 1.5}, "target_ess"),
    ({"beta_start": 1.0}, "beta_start"),
    ({"beta_start": 0.0}, "beta_start"),
    ({"schedule": "cosine"}, "schedule"),
    ({"resampling": "residual"}, "resampling"),
    ({"n_steps": 0}, "n_steps"),
    ({"move": "hmc"}, "move"),
    ({"warmup_population": 1}, "warmup_population"),
])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ParameterError) as info:
        get_sampler("pa", **params)
    assert info.value.field == field


@pytest.mark.parametrize("params,field", [("population = 1", "population"), ("target_ess = 1.2", "target_ess")])
def test_bad_parameters_through_the_matrix_give_exit_2(tmp_path, capsys, params, field):
    path = tmp_path / "bad.toml"
    path.write_text('seeds = [0]\n[budget]\nmax_evals = 1000\n[[systems]]\nname = "double_well"\n'
                    f'[[samplers]]\nname = "pa"\nparams = {{ {params} }}\n')
    assert main(["validate", str(path)]) == 2
    assert f"samplers[0].params.{field}: " in capsys.readouterr().err


# ---------------------------------------------------------------------------- slow

@pytest.mark.slow
@pytest.mark.parametrize("move", ["md", "mc+md"])
def test_harmonic_free_energy_with_langevin_moves(move):
    """PA with BAOAB moves at each step's temperature (velocities rescaled on every β change)
    gets ln Z(1)/Z(β₀) = (dim/2)·ln β₀ and ⟨u⟩ = dim/2 right too."""
    dim, beta_start = 4, 0.1
    system = get_system("harmonic", dim=dim, sigma=[0.5, 1, 1, 2])
    snapshot, _ = run(system, Budget(max_evals=4_000_000, n_snapshots=1), seed=5, population=500,
                      beta_start=beta_start, move=move, dt=0.2, initial_sweeps=200)
    d = snapshot.diagnostics
    exact = dim / 2 * math.log(beta_start)
    assert d["passes"] >= 8 and d["log_z_ratio_error"] < 0.05
    assert abs(d["log_z_ratio"] - exact) < 4.5 * d["log_z_ratio_error"], (d["log_z_ratio"], d["log_z_ratio_error"], exact)
    assert_within(per_pass(snapshot, snapshot.energies).mean(axis=1), dim / 2, what="<u>")
