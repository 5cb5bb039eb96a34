"""The liquids: published parameters, validation, diameters, starts, and the OpenMM twins."""

import math

import numpy as np
import pytest
import torch

from boltzbench import get_system
from boltzbench.contracts import ParameterError
from boltzbench.systems import openmm_twins
from boltzbench.systems.liquids import (SS_SIGMA_MAX, SS_SIGMA_MIN, lj_shift, nonadditive_sigma,
                                        sample_diameters)

LIQUIDS = {
    "ka3d": {"n_particles": 150},
    "ka2d": {"n_particles": 40},
    "ternary2d": {},
    "soft_spheres": {"n_particles": 70},
    "soft_spheres_2d": {"n_particles": 30, "dim": 2},
}


def make(key, **extra):
    name = "soft_spheres" if key.startswith("soft_spheres") else key
    return get_system(name, **{**LIQUIDS[key], **extra})


# ---------------------------------------------------------------------- parameters


def test_kob_andersen_pair_table_holds_the_published_parameters():
    system = get_system("ka3d")
    assert torch.bincount(system.species).tolist() == [205, 51]        # round(0.8·256) A
    assert system.box_edges[0] == pytest.approx((256 / 1.2) ** (1 / 3))
    table = system.pair_table()
    a, b = 0, 255                                                     # an A and a B particle
    for (i, j), (eps, sig) in {(a, a + 1): (1.0, 1.0), (a, b): (1.5, 0.8), (b - 1, b): (0.5, 0.88)}.items():
        assert float(table.params["c12"][i, j]) == pytest.approx(4 * eps * sig**12)
        assert float(table.params["c6"][i, j]) == pytest.approx(4 * eps * sig**6)
        assert float(table.rc2[i, j]) == pytest.approx((2.5 * sig) ** 2)
        assert float(table.params["shift"][i, j]) == pytest.approx(4 * eps * (2.5**-12 - 2.5**-6))
    assert float(table.rc2[a, a]) == 0.0                               # no self-interaction
    assert lj_shift() == pytest.approx(-0.016316891136, rel=1e-9)
    assert system.diameters[a] == 1.0 and system.diameters[b] == 0.88 and system.swappable


def test_two_dimensional_kob_andersen_composition():
    ka2d = get_system("ka2d", n_particles=100)
    assert torch.bincount(ka2d.species).tolist() == [65, 35] and ka2d.dim == 2


# ------------------------------------------------- ternary2d: Jung, Biroli & Berthier 2024

# "KA2-2D" of GerhardJung/StructDynGlass (struct_epot.cpp, struct_epot.h) = JBB() of
# TheDisorderedOrganization/ParticlesMC (src/models.jl), typed in here from those sources.
JBB_SIGMA = {"AA": 1.0, "BB": 0.88, "CC": 0.94, "AB": 0.8, "AC": 0.9, "BC": 0.8}
JBB_EPSILON = {"AA": 1.0, "BB": 0.5, "CC": 0.75, "AB": 1.5, "AC": 0.75, "BC": 1.5}
JBB_C0, JBB_C2, JBB_C4 = 0.04049023795, -0.00970155098, 0.00062012616


def jbb_pair(name, r):
    """φ(r) and φ'(r) of the published formula, plain floats: 4ε[(σ/r)¹² − (σ/r)⁶ + C0 +
    C2(r/σ)² + C4(r/σ)⁴] for r < 2.5σ, else 0."""
    s, e = JBB_SIGMA[name], JBB_EPSILON[name]
    if r >= 2.5 * s:
        return 0.0, 0.0
    x = r / s
    phi = 4 * e * (x**-12 - x**-6 + JBB_C0 + JBB_C2 * x**2 + JBB_C4 * x**4)
    dphi = 4 * e / s * (-12 * x**-13 + 6 * x**-7 + 2 * JBB_C2 * x + 4 * JBB_C4 * x**3)
    return phi, dphi


def numpy_jbb_energy_forces(positions, species, box):
    """U and F_i = −∂U/∂x_i by an explicit double loop over pairs i < j, minimum image, float64."""
    names = "ABC"
    n = len(positions)
    energy, forces = 0.0, np.zeros_like(positions)
    for i in range(n):
        for j in range(i + 1, n):
            d = positions[i] - positions[j]
            d -= box * np.round(d / box)
            r = float(np.sqrt(d @ d))
            phi, dphi = jbb_pair("".join(sorted(names[species[i]] + names[species[j]])), r)
            energy += phi
            forces[i] -= dphi * d / r
            forces[j] += dphi * d / r
    return energy, forces


def test_ternary2d_pair_tables_and_smoothing_are_the_published_ones():
    system = get_system("ternary2d")
    names = system.species_names
    assert names == ("A", "B", "C")
    for a in range(3):
        for b in range(3):
            pair = "".join(sorted(names[a] + names[b]))
            assert system.sigma[a][b] == JBB_SIGMA[pair] and system.epsilon[a][b] == JBB_EPSILON[pair]
    assert system.smoothing == (JBB_C0, JBB_C2, JBB_C4)
    # the per-particle table: one particle of each species (A 0-19, B 20-30, C 31-42)
    table, (sig, eps) = system.pair_table(), system.pair_matrices()
    for (i, j), pair in {(0, 1): "AA", (0, 20): "AB", (0, 31): "AC", (20, 21): "BB", (20, 31): "BC",
                         (31, 32): "CC"}.items():
        assert float(sig[i, j]) == float(sig[j, i]) == JBB_SIGMA[pair]
        assert float(eps[i, j]) == JBB_EPSILON[pair]
        assert float(table.rc2[i, j]) == pytest.approx((2.5 * JBB_SIGMA[pair]) ** 2, rel=1e-15)
    assert float(table.rc2[5, 5]) == 0.0


def test_ternary2d_composition_density_and_box_at_43_and_1290():
    small = get_system("ternary2d")
    assert small.n_particles == 43 and small.density == 1.1920748468939728
    assert torch.bincount(small.species).tolist() == [20, 11, 12]            # ParticlesMC pgmc_ka2d.jl
    assert small.box_edges == (math.sqrt(43 / 1.1920748468939728),) * 2       # ≈ 6.006
    large = get_system("ternary2d", n_particles=1290)
    assert torch.bincount(large.species).tolist() == [600, 330, 360]          # StructDynGlass Cnf-*
    assert large.box_edges[0] == pytest.approx(32.8962, abs=3e-4)             # 32.8960 at this ρ
    assert large.n_particles / large.box_edges[0] ** 2 == pytest.approx(1.1920748468939728, rel=1e-14)
    assert torch.bincount(get_system("ternary2d", n_particles=30).species).tolist() == [14, 8, 8]
    with pytest.raises(ParameterError, match="n_particles: must be >= 30"):
        get_system("ternary2d", n_particles=29)                                # L < 2·2.5


def test_species_counts_are_largest_remainders_within_one_of_every_quota():
    from boltzbench.systems.particles import species_counts
    for n in range(2, 400):          # two species: round(x_A·N), halves up, as before issue 14
        for comp in ((0.8, 0.2), (0.65, 0.35)):
            a = math.floor(comp[0] * n + 0.5)
            assert species_counts(n, comp) == [a, n - a]
    jbb = (600 / 1290, 330 / 1290, 360 / 1290)
    for n in range(3, 1300):
        counts = species_counts(n, jbb)
        assert sum(counts) == n
        assert all(math.floor(x * n + 1e-9) <= c <= math.ceil(x * n - 1e-9) for x, c in zip(jbb, counts))
    # quotas 10.5, 10.5, 10: rounding all but the last would give 11, 11, 9 (off its quota)
    assert species_counts(31, (10.5 / 31, 10.5 / 31, 10 / 31)) == [11, 10, 10]
    assert species_counts(44, jbb) == [21, 11, 12]     # (ParticlesMC's jbb25.jl chose 20:12:12)


@pytest.mark.parametrize("skin", [0.3, 0.0])
def test_ternary2d_energies_and_forces_equal_an_independent_numpy_double_loop(skin, generator):
    system = get_system("ternary2d", verlet_skin=skin)
    rough = system._initial_positions(2, generator).reshape(2, -1)           # lattice + noise
    relaxed = system.sample_initial(2, generator)
    box = np.array(system.box_edges)
    species = system.species.numpy()
    for x in torch.cat([rough, relaxed]).split(1):
        u, f = system.potential(x)
        expected_u, expected_f = numpy_jbb_energy_forces(x.numpy().reshape(-1, 2), species, box)
        assert float(u[0]) == pytest.approx(expected_u, rel=1e-10)
        assert np.abs(f[0].numpy() - expected_f).max() <= 1e-10 * np.abs(expected_f).max()
    assert float(u[0]) / 43 < -2.0                                              # a cohesive liquid


def test_ternary2d_potential_and_its_derivatives_vanish_at_the_cutoff():
    """φ, φ' and φ'' at r = 2.5σ_αβ are below 1e-9 in the pair's units (4ε, 4ε/σ, 4ε/σ²): the
    published constants solve φ = φ' = φ'' = 0 up to their 11 decimals. The shifted LJ of
    ka2d has φ' ≈ 0.039·4ε/σ there."""
    system = get_system("ternary2d")
    table = system.pair_table()
    for (i, j), pair in {(0, 1): "AA", (0, 20): "AB", (0, 31): "AC", (20, 21): "BB", (20, 31): "BC",
                         (31, 32): "CC"}.items():
        s, e = JBB_SIGMA[pair], JBB_EPSILON[pair]
        r = torch.tensor(2.5 * s, dtype=torch.float64, requires_grad=True)
        params = {k: (v[i, j] if isinstance(v, torch.Tensor) else v) for k, v in table.params.items()}
        phi, fr = table.pair(r * r, **params)
        (d1,) = torch.autograd.grad(phi, r, create_graph=True)
        (d2,) = torch.autograd.grad(d1, r)
        phi, fr, d1 = phi.detach(), fr.detach(), d1.detach()
        assert abs(float(phi)) < 1e-9 * 4 * e
        assert abs(float(d1)) < 1e-9 * 4 * e / s and abs(float(fr) * 2.5 * s) < 1e-9 * 4 * e / s
        assert abs(float(d2)) < 1e-9 * 4 * e / s**2
        # the cutoff itself: zero at and beyond 2.5σ, continuous from inside
        row = table.rows(torch.tensor([i]))
        inside, _ = row.evaluate(torch.full((1, 43), (2.5 * s - 1e-7) ** 2, dtype=torch.float64))
        at, _ = row.evaluate(torch.full((1, 43), (2.5 * s) ** 2, dtype=torch.float64))
        assert abs(float(inside[0, j])) < 1e-9 * 4 * e and float(at[0, j]) == 0.0


@pytest.mark.parametrize("name, params, field, words", [
    ("ka3d", {"n_particles": 149}, "n_particles", ["150", "149"]),
    ("ka3d", {"n_particles": 200, "density": 2.0}, "n_particles", [">= 250", "density 2.0"]),
    ("ka2d", {"n_particles": 29}, "n_particles", ["30", "2D"]),
    ("ka3d", {"density": 0.0}, "density", ["> 0"]),
    ("ka3d", {"temperature": -0.5}, "temperature", ["> 0"]),
    ("ka3d", {"composition": [0.7, 0.2]}, "composition", ["summing to 1"]),
    ("ternary2d", {"composition": [0.5, 0.5]}, "composition", ["3 fractions"]),
    ("ternary2d", {"n_particles": 30, "composition": [0.9, 0.09, 0.01]}, "n_particles", ["[27, 3, 0]"]),
    ("soft_spheres", {"n_particles": 65}, "n_particles", ["66"]),
    ("soft_spheres", {"dim": 1}, "dim", ["2 or 3"]),
    ("ka3d", {"precision": "half"}, "precision", ["float64"]),
    ("ka3d", {"device": "gpu"}, "device", ["cpu"]),
    ("ka3d", {"box": 6.0}, "box", ["unknown parameter", "n_particles"]),
])
def test_bad_parameters_are_rejected_with_the_field_and_the_valid_range(name, params, field, words):
    with pytest.raises(ParameterError) as info:
        get_system(name, **params)
    assert info.value.field == field
    for word in words:
        assert word in str(info.value)


def test_the_smallest_allowed_box_is_accepted_with_its_openmm_twin(generator):
    system = get_system("ka3d", n_particles=150)                  # box edge 5.0 = 2 × 2.5
    assert system.box_edges[0] == pytest.approx(5.0)
    twin = system.openmm_twin()
    x = system._initial_positions(1, generator).reshape(1, -1)
    u_mm, _ = openmm_twins.openmm_energy_forces(system, x, openmm_twins.context(twin), twin)
    assert float(system.energy(x)) == pytest.approx(float(u_mm[0]), rel=1e-9)


# ---------------------------------------------------------------------- soft spheres


def test_polydisperse_diameters_follow_p_sigma_proportional_to_sigma_minus_3():
    assert SS_SIGMA_MIN / SS_SIGMA_MAX == pytest.approx(0.449)
    # the mean of σ⁻³ on [a, b] is 2ab/(a + b): 1 by construction
    assert 2 * SS_SIGMA_MIN * SS_SIGMA_MAX / (SS_SIGMA_MIN + SS_SIGMA_MAX) == pytest.approx(1.0)
    d = sample_diameters(200_000, seed=3).numpy()
    assert d.min() >= SS_SIGMA_MIN and d.max() <= SS_SIGMA_MAX
    assert abs(d.mean() - 1.0) < 4 * d.std() / math.sqrt(d.size)
    # CDF F(σ) = (σ_min⁻² − σ⁻²)/(σ_min⁻² − σ_max⁻²) at the median of a uniform-in-σ guess
    for s in (0.8, 1.0, 1.3):
        cdf = (SS_SIGMA_MIN**-2 - s**-2) / (SS_SIGMA_MIN**-2 - SS_SIGMA_MAX**-2)
        assert abs(np.mean(d <= s) - cdf) < 0.005


def test_diameters_are_drawn_once_per_instance_from_the_seed():
    a, b = get_system("soft_spheres"), get_system("soft_spheres")
    assert torch.equal(a.diameters, b.diameters) and a.diameters is a.diameters
    c = get_system("soft_spheres", diameter_seed=1)
    assert not torch.equal(a.diameters, c.diameters)
    assert a.swappable and len(torch.unique(a.diameters)) == a.n_particles


def test_non_additive_pair_diameters():
    d = torch.tensor([0.8, 1.5], dtype=torch.float64)
    sig = nonadditive_sigma(d)
    assert float(sig[0, 1]) == pytest.approx(0.5 * 2.3 * (1 - 0.2 * 0.7))
    assert float(sig[0, 0]) == 0.8 and float(sig[1, 1]) == 1.5


def test_soft_sphere_observables_scale_distances_by_pair_diameters(generator):
    system = make("soft_spheres_2d")
    x = system._initial_positions(2, generator).reshape(2, -1)
    obs = system.observables(x)
    n_pairs = 30 * 29 // 2
    assert obs["pair_distance/all"].shape == obs["pair_distance/scaled"].shape == (2, n_pairs)
    iu, ju = torch.triu_indices(30, 30, 1)
    sig = nonadditive_sigma(system.diameters)[iu, ju]
    assert torch.allclose(obs["pair_distance/scaled"] * sig, obs["pair_distance/all"])


# --------------------------------------------------------------------------- starts


@pytest.mark.parametrize("key", sorted(LIQUIDS))
def test_initial_configurations_are_relaxed_finite_and_charged_to_setup(key):
    system = make(key)
    x = system.sample_initial(3, torch.Generator().manual_seed(5))
    assert x.shape == (3, system.dof) and x.dtype == torch.float64
    per_particle = system.observables(x)["energy_per_particle"]
    assert torch.isfinite(per_particle).all()
    if "soft" in key:
        assert (per_particle < 1.5).all()            # repulsive only: small once relaxed
    else:
        assert (per_particle < -1.0).all()           # LJ liquids: cohesive once relaxed
    cost = system.ledger.as_dict()
    assert cost["setup"]["force_evals"] > 0 and cost["energy_evals"] == cost["force_evals"] == 0
    again = make(key).sample_initial(3, torch.Generator().manual_seed(5))
    assert torch.equal(x, again)


def test_a_missing_reference_is_a_lookup_error_that_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_REFERENCES", str(tmp_path))
    with pytest.raises(LookupError, match="build it with: boltzbench reference build ternary2d --param temperature=0.9"):
        get_system("ternary2d", temperature=0.9).reference()


# ---------------------------------------------------------------------- OpenMM twins


@pytest.mark.parametrize("key", sorted(LIQUIDS))
def test_openmm_twin_energies_and_forces_match_the_torch_kernels(key, generator):
    system = make(key)
    twin = system.openmm_twin()
    assert twin.kj_per_mol_per_kt == system.temperature
    assert twin.temperature_kelvin == pytest.approx(system.temperature / 0.00831446261815324)
    assert twin.box_nm[: system.dim] == pytest.approx(system.box_edges) and len(twin.box_nm) == 3
    context = openmm_twins.context(twin, "Reference")
    rough = system._initial_positions(2, generator).reshape(2, -1)      # high energies
    relaxed = system.sample_initial(2, generator)
    for x in (rough, relaxed):
        u, f = system.energy_and_forces(x)
        u_mm, f_mm = openmm_twins.openmm_energy_forces(system, x, context, twin)
        assert np.allclose(u.numpy(), u_mm, rtol=1e-6, atol=0)
        assert np.abs(f.numpy() - f_mm).max() <= 1e-6 * np.abs(f_mm).max()


def test_ternary2d_openmm_twin_at_the_large_system_n_1290(generator):
    """The smoothed-cutoff expression of the twin against the torch kernel at the paper's
    large N (box 32.896), float64 on OpenMM's Reference platform."""
    system = get_system("ternary2d", n_particles=1290)
    twin = system.openmm_twin()
    x = system._initial_positions(1, generator).reshape(1, -1)
    u, f = system.energy_and_forces(x)
    u_mm, f_mm = openmm_twins.openmm_energy_forces(system, x, openmm_twins.context(twin, "Reference"), twin)
    assert float(u[0]) == pytest.approx(float(u_mm[0]), rel=1e-9)
    assert np.abs(f.numpy() - f_mm).max() <= 1e-9 * np.abs(f_mm).max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_ternary2d_cuda_kernels_and_local_energies_agree_with_cpu(precision, generator):
    cpu = get_system("ternary2d")
    x = cpu.sample_initial(4, generator)
    u, f = cpu.energy_and_forces(x)
    cuda = get_system("ternary2d", device="cuda", precision=precision)
    uc, fc = cuda.energy_and_forces(x.cuda().to(cuda.dtype))
    tol = 1e-10 if precision == "float64" else 1e-4
    assert uc.is_cuda and uc.dtype == cuda.dtype
    assert torch.allclose(uc.double().cpu(), u, rtol=tol) and (fc.double().cpu() - f).abs().max() <= tol * f.abs().max()
    i = torch.tensor([0, 5, 20, 31])
    j = torch.tensor([31, 40, 35, 1])
    du = cuda.energy_change_swap(x.cuda().to(cuda.dtype), i.cuda(), j.cuda()).double().cpu()
    assert torch.allclose(du, cpu.energy_change_swap(x, i, j), rtol=tol, atol=tol * float(u.abs().max()))
