"""DW-4 and LJ-13: the published conventions, known minima, the restraint, the OpenMM twins."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from boltzbench import get_system
from boltzbench.contracts import ParameterError
from boltzbench.systems import openmm_twins


def dw_pair(d, a=0.0, b=-4.0, c=0.9, d0=4.0):
    return a * (d - d0) + b * (d - d0) ** 2 + c * (d - d0) ** 4


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_dw4_energy_is_the_sum_over_unordered_pairs_divided_by_kt(temperature):
    system = get_system("dw4", temperature=temperature)
    s = 3.1                                        # a square: 4 sides s, 2 diagonals s·√2
    x = torch.tensor([[0, 0, s, 0, s, s, 0, s]], dtype=torch.float64)
    expected = (4 * dw_pair(s) + 2 * dw_pair(s * math.sqrt(2))) / temperature
    assert float(system.energy(x)) == pytest.approx(expected, rel=1e-12)
    assert system.n_particles == 4 and system.dim == 2 and system.box is None and not system.swappable


def test_dw4_pair_minima_sit_at_d0_plus_minus_sqrt_of_minus_b_over_2c():
    table = get_system("dw4").pair_table()
    minima = torch.tensor([4.0 - math.sqrt(4.0 / 1.8), 4.0 + math.sqrt(4.0 / 1.8)], dtype=torch.float64)
    phi, fr = table.pair(minima**2, **table.params)
    assert torch.allclose(fr, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(phi, torch.full((2,), -4.0**2 / (4 * 0.9), dtype=torch.float64))   # −b²/(4c)
    _, fr_top = table.pair(torch.tensor([16.0], dtype=torch.float64), **table.params)
    assert float(fr_top) == 0.0                    # the barrier top at d0


def test_lj13_pair_term_reaches_the_known_global_minimum_of_the_icosahedron():
    """The 13-atom icosahedron is the LJ-13 global minimum, E = −44.326801 ε (Wales & Doye,
    J. Phys. Chem. A 101, 5111 (1997), Cambridge Cluster Database). Only its radius is free."""
    system = get_system("lj13", oscillator_scale=0.0)
    phi = (1 + math.sqrt(5)) / 2
    shell = np.array([(0, s1, s2 * phi) for s1 in (-1, 1) for s2 in (-1, 1)])
    shell = np.concatenate([np.roll(shell, k, axis=1) for k in range(3)])
    shell /= np.linalg.norm(shell[0])

    def energy(radius):
        x = np.concatenate([[[0, 0, 0]], radius * shell]).reshape(1, -1)
        return float(system.energy(torch.tensor(x, dtype=torch.float64)))

    best = scipy.optimize.minimize_scalar(energy, bounds=(0.8, 1.2), method="bounded", options={"xatol": 1e-10})
    assert best.fun == pytest.approx(-44.326801, abs=1e-5)


def test_lj13_restraint_is_half_k_times_the_spread_about_the_centre(generator):
    k = 0.7
    system = get_system("lj13", oscillator_scale=k, temperature=1.5)
    bare = get_system("lj13", oscillator_scale=0.0, temperature=1.5)
    x = system.sample_initial(3, generator)
    pos = x.reshape(3, 13, 3)
    spread = ((pos - pos.mean(1, keepdim=True)) ** 2).sum((1, 2))
    assert torch.allclose(system.energy(x) - bare.energy(x), 0.5 * k * spread / 1.5, rtol=1e-12)
    u, f = system.energy_and_forces(x)
    assert torch.allclose(f.reshape(3, 13, 3).sum(1), torch.zeros(3, 3, dtype=x.dtype), atol=1e-9)
    moved = (pos + torch.tensor([0.3, -1.0, 2.0], dtype=x.dtype)).reshape(3, -1)
    assert torch.allclose(system.energy(moved), u, rtol=1e-12)    # translation invariant


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_cluster_openmm_twins_match_the_torch_kernels(name, generator):
    system = get_system(name, temperature=1.3)
    twin = system.openmm_twin()
    assert twin.box_nm is None and twin.kj_per_mol_per_kt == 1.3
    context = openmm_twins.context(twin, "Reference")
    rough = system._initial_positions(3, generator).reshape(3, -1)
    for x in (rough, system.sample_initial(3, generator)):
        u, f = system.energy_and_forces(x)
        u_mm, f_mm = openmm_twins.openmm_energy_forces(system, x, context, twin)
        assert np.allclose(u.numpy(), u_mm, rtol=1e-6, atol=1e-9)
        assert np.abs(f.numpy() - f_mm).max() <= 1e-6 * np.abs(f_mm).max()


def test_cluster_starts_are_centred_relaxed_and_reproducible():
    for name in ("dw4", "lj13"):
        system = get_system(name)
        x = system.sample_initial(4, torch.Generator().manual_seed(2))
        per_particle = system.observables(x)["energy_per_particle"]
        assert torch.isfinite(per_particle).all() and (per_particle < 0).all()
        centre = x.reshape(4, system.n_particles, system.dim).mean(1)
        assert float(centre.abs().max()) < 0.5
        assert torch.equal(x, get_system(name).sample_initial(4, torch.Generator().manual_seed(2)))
        assert system.observables(x)["pair_distance/all"].shape == (4, system.n_particles * (system.n_particles - 1) // 2)


@pytest.mark.parametrize("name, params, field", [
    ("dw4", {"c": 0.0}, "c"), ("dw4", {"d0": -1.0}, "d0"), ("dw4", {"temperature": 0.0}, "temperature"),
    ("lj13", {"rm": 0.0}, "rm"), ("lj13", {"epsilon": -1.0}, "epsilon"),
    ("lj13", {"oscillator_scale": -0.1}, "oscillator_scale"), ("lj13", {"n_particles": 12}, "n_particles"),
])
def test_bad_cluster_parameters_are_rejected(name, params, field):
    with pytest.raises(ParameterError) as info:
        get_system(name, **params)
    assert info.value.field == field
