"""Swap Monte Carlo and single-particle moves against exact answers.

The exact reference is the conformance kit's tiny periodic system,
:class:`boltzbench.testing.Trimer` (two A and one B Kob-Andersen particles in 2D, cut at
1.5·σ_αβ), whose configurational averages are computed by quadrature
(:func:`boltzbench.testing.trimer_quadrature`: particle 0 at the origin, the midpoint rule over
the positions of particles 1 and 2 on a 48×48 grid each, within 2e-4 of a 64×64 grid). Error
bars: chains are independent, so per-chain time averages are i.i.d. and std/√C is an honest
standard error.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from boltzbench import get_system
from boltzbench.contracts import Budget, ParameterError
from boltzbench.registry import get_sampler
from boltzbench.samplers.moves import (HAVE_NUMBA, ParticleDisplacementMove, SwapMove, SweepRandoms, Walkers,
                                       compile_table, draw_sweep, identical_pairs, sweep, sweep_numba, sweep_torch)
from boltzbench.samplers.swap_mc import SwapMC
from boltzbench.testing import Trimer, trimer_quadrature
from boltzbench.testing import trimer_observables as kit_observables

BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing"))]


def trimer_exact(beta: float = 1.0) -> dict[str, float]:
    """⟨u⟩, ⟨u²⟩, ⟨r_AA⟩, ⟨r_AB⟩ of the trimer at kT = 0.8 (u reduced there, sampled at β)."""
    return trimer_quadrature(beta=beta)


def trimer_observables(positions: torch.Tensor, energies: torch.Tensor) -> dict[str, torch.Tensor]:
    """The observables of :func:`trimer_exact` for samples (T, C, 6), energies (T, C)."""
    u = energies.double()
    return {"u": u, "u2": u * u, **kit_observables(positions)}


def assert_matches(observables: dict[str, torch.Tensor], exact: dict[str, float], z_max: float = 4.5) -> None:
    """Per-chain means (T, C) → mean ± std/√C against the exact values."""
    report = {}
    for key, values in observables.items():
        per_chain = values.mean(0)
        mean, se = float(per_chain.mean()), float(per_chain.std() / math.sqrt(per_chain.numel()))
        report[key] = (mean, se, exact[key], (mean - exact[key]) / se)
    bad = {k: v for k, v in report.items() if not abs(v[3]) <= z_max}
    print({k: f"{v[0]:.4f} ± {v[1]:.4f} (exact {v[2]:.4f}, z = {v[3]:+.2f})" for k, v in report.items()})
    assert not bad, f"(mean, se, exact, z) off: {bad}; all: {report}"


# ------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("backend", BACKENDS)
def test_swap_mc_samples_the_exact_boltzmann_distribution_of_a_trimer(backend):
    """Swaps of an A with the B are half of all attempted moves; ⟨r_AA⟩ and ⟨r_AB⟩ differ by 0.13
    (SE ≈ 0.004), so a swap rule that mixes identities, or a wrong sign, or a missing 1/kT, fails."""
    system = Trimer()
    sampler = SwapMC(n_chains=512, p_swap=0.5, step=0.3, thin=1, warmup=0.1, backend=backend)
    snapshot = list(sampler.run(system, Budget(max_evals=5.5e5, n_snapshots=1), torch.Generator().manual_seed(7)))[-1]
    assert_matches(trimer_observables(snapshot.positions, snapshot.energies), trimer_exact())
    diag = snapshot.diagnostics
    assert diag["backend"] == backend and 0.1 < diag["acceptance_swap"] < 0.9 and diag["sweeps"] > 700
    assert diag["swaps_skipped"] > 0  # the A–A pair is drawn a third of the time


def test_particle_displacement_move_samples_exp_minus_beta_u_per_walker():
    """The single-particle move of moves.py at β = 1 and β = 0.5 (T_eff = 1.6) per walker."""
    system = Trimer()
    c = 256
    beta = torch.tensor([1.0, 0.5], dtype=torch.float64).repeat_interleave(c)
    walkers = Walkers.start(system, system.sample_initial(2 * c, torch.Generator().manual_seed(3)), beta)
    move = ParticleDisplacementMove(0.5)
    generator = torch.Generator().manual_seed(4)
    sweep(move, walkers, system, generator, 100)                      # burn-in
    xs, us = [], []
    for _ in range(600):
        move(walkers, system, generator)
        xs.append(walkers.x.clone())
        us.append(walkers.u.clone())
    x, u = torch.stack(xs), torch.stack(us)
    assert torch.allclose(u[-1], system.energy(x[-1]), rtol=1e-9, atol=1e-9)
    for k, b in enumerate((1.0, 0.5)):
        part = slice(k * c, (k + 1) * c)
        assert_matches(trimer_observables(x[:, part], u[:, part]), trimer_exact(beta=b))
    assert ((x.reshape(-1, 2) >= 0) & (x.reshape(-1, 2) < 3.0)).all()  # wrapped into the box


# --------------------------------------------------------------------- detailed balance


def one_attempt(i: torch.Tensor, j: torch.Tensor, log_uniform: torch.Tensor, dim: int) -> SweepRandoms:
    """Random numbers of a single swap attempt of particles i[b], j[b] per walker."""
    b = i.shape[0]
    return SweepRandoms(torch.ones((1, b), dtype=torch.bool), i[None], j[None],
                        torch.zeros((1, b, dim), dtype=torch.float64), log_uniform[None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_swap_acceptance_is_min_1_exp_minus_beta_du(backend):
    """Copies of one ternary2d configuration attempt fixed swaps (i, j) with fresh uniforms, at
    β = 1 and β = 0.5: accepted fraction = min(1, exp(−β·Δu)), Δu from full energies; accepted
    swaps exchange the positions and carry u(x')."""
    system = get_system("ternary2d", temperature=2.0)
    x0 = system.sample_initial(1, torch.Generator().manual_seed(0))
    n, species = system.n_particles, system.species
    ii, jj = torch.triu_indices(n, n, 1)
    ii, jj = ii[species[ii] != species[jj]], jj[species[ii] != species[jj]]
    pos = x0.view(n, 2).expand(ii.shape[0], n, 2).clone()
    rows = torch.arange(ii.shape[0])
    pos[rows, ii], pos[rows, jj] = x0.view(n, 2)[jj], x0.view(n, 2)[ii]
    u0 = float(system.energy(x0))
    du_all = system.energy(pos.reshape(ii.shape[0], -1)).double() - u0   # full energies, no local API
    chosen = []                                              # pairs spanning Δu from −3 to 3.5
    for lo, hi in [(-3, -0.3), (-0.3, 0.3), (0.3, 1.0), (1.0, 2.0), (2.0, 3.5)]:
        chosen += ((du_all > lo) & (du_all <= hi)).nonzero()[:2, 0].tolist()
    assert len(chosen) >= 8
    per = 2000                                               # walkers per (pair, β)
    pairs = torch.tensor(chosen).repeat_interleave(2 * per)
    beta = torch.tensor([1.0, 0.5], dtype=torch.float64).repeat_interleave(per).repeat(len(chosen))
    i, j, du = ii[pairs], jj[pairs], du_all[pairs]
    x = x0.expand(pairs.shape[0], -1).clone()
    u = torch.full((x.shape[0],), u0, dtype=torch.float64)
    log_uniform = torch.log(torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    r = one_attempt(i, j, log_uniform, 2)
    if backend == "numba":
        x_new, u_new, counts = sweep_numba(x, u, beta, system, r, compile_table(system))
    else:
        x_new, u_new = x.clone(), u.clone()
        counts = sweep_torch(x_new, u_new, beta, system, r, identical_pairs(system))
    accepted = counts[:, 3].bool()
    for k in range(len(chosen)):
        for g, b in enumerate((1.0, 0.5)):
            sel = slice((2 * k + g) * per, (2 * k + g + 1) * per)
            expected = float(torch.exp(-b * du[sel][0]).clamp(max=1.0))
            observed = float(accepted[sel].double().mean())
            se = math.sqrt(max(expected * (1 - expected), 1e-4) / per)
            assert abs(observed - expected) < 4.5 * se, (k, b, float(du[sel][0]), observed, expected)
    swapped = pos[pairs].reshape(x.shape[0], -1)
    assert torch.equal(x_new[accepted], swapped[accepted]) and torch.equal(x_new[~accepted], x[~accepted])
    assert torch.allclose(u_new, u + torch.where(accepted, du, 0.0), rtol=1e-10, atol=1e-9)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
@pytest.mark.parametrize("name, params", [
    ("ternary2d", {"temperature": 1.0}),
    ("ka3d", {"n_particles": 150}),
    ("soft_spheres", {"dim": 2, "n_particles": 64, "temperature": 0.3}),
    ("soft_spheres", {"dim": 3, "n_particles": 70}),
    ("dw4", {}),
])
def test_compiled_sweep_follows_the_local_energy_api_move_for_move(name, params):
    """The numba kernel's pair potentials (LJ, soft sphere, double well; periodic or open) and
    its bookkeeping reproduce the torch backend, which calls the system's own local energies,
    on the same random numbers: same accepted moves, same positions, same energies."""
    system = get_system(name, **params)
    b = 3
    x = system.sample_initial(b, torch.Generator().manual_seed(0))
    u = system.energy(x).double()
    beta = torch.tensor([1.0, 0.7, 0.4], dtype=torch.float64)
    step = torch.full((b,), 0.3, dtype=torch.float64)
    table, identical = compile_table(system), identical_pairs(system)
    xt, ut, xn, un = x.clone(), u.clone(), x.clone(), u.clone()
    for seed in range(2):
        r = draw_sweep(system.n_particles, system.dim, step, 0.3, torch.Generator().manual_seed(seed))
        counts_t = sweep_torch(xt, ut, beta, system, r, identical)
        xn, un, counts_n = sweep_numba(xn, un, beta, system, r, table)
        assert torch.equal(counts_t, counts_n)
    assert counts_n[:, 1].sum() > 0 and (name == "dw4" or counts_n[:, 2].sum() > 0)
    assert torch.allclose(xn, xt, rtol=0, atol=1e-12)
    assert torch.allclose(un, ut, rtol=1e-12, atol=1e-9)
    assert torch.allclose(un, system.energy(xn).double(), rtol=1e-10, atol=1e-8)


# ----------------------------------------------------------------- skips and charges


@pytest.mark.parametrize("backend", BACKENDS)
def test_swaps_of_identical_particles_are_skipped_and_not_charged(backend):
    """DW-4 has one species: every proposed swap is skipped, nothing moves, nothing is charged."""
    system = get_system("dw4")
    walkers = Walkers.start(system, system.sample_initial(6, torch.Generator().manual_seed(0)),
                            torch.ones(6, dtype=torch.float64))
    x0, before = walkers.x.clone(), system.ledger.total_evals
    move = SwapMove(0.1, p_swap=1.0, backend=backend)
    move(walkers, system, torch.Generator().manual_seed(1))
    assert system.ledger.total_evals == before
    assert torch.equal(walkers.x, x0)
    assert move.counts[:, 4].tolist() == [4.0] * 6 and move.counts[:, :4].sum() == 0
    assert move.accepted is None  # no displacement: nothing for the step tuner


@pytest.mark.parametrize("backend", BACKENDS)
def test_ledger_a_sweep_of_displacements_costs_one_evaluation_and_a_swap_two_over_n(backend):
    system = get_system("ternary2d")
    b, n = 5, system.n_particles
    walkers = Walkers.start(system, system.sample_initial(b, torch.Generator().manual_seed(0)),
                            torch.ones(b, dtype=torch.float64))
    generator = torch.Generator().manual_seed(1)
    before = system.ledger.total_evals
    SwapMove(0.1, p_swap=0.0, backend=backend)(walkers, system, generator)
    assert system.ledger.total_evals - before == pytest.approx(b, rel=1e-12)
    move = SwapMove(0.1, p_swap=1.0, backend=backend)
    before = system.ledger.total_evals
    move(walkers, system, generator)
    attempted, skipped = float(move.counts[:, 2].sum()), float(move.counts[:, 4].sum())
    assert attempted + skipped == b * n and 0 < skipped < b * n
    assert system.ledger.total_evals - before == pytest.approx(2 * attempted / n, rel=1e-12)
    assert torch.allclose(walkers.u, system.energy(walkers.x).double(), rtol=1e-10)


# ----------------------------------------------------------- determinism and bad input


def run_last(sampler, system, seed: int, max_evals: float = 600):
    return list(sampler.run(system, Budget(max_evals=max_evals, n_snapshots=2), torch.Generator().manual_seed(seed)))[-1]


def test_same_seed_same_samples_and_both_backends_follow_the_same_chain():
    make = functools.partial(SwapMC, n_chains=4, thin=2, p_swap=0.3)
    a = run_last(make(backend="torch"), get_system("ternary2d", temperature=1.0), 5)
    b = run_last(make(backend="torch"), get_system("ternary2d", temperature=1.0), 5)
    c = run_last(make(backend="torch"), get_system("ternary2d", temperature=1.0), 6)
    assert torch.equal(a.positions, b.positions) and not torch.equal(a.positions, c.positions)
    if HAVE_NUMBA:
        d = run_last(make(backend="numba"), get_system("ternary2d", temperature=1.0), 5)
        assert d.positions.shape == a.positions.shape
        assert torch.allclose(d.positions, a.positions, rtol=0, atol=1e-9)
        assert torch.allclose(d.energies, a.energies, rtol=1e-10)
        assert d.diagnostics["acceptance_swap"] == a.diagnostics["acceptance_swap"]


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_p_swap_outside_0_1_is_an_error_naming_p_swap(value):
    with pytest.raises(ParameterError, match="p_swap") as err:
        get_sampler("swap_mc", p_swap=value)
    assert err.value.field == "p_swap"
    for field, params in (("backend", {"backend": "cuda"}), ("step", {"step": 0.0}),
                          ("warmup", {"warmup": 1.0}), ("target_acceptance", {"target_acceptance": 1.0})):
        with pytest.raises(ParameterError, match=field):
            get_sampler("swap_mc", **params)


def test_swaps_on_a_single_species_system_are_an_error_naming_it_and_p_swap_0_runs():
    system = get_system("dw4")
    with pytest.raises(ParameterError, match="'dw4'.*several species or polydisperse") as err:
        run_last(SwapMC(n_chains=2), system, 0)
    assert err.value.field == "p_swap"
    snap = run_last(SwapMC(n_chains=2, p_swap=0.0, thin=1), system, 0, max_evals=1000)
    assert snap.diagnostics["acceptance_swap"] is None and snap.diagnostics["acceptance_displacement"] > 0
    with pytest.raises(ParameterError, match="particle system"):
        run_last(SwapMC(), get_system("double_well"), 0)
    with pytest.raises(ParameterError, match="backend"):        # LJ-13's restraint has no compiled twin
        run_last(SwapMC(backend="numba", p_swap=0.0), get_system("lj13"), 0)


# ------------------------------------------------------------------- real systems


@pytest.mark.parametrize("name, params", [
    ("ternary2d", {"temperature": 1.0}),
    ("ternary2d", {"temperature": 1.0, "precision": "float32"}),
    ("soft_spheres", {"dim": 2, "n_particles": 64, "temperature": 0.5}),
])
def test_swap_mc_on_a_liquid_runs_with_finite_energies_that_are_the_energies_of_the_positions(name, params):
    system = get_system(name, **params)
    sampler = get_sampler("swap_mc", n_chains=8, thin=5)
    snaps = list(sampler.run(system, Budget(max_evals=3000, n_snapshots=3), torch.Generator().manual_seed(2)))
    last = snaps[-1]
    assert len(snaps) >= 2 and last.positions.shape[1:] == (8, system.dof)
    assert torch.isfinite(last.positions).all() and torch.isfinite(last.energies).all()
    diag = last.diagnostics
    assert set(diag) >= {"acceptance_displacement", "acceptance_swap", "swaps_skipped", "sweeps", "step"}
    assert 0 < diag["acceptance_swap"] < 1 and 0.1 < diag["acceptance_displacement"] < 0.9
    assert (diag["swaps_skipped"] == 0) == (name == "soft_spheres")  # continuous polydispersity: no equal pair
    recomputed = system.energy(last.positions.reshape(-1, system.dof)).double().reshape(last.energies.shape)
    tol = 1e-4 if params.get("precision") == "float32" else 1e-9
    assert torch.allclose(last.energies.double(), recomputed, rtol=tol, atol=tol)
    assert last.cost["total_evals"] >= 3000


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
def test_displacement_only_dynamics_keeps_the_swap_equilibrium_of_a_ternary_liquid():
    """ternary2d at kT = 2: configurations equilibrated by swap MC are continued with swaps
    (p_swap = 0.3) and without (p_swap = 0): both chains must agree on ⟨u⟩ and the mean A–B
    distance (within 5 combined standard errors over 64 independent walkers). A biased swap
    rule would leave displacement-only dynamics relaxing away from the swap ensemble. (From
    the lattice starts displacement-only MC needs ~10⁴ sweeps to relax here, swap MC a few
    hundred, so both continue from the same swap-equilibrated configurations.)"""
    system = get_system("ternary2d", temperature=2.0)
    generator = torch.Generator().manual_seed(0)
    c = 64
    start = Walkers.start(system, system.sample_initial(c, generator), torch.ones(c, dtype=torch.float64))
    sweep(SwapMove(0.1, p_swap=0.3), start, system, generator, 2500)
    results = {}
    for p_swap in (0.3, 0.0):
        walkers, move = Walkers(start.x.clone(), start.u.clone(), start.beta.clone()), SwapMove(0.12, p_swap)
        us, xs = [], []
        for k in range(6000):
            move(walkers, system, generator)
            if k % 10 == 0:
                us.append(walkers.u.clone())
                xs.append(walkers.x.clone())
        r_ab = system.observables(torch.cat(xs))["pair_distance/AB"].mean(-1).reshape(len(xs), c)
        results[p_swap] = {key: (float(v.mean(0).mean()), float(v.mean(0).std() / math.sqrt(c)))
                           for key, v in (("u", torch.stack(us)), ("r_ab", r_ab))}
    for key in results[0.0]:
        (a, sa), (b, sb) = results[0.3][key], results[0.0][key]
        assert abs(a - b) < 5 * math.hypot(sa, sb), (key, results)
