"""The OpenMM twins in their fast form (systems/openmm_twins.py): energies and forces equal the
torch kernels and independent numpy pair formulas, float64 on OpenMM's Reference platform,
on random and relaxed liquids and on isolated pairs placed at, just inside and just outside
every species-pair cutoff; the OpenMM MD backend runs the same twins."""

from __future__ import annotations

import math

import numpy as np
import openmm
import pytest
import torch

from boltzbench import get_system
from boltzbench.contracts import Budget
from boltzbench.samplers.md import LangevinMD
from boltzbench.systems import openmm_twins
from boltzbench.systems.liquids import LJ_CUTOFF, SS_CUTOFF, SS_NONADDITIVITY, SS_SIGMA_MAX

SYSTEMS = {
    "ka3d": ("ka3d", {"n_particles": 150}),
    "ka2d": ("ka2d", {"n_particles": 40}),
    "ternary2d": ("ternary2d", {}),
    "soft_spheres": ("soft_spheres", {"n_particles": 70}),
    "soft_spheres_2d": ("soft_spheres", {"n_particles": 30, "dim": 2}),
    "dw4": ("dw4", {}),
    "lj13": ("lj13", {}),
}


def _compare(system, x, rtol=1e-9):
    """Twin (Reference, float64) against the torch kernel: energies to rtol, forces to rtol·max|f|."""
    twin = system.openmm_twin()
    u, f = system.energy_and_forces(x)
    u_mm, f_mm = openmm_twins.openmm_energy_forces(system, x, openmm_twins.context(twin, "Reference"), twin)
    assert np.allclose(u_mm, u.numpy(), rtol=rtol, atol=1e-12), (u_mm, u)
    assert np.abs(f_mm - f.numpy()).max() <= rtol * np.abs(f.numpy()).max()
    return u_mm, f_mm


@pytest.mark.parametrize("key", sorted(SYSTEMS))
def test_twin_equals_the_torch_kernel_on_random_and_relaxed_configurations(key):
    name, params = SYSTEMS[key]
    system = get_system(name, **params)
    generator = torch.Generator().manual_seed(3)
    rough = system._initial_positions(2, generator).reshape(2, -1)
    for x in (rough, system.sample_initial(2, generator)):
        _compare(system, x)


# ------------------------------------------------------------- isolated pairs at the cutoffs


def lj_pair(r, sig, eps, smoothing):
    """φ(r) and φ'(r) of one mixture pair (liquids.py module docstring), strict cutoff r < 2.5σ."""
    q6 = (sig / r) ** 6
    if smoothing is None:
        phi = 4 * eps * (q6 * q6 - q6 - (LJ_CUTOFF ** -12 - LJ_CUTOFF ** -6))
        dphi = 4 * eps * (-12 * q6 * q6 + 6 * q6) / r
    else:
        c0, c2, c4 = smoothing
        y = (r / sig) ** 2
        phi = 4 * eps * (q6 * q6 - q6 + c0 + c2 * y + c4 * y * y)
        dphi = 4 * eps * (-12 * q6 * q6 + 6 * q6 + 2 * c2 * y + 4 * c4 * y * y) / r
    inside = r * r < (LJ_CUTOFF * sig) ** 2
    return phi * inside, dphi * inside


def soft_pair(r, d1, d2):
    """φ(r), φ'(r) of two soft spheres (Ninarello, Berthier & Coslovich 2017, Eqs. (1)-(3))."""
    sig = 0.5 * (d1 + d2) * (1 - SS_NONADDITIVITY * abs(d1 - d2))
    xc = SS_CUTOFF
    c0, c2, c4 = -28 / xc ** 12, 48 / xc ** 14, -21 / xc ** 16
    y = r / sig
    phi = y ** -12 + c0 + c2 * y ** 2 + c4 * y ** 4
    dphi = (-12 * y ** -13 + 2 * c2 * y + 4 * c4 * y ** 3) / sig
    inside = r * r < (xc * sig) ** 2
    return phi * inside, dphi * inside


def isolated_pairs(name, params, distances):
    """A dilute system whose particles sit on a lattice of spacing ≥ 6 (beyond every cutoff),
    except that for each (i, j, r) of ``distances(system)`` particle j sits at x_i + r·e_x:
    only those pairs interact. Returns the system, x (1, N·d) and the list of (i, j, r, inside)."""
    n, dim = params["n_particles"], params.get("dim", 2 if name in ("ka2d", "ternary2d") else 3)
    k = math.ceil(n ** (1 / dim))
    system = get_system(name, **params, density=n / (6.0 * k) ** dim)
    grid = np.stack(np.meshgrid(*[np.arange(k) * 6.0] * dim, indexing="ij"), -1).reshape(-1, dim)[:n]
    pairs = distances(system)
    for i, j, r, _ in pairs:
        grid[j] = grid[i] + r * np.eye(dim)[0]
    return system, torch.tensor(grid.reshape(1, -1)), pairs


def mixture_distances(system):
    """For every species pair (α, β): i of α, j of β at 0.95σ, r_c(1 − δ) (δ = 10⁻⁹; 10⁻³ for the
    smoothed cutoff, whose force vanishes at r_c), r_c(1 + 10⁻⁹) and, below the largest pair
    cutoff, halfway between r_c,αβ and it (inside other pairs' cutoffs). Not at
    r_c itself: the torch kernels work in fractional coordinates, so whether r = r_c falls
    inside is decided by their rounding, in either code."""
    species = system.species.numpy()
    free = {a: list(np.flatnonzero(species == a)) for a in range(len(system.sigma))}
    rc_max = LJ_CUTOFF * max(max(row) for row in system.sigma)
    out, delta = [], 1e-9 if system.smoothing is None else 1e-3
    for a in range(len(system.sigma)):
        for b in range(a, len(system.sigma)):
            rc = LJ_CUTOFF * system.sigma[a][b]
            placements = [(0.95 * system.sigma[a][b], True), (rc * (1 - delta), True), (rc * (1 + 1e-9), False)]
            placements += [(0.5 * (rc + rc_max), False)] if rc < rc_max else []
            out += [(free[a].pop(), free[b].pop(), r, inside) for r, inside in placements]
    return out


def soft_distances(system):
    """Pairs (2m, 2m+1) at σ_ij, x_c σ_ij(1 − 10⁻³) (v and v' vanish at x_c), x_c σ_ij(1 + 10⁻⁹)
    and halfway to the largest possible cutoff."""
    d = system.diameters.numpy()
    out = []
    for m, (f, inside) in enumerate(((1.0, True), (SS_CUTOFF * (1 - 1e-3), True), (SS_CUTOFF * (1 + 1e-9), False),
                                     (None, False))):
        i, j = 2 * m, 2 * m + 1
        sig = 0.5 * (d[i] + d[j]) * (1 - SS_NONADDITIVITY * abs(d[i] - d[j]))
        out.append((i, j, f * sig if f else 0.5 * SS_CUTOFF * (sig + SS_SIGMA_MAX), inside))
    return out


@pytest.mark.parametrize("name, params", [
    ("ka3d", {"n_particles": 150}), ("ka2d", {"n_particles": 60}), ("ternary2d", {"n_particles": 100}),
    ("soft_spheres", {"n_particles": 70}), ("soft_spheres", {"n_particles": 30, "dim": 2})])
def test_isolated_pairs_at_each_species_pair_cutoff_equal_the_pair_formula(name, params):
    """Pairs at, just inside and just outside their own cutoff, and between their cutoff and a
    larger one: the twin, the torch kernel and the numpy formula agree on the energy and on
    every force (the truncated-and-shifted LJ force jumps at r_c, so a pair on the wrong
    side would show)."""
    system, x, pairs = isolated_pairs(name, params, soft_distances if name == "soft_spheres" else mixture_distances)
    dim, n = system.dim, system.n_particles
    u_expected, f_expected = 0.0, np.zeros((n, dim))
    for i, j, r, inside in pairs:
        if name == "soft_spheres":
            phi, dphi = soft_pair(r, float(system.diameters[i]), float(system.diameters[j]))
        else:
            a, b = int(system.species[i]), int(system.species[j])
            phi, dphi = lj_pair(r, system.sigma[a][b], system.epsilon[a][b], system.smoothing)
        u_expected += phi
        assert (dphi != 0) == inside                # the placement is on the intended side
        f_expected[j, 0] -= dphi
        f_expected[i, 0] += dphi
    u_expected /= system.temperature
    f_expected = f_expected.reshape(-1) / system.temperature
    assert np.count_nonzero(f_expected) == 2 * sum(p[3] for p in pairs)
    u_mm, f_mm = _compare(system, x)
    assert float(u_mm[0]) == pytest.approx(u_expected, rel=1e-9, abs=1e-12)
    assert np.abs(f_mm[0] - f_expected).max() <= 1e-9 * np.abs(f_expected).max()


def test_mixture_twins_are_one_force_without_tables_or_interaction_groups():
    """The fast form: one CustomNonbondedForce on the neighbour list of the largest cutoff;
    the clusters one CustomBondForce over all pairs (no HarmonicBondForce, which the flow
    would read as molecular bonds)."""
    for name, params in (("ka3d", {"n_particles": 150}), ("ternary2d", {}), ("soft_spheres", {"n_particles": 70})):
        system = get_system(name, **params)
        (force,) = system.openmm_twin().system.getForces()
        assert isinstance(force, openmm.CustomNonbondedForce)
        assert force.getNumTabulatedFunctions() == 0 and force.getNumInteractionGroups() == 0
        assert force.getNonbondedMethod() == openmm.CustomNonbondedForce.CutoffPeriodic
    assert get_system("ka3d").openmm_twin().system.getForces()[0].getCutoffDistance()._value == pytest.approx(2.5)
    for name in ("dw4", "lj13"):
        system = get_system(name)
        (force,) = system.openmm_twin().system.getForces()
        assert isinstance(force, openmm.CustomBondForce)
        assert force.getNumBonds() == system.n_particles * (system.n_particles - 1) // 2


def test_lj13_restraint_folded_into_pairs_equals_half_k_times_the_spread():
    """(k/2)Σ_i |x_i − x̄|² = k/(2N)·Σ_{i<j} r_ij²: the twin with k = 0.7 minus the twin with
    k = 0 is the spread about the centre, computed directly."""
    x = get_system("lj13").sample_initial(3, torch.Generator().manual_seed(1))
    energies = []
    for k in (0.7, 0.0):
        system = get_system("lj13", oscillator_scale=k)
        twin = system.openmm_twin()
        energies.append(openmm_twins.openmm_energy_forces(system, x, openmm_twins.context(twin), twin)[0])
    pos = x.numpy().reshape(3, 13, 3)
    spread = ((pos - pos.mean(1, keepdims=True)) ** 2).sum((1, 2))
    assert np.allclose(energies[0] - energies[1], 0.5 * 0.7 * spread, rtol=1e-10)


@pytest.mark.parametrize("name, params, rtol", [
    ("ka3d", {"n_particles": 150}, 1e-5),          # CPU platform (≥ 100 particles): single precision
    ("lj13", {}, 1e-9),                            # Reference platform, float64
])
def test_openmm_md_backend_energies_equal_the_torch_energy_of_its_positions(name, params, rtol):
    probe = get_system(name, **params)
    probe.sample_initial(2, torch.Generator().manual_seed(0))
    setup = probe.ledger.total_evals                   # the relaxed starts, counted in the budget
    system = get_system(name, **params)
    sampler = LangevinMD(dt=0.002, friction=1.0, n_chains=2, thin=5, backend="openmm")
    snapshot = list(sampler.run(system, Budget(max_evals=setup + 2 * 5 * 4 + 2, n_snapshots=1),
                                torch.Generator().manual_seed(0)))[-1]
    x = snapshot.positions.reshape(-1, system.dof).double()
    assert x.shape[0] == 8
    assert np.allclose(snapshot.energies.reshape(-1).numpy(), system.energy(x).numpy(), rtol=rtol, atol=0)


@pytest.mark.parametrize("name, params", [
    ("ka3d", {"n_particles": 150}), ("ternary2d", {}), ("soft_spheres", {"n_particles": 70}), ("lj13", {}), ("dw4", {})])
def test_the_earlier_and_the_rejected_formulations_give_the_same_energies_and_forces(name, params):
    """The forms ``benchmarks/openmm_formulations.py`` times against the twin (the earlier
    tabulated twin, one force per species pair with interaction groups — an α-α group counts
    each pair once —, the earlier soft-sphere and cluster forms) equal it: a speed comparison
    of the same physics."""
    from boltzbench.benchmarks.openmm_formulations import TWINS_OF_THE_SYSTEM, formulations
    system = get_system(name, **params)
    x = system._initial_positions(2, torch.Generator().manual_seed(4)).reshape(2, -1)
    results = {key: openmm_twins.openmm_energy_forces(system, x, openmm_twins.context(twin), twin)
               for key, twin in formulations(system).items() if key in TWINS_OF_THE_SYSTEM}
    assert len(results) >= 2
    u, f = results.pop("twin")
    for u_other, f_other in results.values():
        assert np.allclose(u_other, u, rtol=1e-9, atol=1e-12)
        assert np.abs(f_other - f).max() <= 1e-9 * np.abs(f).max()


def test_md_backend_platform_is_reference_only_for_small_non_periodic_twins():
    from boltzbench.samplers.openmm_md import default_platform
    assert default_platform(get_system("lj13").openmm_twin().system) == "Reference"
    assert default_platform(get_system("soft_spheres", n_particles=70).openmm_twin().system) == "CPU"
    assert default_platform(get_system("ka3d").openmm_twin().system) == "CPU"
