"""Pair-potential kernels: pair functions, the dense kernel against a brute-force sum over
periodic images, analytic forces, overlaps, local energies for swap MC, precision, chunking."""

import itertools
import math

import numpy as np
import pytest
import torch

from boltzbench import get_system
from boltzbench.systems import particles as P
from boltzbench.systems.liquids import SS_C0, SS_C2, SS_C4, SS_CUTOFF, lj_shift

SMALL = {  # every pair system, at sizes that keep the tests fast
    "ka3d": {"n_particles": 150},
    "ka2d": {"n_particles": 40},
    "ternary2d": {},
    "soft_spheres": {"n_particles": 70},
    "soft_spheres_2d": {"n_particles": 30, "dim": 2},
    "dw4": {},
    "lj13": {},
}


def make(key, **extra):
    name = "soft_spheres" if key.startswith("soft_spheres") else key
    return get_system(name, **SMALL[key], **extra)


def random_configs(system, n, generator, jitter=0.15):
    """Unrelaxed starts (lattice or Gaussian plus noise): rough but overlap-free enough."""
    x = system._initial_positions(n, generator)
    return x.reshape(n, -1).to(system.dtype)


# ------------------------------------------------------------------------ pair functions


def test_pair_functions_match_their_formulas_and_derivatives():
    r = torch.linspace(0.6, 3.0, 97, dtype=torch.float64, requires_grad=True)
    cases = [
        (P.lennard_jones, {"c12": 4 * 1.5 * 0.8**12, "c6": 4 * 1.5 * 0.8**6, "shift": 0.3},
         lambda r: 4 * 1.5 * ((0.8 / r) ** 12 - (0.8 / r) ** 6) - 0.3),
        (P.soft_sphere, {"sig2": 1.1**2, "c0": SS_C0, "c2": SS_C2, "c4": SS_C4},
         lambda r: (1.1 / r) ** 12 + SS_C0 + SS_C2 * (r / 1.1) ** 2 + SS_C4 * (r / 1.1) ** 4),
        (P.double_well, {"a": 0.3, "b": -4.0, "c": 0.9, "d0": 1.7},
         lambda r: 0.3 * (r - 1.7) - 4 * (r - 1.7) ** 2 + 0.9 * (r - 1.7) ** 4),
    ]
    for pair, params, formula in cases:
        phi, fr = pair(r * r, **params)
        expected = formula(r)
        assert torch.allclose(phi, expected, rtol=1e-12, atol=1e-12), pair.__name__
        (dphi,) = torch.autograd.grad(expected.sum(), r)
        assert torch.allclose(fr, -dphi / r, rtol=1e-10, atol=1e-10), pair.__name__


def test_soft_sphere_and_shifted_lj_vanish_at_their_cutoffs():
    # Ninarello et al.: c0, c2, c4 make v and v' vanish at x_c = 1.25
    rc = torch.tensor([SS_CUTOFF * 1.3], dtype=torch.float64)
    phi, fr = P.soft_sphere(rc**2, sig2=1.3**2, c0=SS_C0, c2=SS_C2, c4=SS_C4)
    assert abs(float(phi)) < 1e-12 and abs(float(fr)) < 1e-12
    rc = torch.tensor([2.5 * 0.88], dtype=torch.float64)
    phi, _ = P.lennard_jones(rc**2, c12=4 * 0.5 * 0.88**12, c6=4 * 0.5 * 0.88**6, shift=0.5 * lj_shift())
    assert abs(float(phi)) < 1e-14


# ------------------------------------------------------------------------------ kernel


def brute_force_energy(system, x):
    """U = Σ_{i<j} Σ_images φ_ij(|x_i − x_j + n·L|) in plain NumPy: every image within one box
    of the nearest, no minimum-image formula, pair parameters from the system's table."""
    table = system.pair_table()
    pos = x.detach().double().numpy().reshape(system.n_particles, system.dim)
    box = system.box_edges
    shifts = [np.zeros(system.dim)] if box is None else \
        [np.array(s) * np.array(box) for s in itertools.product((-1, 0, 1), repeat=system.dim)]
    total = 0.0
    for i in range(system.n_particles):
        for j in range(i + 1, system.n_particles):
            for shift in shifts:
                r2 = float(np.sum((pos[i] - pos[j] + shift) ** 2))
                if r2 >= float(table.rc2[i, j]):
                    continue
                params = {k: (v[i, j] if isinstance(v, torch.Tensor) else v) for k, v in table.params.items()}
                phi, _ = table.pair(torch.tensor(max(r2, table.r2_min), dtype=torch.float64), **params)
                total += float(phi)
    if system.name == "lj13":  # plus the centre-of-mass restraint (k/2)·Σ|x_i − x̄|²
        total += 0.5 * system.oscillator_scale * float(np.sum((pos - pos.mean(0)) ** 2))
    return total


@pytest.mark.parametrize("key", ["ternary2d", "ka2d", "soft_spheres_2d", "dw4", "lj13"])
def test_kernel_equals_a_brute_force_sum_over_periodic_images(key, generator):
    system = make(key)
    x = random_configs(system, 2, generator)
    x[1] = x[1] + 7.3  # positions far outside the box must give the same energies
    u, _ = system.potential(x)
    for b in range(2):
        assert float(u[b]) == pytest.approx(brute_force_energy(system, x[b]), rel=1e-10, abs=1e-9)


@pytest.mark.parametrize("key", sorted(SMALL))
@pytest.mark.parametrize("kernel", ["torch", "numba"])
def test_analytic_forces_equal_minus_the_autograd_gradient(key, kernel, generator):
    """Both kernels' forces against autograd of the torch kernel's energy (the compiled one
    is not differentiable by torch)."""
    system, differentiable = make(key, kernel=kernel), make(key, kernel="torch")
    x = random_configs(system, 3, generator)
    u, f = system.energy_and_forces(x)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(differentiable._energy(xg).sum(), xg)
    assert torch.allclose(u, system.energy(x), rtol=1e-14)
    assert torch.allclose(u, differentiable.energy(x), rtol=1e-12)
    assert torch.allclose(f, -grad, rtol=1e-9, atol=1e-9 * float(grad.abs().max()))


def test_energy_is_invariant_under_periodic_translation_and_relabelling(generator):
    system = make("ternary2d")
    x = random_configs(system, 2, generator).reshape(2, system.n_particles, 2)
    u = system.energy(x.reshape(2, -1))
    shifted = x + torch.tensor(system.box_edges, dtype=x.dtype) * torch.tensor([3.0, -2.0], dtype=x.dtype) + 0.37
    assert torch.allclose(system.energy(shifted.reshape(2, -1)), u, rtol=1e-12)
    # exchanging the positions of two particles of the same species changes nothing
    a, b = 0, 1
    assert int(system.species[a]) == int(system.species[b])
    swapped = x.clone()
    swapped[:, [a, b]] = x[:, [b, a]]
    assert torch.allclose(system.energy(swapped.reshape(2, -1)), u, rtol=1e-12)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("key", ["ka2d", "soft_spheres_2d", "lj13", "dw4"])
def test_coincident_particles_give_finite_energies_and_forces_never_nan(key, precision, generator):
    system = make(key, precision=precision)
    x = random_configs(system, 2, generator).reshape(2, system.n_particles, system.dim)
    x[0, 1] = x[0, 0]                      # exactly on top of each other
    x[1, 1] = x[1, 0] + 1e-9               # closer than the clamp radius
    u, f = system.energy_and_forces(x.reshape(2, -1))
    assert torch.isfinite(u).all() and torch.isfinite(f).all()
    if key != "dw4":                        # DW-4 is finite at r = 0 anyway
        assert (u * system.temperature > 1e20).all()


def test_chunking_over_the_batch_does_not_change_results(generator, monkeypatch):
    system = make("ternary2d")
    x = random_configs(system, 7, generator)
    u, f = system.energy_and_forces(x)
    monkeypatch.setattr(P, "PAIR_ELEMENTS", 1)            # one configuration per chunk
    u1, f1 = system.energy_and_forces(x)
    monkeypatch.setattr(P, "PAIR_ELEMENTS", 1 << 30)      # the whole batch at once
    u2, f2 = system.energy_and_forces(x)
    for a, b in ((u, u1), (u, u2), (f, f1), (f, f2)):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("key", ["ternary2d", "soft_spheres_2d", "ka3d"])
def test_verlet_lists_stay_exact_along_a_trajectory_and_rebuild_only_when_needed(key, generator):
    system, dense = make(key, kernel="torch"), make(key, verlet_skin=0.0, kernel="torch")
    assert system.verlet_skin == 0.3
    x = system.sample_initial(4, generator)
    builds = system.verlet_builds
    for step in range(25):      # random walks: pairs enter and leave the cutoff sphere
        x = x + 0.02 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        u, f = system.energy_and_forces(x)
        u0, f0 = dense.energy_and_forces(x)
        assert torch.allclose(u, u0, rtol=1e-12, atol=1e-10)
        assert torch.allclose(f, f0, rtol=1e-10, atol=1e-10 * float(f0.abs().max()))
    # moves of up to 0.02·sqrt(d)·~4σ per step: several rebuilds, far fewer than steps
    assert 1 <= system.verlet_builds - builds < 25
    # a particle that moves less than skin/2 keeps the list; one beyond it forces a rebuild
    system.energy(x[:3])
    system.energy(x)                                # another batch shape: rebuilt, at x
    builds = system.verlet_builds
    nudged = x.clone()
    nudged[:, 0] += 0.14
    system.energy(nudged)
    assert system.verlet_builds == builds
    nudged[:, 0] += 0.02
    assert torch.allclose(system.energy(nudged), dense.energy(nudged), rtol=1e-12)
    assert system.verlet_builds == builds + 1
    system.observables(x[:2] + 1.0)                 # analysis uses the dense kernel, list kept
    assert system.verlet_builds == builds + 1


@pytest.mark.parametrize("key", ["ka3d", "ternary2d", "soft_spheres", "lj13"])
def test_float32_kernels_agree_with_float64_on_relaxed_configurations(key, generator):
    x = make(key).sample_initial(2, generator)
    u64, f64 = make(key).energy_and_forces(x)
    u32, f32 = make(key, precision="float32").energy_and_forces(x.float())
    assert u32.dtype == torch.float32
    assert torch.allclose(u32.double(), u64, rtol=1e-4)
    assert (f32.double() - f64).abs().max() < 1e-4 * f64.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("key", ["ka3d", "soft_spheres", "lj13"])
def test_cuda_kernels_agree_with_cpu(key, generator):
    x = make(key).sample_initial(3, generator)
    u, f = make(key).energy_and_forces(x)
    cuda = make(key, device="cuda")
    uc, fc = cuda.energy_and_forces(x.cuda())
    assert uc.is_cuda
    assert torch.allclose(uc.cpu(), u, rtol=1e-10) and torch.allclose(fc.cpu(), f, rtol=1e-8, atol=1e-8)
    i = torch.arange(3, device="cuda")
    du = cuda.energy_change_swap(x.cuda(), i, i + 5)
    assert torch.allclose(du.cpu(), make(key).energy_change_swap(x, i.cpu(), i.cpu() + 5), rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------------- local energies


@pytest.mark.parametrize("key", sorted(SMALL))
def test_energy_change_of_a_displacement_equals_the_full_energy_difference(key, generator):
    system = make(key)
    b = 6
    x = system.sample_initial(b, generator)
    i = torch.randint(0, system.n_particles, (b,), generator=generator)
    pos = x.reshape(b, system.n_particles, system.dim)
    new = pos[torch.arange(b), i] + 0.3 * torch.randn(b, system.dim, generator=generator, dtype=x.dtype)
    if system.box_edges is not None:
        new[0] += torch.tensor(system.box_edges, dtype=x.dtype)   # a move through the boundary
    moved = pos.clone()
    moved[torch.arange(b), i] = new
    expected = system.energy(moved.reshape(b, -1)) - system.energy(x)
    du = system.energy_change_displace(x, i, new)
    assert torch.allclose(du, expected, rtol=1e-9, atol=1e-9 * float(system.energy(x).abs().max()))


@pytest.mark.parametrize("key", ["ka3d", "ka2d", "ternary2d", "soft_spheres", "soft_spheres_2d"])
def test_energy_change_of_a_swap_equals_the_full_energy_difference(key, generator):
    system = make(key)
    b = 8
    x = system.sample_initial(b, generator)
    i = torch.randint(0, system.n_particles, (b,), generator=generator)
    j = torch.randint(0, system.n_particles, (b,), generator=generator)
    j[0] = i[0]                                   # a swap with itself changes nothing
    j[1] = system.n_particles - 1 if int(i[1]) != system.n_particles - 1 else 0
    pos = x.reshape(b, system.n_particles, system.dim)
    rows = torch.arange(b)
    swapped = pos.clone()
    swapped[rows, i], swapped[rows, j] = pos[rows, j], pos[rows, i]
    expected = system.energy(swapped.reshape(b, -1)) - system.energy(x)
    du = system.energy_change_swap(x, i, j)
    assert float(du[0]) == 0.0
    assert (expected.abs()[1:] > 1e-6).any()      # the test can see a wrong answer
    assert torch.allclose(du, expected, rtol=1e-9, atol=1e-9 * float(system.energy(x).abs().max()))


def test_local_moves_are_charged_as_fractions_of_an_evaluation(generator):
    system = make("ternary2d")
    x = random_configs(system, 5, generator)
    i = torch.zeros(5, dtype=torch.long)
    before = system.ledger.total_evals
    system.energy_change_displace(x, i, x[:, :2])
    assert system.ledger.total_evals - before == pytest.approx(5 / 43)
    system.energy_change_swap(x, i, i + 1)
    assert system.ledger.total_evals - before == pytest.approx(5 / 43 + 2 * 5 / 43)


# ----------------------------------------------------------------------- observables


def test_observables_energy_per_particle_and_minimum_image_pair_distances(generator):
    system = make("ternary2d")
    x = random_configs(system, 3, generator)
    obs = system.observables(x)
    u = system.energy(x)
    assert torch.allclose(obs["energy_per_particle"], u * system.temperature / system.n_particles)
    counts = torch.bincount(system.species).tolist()          # 20, 11, 12 particles
    assert counts == [20, 11, 12]
    expected_sizes = {"AA": 20 * 19 // 2, "AB": 20 * 11, "AC": 20 * 12, "BB": 11 * 10 // 2, "BC": 11 * 12, "CC": 66}
    for name, size in expected_sizes.items():
        assert obs[f"pair_distance/{name}"].shape == (3, size)
    # the first AA pair is particles 0 and 1: check it against an explicit nearest image
    pos = x.reshape(3, -1, 2)
    L = system.box_edges[0]
    d = pos[:, 0] - pos[:, 1]
    d = d - L * torch.round(d / L)
    assert torch.allclose(obs["pair_distance/AA"][:, 0], d.norm(dim=-1))
    assert float(obs["pair_distance/AA"].max()) <= math.sqrt(2) * L / 2 + 1e-12


def test_kernel_choices_are_checked_and_auto_takes_the_compiled_loop_on_the_cpu():
    from boltzbench.contracts import ParameterError
    with pytest.raises(ParameterError) as info:
        make("ka3d", kernel="fortran")
    assert info.value.field == "kernel" and "'numba'" in info.value.message
    assert make("ka3d")._compiled_arrays() is not None          # auto on the CPU: compiled
    assert make("ka3d", kernel="torch")._compiled_arrays() is None
