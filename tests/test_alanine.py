"""Alanine dipeptide through OpenMM: energies and forces against independent OpenMM
evaluations and finite differences, dihedrals against geometry and OpenMM, the minimized
start, cost charging, and bad input."""

import math

import numpy as np
import openmm
import pytest
import torch

from boltzbench import get_system
from boltzbench.contracts import ParameterError
from boltzbench.systems.alanine import PHI_SPLIT, _testsystem, dihedral

R_KJ_PER_MOL_K = 1.380649e-23 * 6.02214076e23 / 1000  # k_B·N_A, exact in the 2019 SI, kJ/(mol·K)


@pytest.fixture(scope="module")
def alanine():
    return get_system("alanine_dipeptide")


@pytest.fixture(scope="module")
def perturbed(alanine):
    """Eight configurations around the minimum, 0.01 nm Gaussian noise per coordinate."""
    g = torch.Generator().manual_seed(7)
    return alanine.minimized_positions + 0.01 * torch.randn(8, 66, generator=g, dtype=torch.float64)


def fresh_reference_evaluation(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """U (kJ/mol) and forces (kJ/mol/nm) from a new Reference-platform Context of the
    openmmtools test system, independent of the system's own Context."""
    context = openmm.Context(_testsystem().system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for row in x.numpy():
        context.setPositions(row.reshape(22, 3) * openmm.unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(
            openmm.unit.kilojoule_per_mole / openmm.unit.nanometer).reshape(-1))
    return np.array(energies), np.array(forces)


@pytest.mark.parametrize("platform,rtol,atol", [("Reference", 1e-12, 1e-10), ("CPU", 1e-5, 2e-3)])
def test_energies_and_forces_equal_an_independent_openmm_evaluation_in_kt(perturbed, platform, rtol, atol):
    temperature = 350.0
    system = get_system("alanine_dipeptide", temperature=temperature, platform=platform)
    kt = R_KJ_PER_MOL_K * temperature
    u_ref, f_ref = fresh_reference_evaluation(perturbed)
    u, f = system.energy_and_forces(perturbed)
    assert u.dtype == f.dtype == torch.float64
    assert u.shape == (8,) and f.shape == (8, 66)
    np.testing.assert_allclose(u.numpy(), u_ref / kt, rtol=rtol, atol=atol)
    np.testing.assert_allclose(f.numpy(), f_ref / kt, rtol=rtol, atol=atol)
    np.testing.assert_allclose(system.energy(perturbed).numpy(), u_ref / kt, rtol=rtol, atol=atol)
    # the configurations are far enough apart that a mix-up of rows would show
    assert np.ptp(u_ref / kt) > 10


def test_forces_are_minus_the_gradient_by_central_differences(alanine, perturbed):
    x = perturbed[:2]
    _, f = alanine.energy_and_forces(x)
    h = 1e-5
    coords = [0, 13, 20, 33, 47, 65]
    for j in coords:
        step = torch.zeros_like(x)
        step[:, j] = h
        fd = -(alanine.energy(x + step) - alanine.energy(x - step)) / (2 * h)
        np.testing.assert_allclose(f[:, j].numpy(), fd.numpy(), rtol=1e-6, atol=1e-4)
    assert f[:, coords].abs().max() > 10  # not a trivially small force


def test_each_configuration_is_charged_and_one_context_is_reused(perturbed):
    system = get_system("alanine_dipeptide")
    system.energy(perturbed)
    context = system.context
    system.energy_and_forces(perturbed[:3])
    system.energy(perturbed[:1])
    assert system.context is context
    cost = system.ledger.as_dict()
    assert (cost["energy_evals"], cost["force_evals"]) == (9, 3)


def _points_with_dihedral(theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """p0 on +x, p1 at the origin, p2 on +z, p3 at azimuth θ above p2: looking from p1 to
    p2 (along +z), turning p0 by θ towards +y is clockwise, so the IUPAC dihedral is θ."""
    n = theta.shape[0]
    p0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(n, 3)
    p1 = torch.zeros(n, 3, dtype=torch.float64)
    p2 = torch.tensor([0.0, 0.0, 1.5], dtype=torch.float64).expand(n, 3)
    p3 = torch.stack([0.7 * torch.cos(theta), 0.7 * torch.sin(theta), torch.full_like(theta, 1.5 + 0.4)], dim=1)
    return p0, p1, p2, p3


def test_dihedral_of_constructed_points_has_iupac_sign_and_handles_the_seam():
    degrees = torch.tensor([-179.99, -120.0, -60.0, -1e-4, 0.0, 1e-4, 45.0, 90.0, 150.0, 179.99], dtype=torch.float64)
    theta = torch.deg2rad(degrees)
    points = _points_with_dihedral(theta)
    torch.testing.assert_close(dihedral(*points), theta, rtol=0, atol=1e-12)
    # a rigid proper rotation and a translation keep it; a mirror image flips its sign
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.det(q))
    shift = torch.randn(3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(dihedral(*(p @ q.T + shift for p in points)), theta, rtol=0, atol=1e-12)
    mirror = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(dihedral(*(p * mirror for p in points)), -theta, rtol=0, atol=1e-12)
    # trans (±π) stays at the seam, never jumps to 0
    assert abs(float(dihedral(*_points_with_dihedral(torch.tensor([math.pi], dtype=torch.float64)))[0])) \
        == pytest.approx(math.pi, abs=1e-12)


def test_phi_and_psi_equal_openmm_torsion_angles(alanine, perturbed):
    """OpenMM's CustomTorsionForce with energy = θ returns its own torsion angle (kJ/mol = rad)."""
    g = torch.Generator().manual_seed(11)
    x = torch.cat([perturbed, alanine.minimized_positions + 0.1 * torch.randn(24, 66, generator=g, dtype=torch.float64)])
    obs = alanine.observables(x)
    atoms = alanine._dihedral_atoms
    for name in ("phi", "psi"):
        probe = openmm.System()
        for _ in range(22):
            probe.addParticle(1.0)
        torsion = openmm.CustomTorsionForce("theta")
        torsion.addTorsion(*atoms[name], [])
        probe.addForce(torsion)
        context = openmm.Context(probe, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        angles = []
        for row in x.numpy():
            context.setPositions(row.reshape(22, 3))
            angles.append(context.getState(getEnergy=True).getPotentialEnergy()._value)
        np.testing.assert_allclose(obs[name].numpy(), angles, atol=1e-9)
    assert np.ptp(obs["phi"].numpy()) > 0.5  # the probe configurations differ in φ


def test_dihedral_atoms_are_the_backbone_atoms(alanine):
    topology = _testsystem().topology
    atoms = list(topology.atoms())
    names = {k: [(atoms[i].residue.name, atoms[i].name) for i in v] for k, v in alanine._dihedral_atoms.items()}
    assert names == {"phi": [("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C")],
                     "psi": [("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N")]}


def test_minimized_start_is_the_c5_minimum_found_by_openmm_too():
    system = get_system("alanine_dipeptide")
    x = system.minimized_positions
    cost = system.ledger.as_dict()
    assert cost["total_evals"] == cost["setup"]["force_evals"] > 0  # charged to setup only
    u, f = system.energy_and_forces(x[None])
    start = torch.as_tensor(np.asarray(_testsystem().positions._value).reshape(1, -1))
    assert float(u[0]) < float(system.energy(start)[0]) - 5
    assert float(f.abs().max()) < 0.5  # kT/nm
    phi, psi = (math.degrees(float(v[0])) for v in system.observables(x[None]).values())
    # the extended C5 basin (φ ≈ −150°, ψ ≈ 160°), in reach of tleap's all-trans start
    assert -165 < phi < -135 and 145 < psi < 175
    # OpenMM's own minimizer from the same start reaches the same structure
    context = openmm.Context(_testsystem().system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(_testsystem().positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
    state = context.getState(getEnergy=True, getPositions=True)
    assert state.getPotentialEnergy()._value / system.kt == pytest.approx(float(u[0]), abs=1e-3)
    x_openmm = torch.as_tensor(state.getPositions(asNumpy=True)._value.reshape(1, -1))
    for name, value in system.observables(x_openmm).items():
        assert math.degrees(float(value[0])) == pytest.approx({"phi": phi, "psi": psi}[name], abs=1.0)


def test_sample_initial_is_the_minimum_plus_picometre_noise_and_deterministic(alanine):
    x = alanine.sample_initial(200, torch.Generator().manual_seed(0))
    assert x.shape == (200, 66) and x.dtype == torch.float64
    assert (x - alanine.minimized_positions).std().item() == pytest.approx(1e-3, rel=0.05)
    assert torch.equal(x, alanine.sample_initial(200, torch.Generator().manual_seed(0)))
    assert not torch.equal(x, alanine.sample_initial(200, torch.Generator().manual_seed(1)))


def test_sample_states_starts_alternate_between_the_c5_and_c7ax_minima(alanine):
    """The state-1 minimum is a true minimum (small force) in the C7ax region (φ ≈ 55–85°,
    ψ ≈ −75 to −55°), a few k_B·T above C5 (Amber ff96, vacuum: about 2.7)."""
    minima = alanine.state_minima
    assert alanine.state_of(minima).tolist() == [0, 1]
    u, f = alanine.energy_and_forces(minima)
    assert float(f.abs().max()) < 0.5
    assert 1.0 < float(u[1] - u[0]) < 5.0
    phi, psi = (math.degrees(float(v[1])) for v in alanine.observables(minima).values())
    assert 55 < phi < 85 and -75 < psi < -55
    x = alanine.sample_states(6, torch.Generator().manual_seed(0))
    assert alanine.state_of(x).tolist() == [0, 1, 0, 1, 0, 1]
    assert (x - minima[torch.arange(6) % 2]).abs().max() < 1e-2


def test_states_split_phi_at_zero_and_at_phi_split(alanine):
    x = alanine.minimized_positions[None]
    mirror = (x.reshape(22, 3) * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)).reshape(1, -1)
    assert alanine.state_of(x).tolist() == [0]  # φ ≈ −148°
    assert alanine.state_of(mirror).tolist() == [0]  # φ ≈ +148° > PHI_SPLIT: the C5 tail side
    g = torch.Generator().manual_seed(5)
    many = alanine.minimized_positions + 0.15 * torch.randn(400, 66, generator=g, dtype=torch.float64)
    phi = alanine.observables(many)["phi"]
    expected = ((phi > 0) & (phi < PHI_SPLIT)).long()
    assert torch.equal(alanine.state_of(many), expected)
    assert 0 < int(expected.sum()) < 400  # both labels occur in the probe


def test_openmm_twin_has_the_system_units(alanine, perturbed):
    twin = alanine.openmm_twin()
    assert twin.nm_per_unit == 1.0 and twin.box_nm is None
    assert twin.temperature_kelvin == 300.0
    assert twin.kj_per_mol_per_kt == pytest.approx(R_KJ_PER_MOL_K * 300.0, rel=1e-9)
    assert twin.system.getNumParticles() == 22 and twin.system.getNumConstraints() == 0
    assert not any(isinstance(f, openmm.CMMotionRemover) for f in twin.system.getForces())
    context = openmm.Context(twin.system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(perturbed[0].numpy().reshape(22, 3))
    u = context.getState(getEnergy=True).getPotentialEnergy()._value / twin.kj_per_mol_per_kt
    assert u == pytest.approx(float(alanine.energy(perturbed[:1])[0]), rel=1e-12)
    assert alanine.openmm_twin().system is not twin.system  # a fresh copy each time


def test_bad_parameters_name_the_field_and_the_valid_choices():
    with pytest.raises(ParameterError, match="temperature: must be > 0"):
        get_system("alanine_dipeptide", temperature=0.0)
    with pytest.raises(ParameterError, match="platform: must be one of 'Reference', 'CPU', got 'CUDA'"):
        get_system("alanine_dipeptide", platform="CUDA")


def test_shipped_reference_has_the_known_conformations(alanine, monkeypatch, tmp_path):
    """The shipped PT reference at 300 K: mostly the C5/C7eq/αR basin (φ < 0), a minor
    αL/C7ax population (ΔF of a few kT, as in vacuum Amber force fields), and potential
    energy fluctuations near the harmonic value Var(u) = n/2 = 30 for the n = 66 − 6
    internal degrees of freedom (within a factor 2; the stored value is 29.2)."""
    monkeypatch.setenv("BOLTZBENCH_REFERENCES", str(tmp_path))
    ref = alanine.reference()
    phi = ref.observables["phi"]
    assert np.mean(phi < 0) > 0.9
    assert 2.0 < ref.exact["delta_f"] < 8.0
    assert 15.0 < np.var(ref.energies) < 60.0
    assert ref.provenance["generator"]["sampler"] == "pt"
