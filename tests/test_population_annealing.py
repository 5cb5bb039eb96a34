"""Population annealing against exact answers: resampling, the adaptive schedule, free
energies of the harmonic oscillator and the double well, and the double well's wells at kT = 1.

Error bars: the production passes of a run are independent annealing runs from fresh
populations, so per-pass estimates are i.i.d. and their standard error (std over passes /
√n) is honest; the free-energy test uses the sampler's own error bar, which is of that kind
(module docstring of population_annealing.py). The n passes of a snapshot are its samples
in pass order: positions (1, n·P, dof) reshape to (n, P, dof).
"""

import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import scipy.integrate
import torch

from boltzbench import Budget, ParameterError, get_sampler, get_system
from boltzbench.cli import main
from boltzbench.contracts import Samples
from boltzbench.systems.harmonic import Harmonic
from boltzbench.testing import Trimer, trimer_observables, trimer_quadrature
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


def test_pa_with_swap_moves_samples_the_trimer_and_its_free_energy_exactly():
    """move = 'swap' (displacements and identity swaps at each step's β, p_swap = 0.5) on the
    kit's Kob-Andersen trimer at kT = 0.8, annealed from β₀ = 0.2: per-pass means of u, u²,
    the A–A and the A–B distance at β = 1, and ln Z(1)/Z(β₀), match quadrature
    (:func:`boltzbench.testing.trimer_quadrature`). Mixing the identities without the
    Metropolis test moves ⟨r_AA⟩ by 0.09 (≈ 9 se)."""
    system = Trimer()
    snapshot, _ = run(system, Budget(max_evals=300_000, n_snapshots=1), seed=0, move="swap", p_swap=0.5,
                      population=100, beta_start=0.2, sweeps=5, initial_sweeps=50)
    d = snapshot.diagnostics
    exact = trimer_quadrature()
    u = torch.as_tensor(per_pass(snapshot, snapshot.energies.double()))
    distances = trimer_observables(snapshot.positions[0])
    observables = {"u": u, "u2": u * u, **{k: torch.as_tensor(per_pass(snapshot, v)) for k, v in distances.items()}}
    for key, values in observables.items():
        se = assert_within(values.mean(dim=1).numpy(), exact[key], what=key)
        assert key.startswith("u") or se < 0.012  # power
    log_z = exact["log_z"] - trimer_quadrature(beta=0.2)["log_z"]
    assert d["passes"] >= 10 and d["log_z_ratio_error"] < 0.03
    assert abs(d["log_z_ratio"] - log_z) < 4.5 * d["log_z_ratio_error"], (d["log_z_ratio"], log_z)
    assert all(abs(step["acceptance"] - 0.4) < 0.15 for step in d["schedule"])  # δ(β) tuned in the warm-up pass
    assert torch.allclose(snapshot.energies[0], system._energy(snapshot.positions[0]), rtol=1e-10)


def test_pa_swap_move_refuses_systems_without_particles_or_with_unknown_pairs():
    for system, params, field, match in [
        (get_system("double_well"), {}, "system", "particle system"),
        (Trimer(), {"swap_pairs": ["BC"]}, "swap_pairs", "valid choices: AB"),
    ]:
        with pytest.raises(ParameterError, match=match) as info:
            run(system, Budget(max_evals=1000), move="swap", **params)
        assert info.value.field == field and system.ledger.total_evals == 0


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
    ({"move": "swap", "p_swap": 2}, "p_swap"),
    ({"move": "swap", "swap_pairs": "AC"}, "swap_pairs"),
    ({"move": "md", "swap_pairs": ["AC"]}, "swap_pairs"),
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


# ------------------------------------- issue 13: ESS of resampled copies; schedules that stall

@dataclass
class HardWall(Harmonic):
    """The harmonic oscillator with a hard wall: u = +inf for x1 > 0. The wall halves Z(β) at
    every β, so ⟨u⟩_β = dim/(2β) still. ``sample_initial`` puts 30 % of the walkers deep in
    the wall (x1 ≥ 20, energy +inf, where random-walk moves of σ ≈ 1 cannot leave it), the
    others on the allowed side."""

    name: ClassVar[str] = "hard_wall"

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        u = super()._energy(x)
        return torch.where(x[:, 0] > 0, torch.full_like(u, math.inf), u)

    def sample_initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = super().sample_initial(n, generator)
        x[:, 0] = -x[:, 0].abs()
        walled = slice(n - round(0.3 * n), n)  # the last ones: the old NaN weights resampled only those
        x[walled, 0] = 20.0 - x[walled, 0]
        return x


@dataclass
class NaNRegion(HardWall):
    """u = NaN for x1 > 0 (30 % of the starts): an undefined energy, never a legal one."""

    name: ClassVar[str] = "nan_region"

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        u = Harmonic._energy(self, x)
        return torch.where(x[:, 0] > 0, torch.full_like(u, math.nan), u)


@dataclass
class Cliff(HardWall):
    """u + 10³⁰⁰ for x1 > 0: finite, but no Δβ ≥ 10⁻⁹ keeps the relative ESS of the 30 % of
    starts up there and the others at 0.9, so the adaptive schedule cannot advance."""

    name: ClassVar[str] = "cliff"

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        u = Harmonic._energy(self, x)
        return u + 1e300 * (x[:, 0] > 0)


@dataclass
class WallWithDeadline(HardWall):
    """The hard wall whose cell deadline passes once ``deadline_at`` evaluations are charged,
    as the runner's ``--cell-timeout`` would at that cost."""

    name: ClassVar[str] = "wall_with_deadline"
    deadline_at: float = 1000.0

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        if self.ledger.total_evals >= self.deadline_at and self.ledger.deadline is None:
            self.ledger.deadline = time.monotonic()
        return super()._energy(x)


@contextmanager
def time_limit(seconds: float):
    """Fail (instead of hanging) if the block runs longer than ``seconds``: the old adaptive
    step returned β unchanged forever, without charging an evaluation."""
    def fail(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the annealing loop does not stop")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_family_kish_ess_by_hand():
    """Kish ESS over family totals: weights (1, 1, 1, 2, 2, 4) in families (0, 0, 0, 1, 1, 2)
    give W = (3, 4, 4) and ESS = 11²/(9 + 16 + 16) = 121/41, against the plain Kish
    11²/27 = 121/27 without families; equal weights in families (0, 0, 0, 1) give the
    inverse Simpson index 1/((3/4)² + (1/4)²) = 1.6. The ESS metrics and the free-energy
    delta method use it."""
    from boltzbench.metrics.ess import ess, ess_fraction, ess_geyer, family_kish_ess
    from boltzbench.metrics.free_energy import delta_f_estimate

    log_w = np.log([[1.0, 1.0, 1.0, 2.0, 2.0, 4.0]]) - 7.0
    families = np.array([[0, 0, 0, 1, 1, 2]])
    assert family_kish_ess(log_w, families) == pytest.approx(121 / 41, rel=1e-12)
    assert family_kish_ess(log_w, None) == pytest.approx(121 / 27, rel=1e-12)
    assert family_kish_ess(np.zeros(4), np.array([7, 7, 7, 2])) == pytest.approx(1.6, rel=1e-12)
    assert family_kish_ess(None, np.array([7, 7, 7, 2])) == pytest.approx(1.6, rel=1e-12)
    # a family of zero weights (log-weight −inf) counts for nothing: W = (3, 4)
    assert family_kish_ess(np.array([0.0, math.log(2), -math.inf, math.log(4)]), np.array([0, 0, 1, 2])) == pytest.approx(49 / 25)
    samples = Samples(positions=np.zeros((1, 6, 1)), energies=np.zeros((1, 6)), log_weights=log_w,
                      observables={}, states=np.array([[0, 1, 0, 1, 0, 1]]), families=families)
    assert ess(samples, None) == ess_geyer(samples, None) == pytest.approx(121 / 41, rel=1e-12)
    assert ess_fraction(samples, None) == pytest.approx(121 / 41 / 6, rel=1e-12)
    assert delta_f_estimate(samples).n_eff == pytest.approx(121 / 41, rel=1e-12)
    with pytest.raises(ValueError, match="families"):
        family_kish_ess(log_w, families[:, :5])


def test_collapsed_schedule_has_a_small_ess_and_ranks_below_the_adaptive_one():
    """Issue 13, item 3, small: 10-D harmonic oscillator, 200 replicas, 10⁵ evaluations. The
    schedule collapsed to one step resamples 200 replicas from a handful of ancestors, so its
    ESS is a few (the spread of ⟨u⟩ over seeds implies about 3), not the ~400 that plain Kish
    over the passes' equal weights said; the adaptive run's is larger. The record's ``ess``
    (which the ESS-per-cost columns read) carries the family-aware value, and the kept
    samples carry the families, unique across passes."""
    from boltzbench.runner import make_cell, run_cell, sample_arrays

    def cell(**params):
        outcome = run_cell(make_cell("harmonic", "pa", seed=0, budget=Budget(max_evals=100_000, n_snapshots=1),
                                     system_params={"dim": 10}, metrics=("ess", "ess_fraction"),
                                     sampler_params={"population": 200, "initial_sweeps": 50, "sweeps": 5,
                                                     **params}))
        assert outcome.record["status"] == "ok", outcome.record["error"]
        return outcome

    collapsed, adaptive = cell(schedule="linear", n_steps=1), cell(schedule="adaptive")
    ess_collapsed = collapsed.record["final"]["metrics"]["ess"]
    ess_adaptive = adaptive.record["final"]["metrics"]["ess"]
    assert ess_collapsed < 20 and ess_collapsed < ess_adaptive / 5, (ess_collapsed, ess_adaptive)
    assert collapsed.record["final"]["metrics"]["ess_fraction"] == pytest.approx(ess_collapsed / collapsed.samples.n)
    families = collapsed.samples.families.reshape(-1, 200)  # (passes, P)
    assert families.shape[0] == collapsed.record["final"]["diagnostics"]["passes"] >= 2
    for r, labels in enumerate(families):
        assert labels.min() >= r * 200 and labels.max() < (r + 1) * 200
    assert np.array_equal(sample_arrays(collapsed.samples)["families"], collapsed.samples.families)


def test_adaptive_step_skips_infinite_energies_and_never_repeats_beta():
    """+inf energies have weight 0 at any Δβ > 0: the step is chosen on the finite ones (the
    old step returned β unchanged). NaN energies, all energies +inf, or a step that would be
    below 10⁻⁹ stop with "stalled at β = …"."""
    finite = torch.from_numpy(np.random.default_rng(1).gamma(5.0, 10.0, 700))
    u = torch.cat([finite, torch.full((300,), math.inf, dtype=torch.float64)])
    beta = next_beta(u, 0.1, 0.9)
    assert beta == next_beta(finite, 0.1, 0.9) and 0.1 < beta < 1.0
    assert relative_ess(-(beta - 0.1) * finite) == pytest.approx(0.9, abs=1e-9)
    for bad, why in [(torch.cat([finite, torch.tensor([math.nan], dtype=torch.float64)]), "NaN"),
                     (torch.full((10,), math.inf, dtype=torch.float64), r"\+inf"),
                     (torch.tensor([0.0] * 8 + [1e300] * 2, dtype=torch.float64), "target_ess")]:
        with pytest.raises(RuntimeError, match=rf"stalled at β = 0\.1\b.*{why}"):
            next_beta(bad, 0.1, 0.9)


def test_pa_anneals_past_infinite_energies():
    """30 % of the walkers stuck inside a hard wall (u = +inf) at β₀: the first step removes
    them and the run gives ⟨u⟩ = dim/2 at β = 1 (old code: stuck at β₀ until the budget
    ended)."""
    system = HardWall(dim=3)
    snapshot, _ = run(system, Budget(max_evals=300_000, n_snapshots=1), seed=4, population=200,
                      initial_sweeps=10)
    d = snapshot.diagnostics
    assert d["passes"] >= 8
    first = d["schedule"][0]
    assert 0.1 < first["beta"] and first["ess_fraction"] <= 0.7 * 0.9 + 1e-9  # the walled 30 % got weight 0
    assert first["n_families"] <= 140
    assert torch.isfinite(snapshot.energies).all() and (snapshot.positions[0, :, 0] <= 0).all()
    assert_within(per_pass(snapshot, snapshot.energies).mean(axis=1), 1.5, what="<u>")


@pytest.mark.parametrize("schedule", ["adaptive", "linear"])
def test_nan_energies_stop_with_a_clear_error(schedule):
    with pytest.raises(RuntimeError, match=r"stalled at β = 0\.1: \d+ NaN energies"):
        run(NaNRegion(dim=2), Budget(max_evals=50_000), population=50, initial_sweeps=5, schedule=schedule)


def test_a_schedule_that_cannot_advance_says_stalled_at_once():
    """The old run burnt its whole budget at β = 0.1 with sweeps = 2, then blamed the budget."""
    system = Cliff(dim=2)
    with time_limit(60), pytest.raises(RuntimeError, match=r"stalled at β = 0\.1\b"):
        run(system, Budget(max_evals=200_000), population=100, sweeps=2, initial_sweeps=2)
    assert system.ledger.total_evals <= 300  # the warm-up pass's start and initial sweeps, nothing more


def test_no_sweeps_stops_at_the_budget_and_at_the_deadline():
    """sweeps = 0 charges nothing per annealing step, so only the yields after each step let
    the budget and the deadline stop a pass. On the hard wall (the old code's endless loop
    at β₀), the run ends within one pass's cost (200 evaluations) of its budget, and of the
    cost at which the deadline passes (then with a final snapshot of the passes done)."""
    params = dict(population=100, sweeps=0, initial_sweeps=1)
    with time_limit(60):
        system = HardWall(dim=2)
        snapshot, _ = run(system, Budget(max_evals=5_000), **params)
        assert 5_000 <= system.ledger.total_evals <= 5_200 and snapshot.diagnostics["passes"] >= 20

        system = WallWithDeadline(dim=2, deadline_at=2_000)
        snapshot, _ = run(system, Budget(max_evals=10**9), **params)
        assert system.ledger.past_deadline() and system.ledger.total_evals <= 2_200
        assert snapshot.cost["total_evals"] == system.ledger.total_evals and snapshot.diagnostics["passes"] >= 6


@pytest.mark.parametrize("params", [dict(initial_sweeps=0), dict(initial_sweeps=0, sweeps=0, move="mc+md"),
                                    dict(population=2, warmup_population=2, sweeps=0),
                                    dict(schedule="linear", n_steps=1, move="md", dt=0.1)],
                         ids=["no-initial-sweeps", "no-sweeps-mc+md", "population-2", "one-step-md"])
def test_every_accepted_value_runs(params):
    """Edge values that validation accepts run to a snapshot (initial_sweeps = 0 raised a
    TypeError on any system)."""
    system = get_system("harmonic", dim=2)
    snapshot, _ = run(system, Budget(max_evals=20_000, n_snapshots=1), **{"population": 50, **params})
    assert snapshot.diagnostics["passes"] >= 1 and torch.isfinite(snapshot.energies).all()


def test_no_initial_sweeps_gives_the_right_mean_energy():
    """initial_sweeps = 0 (old code: TypeError): the sweeps along the schedule equilibrate
    the over-dispersed starts, and ⟨u⟩ = dim/2 at β = 1 within the spread of the passes."""
    system = get_system("harmonic", dim=4, sigma=[0.5, 1, 1, 2])
    snapshot, _ = run(system, Budget(max_evals=400_000, n_snapshots=1), seed=7, population=200, initial_sweeps=0)
    assert snapshot.diagnostics["passes"] >= 8
    assert_within(per_pass(snapshot, snapshot.energies).mean(axis=1), 2.0, what="<u>")
