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


def test_two_dimensional_mixtures_compositions_and_ternary_parameters():
    ka2d = get_system("ka2d", n_particles=100)
    assert torch.bincount(ka2d.species).tolist() == [65, 35] and ka2d.dim == 2
    ternary = get_system("ternary2d")
    assert ternary.n_particles == 43 and torch.bincount(ternary.species).tolist() == [24, 13, 6]
    assert ternary.box_edges[0] == pytest.approx(math.sqrt(43 / 1.2))          # ≈ 5.99
    sig, eps = ternary.pair_matrices()
    a, b, c = 0, 24, 42
    expected = {(a, b): (0.8, 1.5), (a, c): (0.9, 1.25), (b, c): (0.84, 1.0), (c - 1, c): (0.94, 0.75)}
    for (i, j), (s, e) in expected.items():
        assert float(sig[i, j]) == s and float(eps[i, j]) == e and float(sig[j, i]) == s


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
