"""The OpenMM backend of Langevin MD: exact answers of a harmonic twin (with non-trivial unit
maps), determinism, cost charging, the kinetic temperature of alanine dipeptide, and (slow)
the mean energy of alanine dipeptide against the torch BAOAB backend.

Error bars: chains are independent, so per-chain time averages are i.i.d. and their
standard error (std over chains / √C) is honest whatever the autocorrelation in a chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import openmm
import pytest
import torch

from boltzbench import Budget, get_system
from boltzbench.contracts import OpenMMTwin, System, param
from boltzbench.samplers.md import LangevinMD
from boltzbench.samplers.openmm_md import run_openmm_langevin, thermal_dof

R_KJ_PER_MOL_K = 1.380649e-23 * 6.02214076e23 / 1000  # k_B·N_A, exact in the 2019 SI

SPRINGS = (500.0, 2000.0, 5000.0, 20000.0)  # kJ/mol/nm²
MASSES = (1.0, 12.0, 4.0, 16.0)  # amu


@dataclass
class TetheredParticles(System):
    """Four particles in 3D, each tied to the origin by its own spring: U = Σ k_i/2·|r_i|².

    Deliberately awkward units so that every conversion is exercised: one length unit is
    ``NM_PER_UNIT`` nm and energies are in k_B·T at ``temperature`` kelvin. Exactly,
    ⟨|r_i|²⟩ = 3·k_B·T/k_i (nm²) and ⟨u⟩ = 3·4/2 = 6.
    """

    name: ClassVar[str] = "tethered_particles_test"
    description: ClassVar[str] = "test system: particles on springs, with an OpenMM twin"
    NM_PER_UNIT: ClassVar[float] = 0.5

    temperature: float = param(250.0, "kelvin")

    @property
    def dof(self) -> int:
        return 12

    @property
    def n_particles(self) -> int:
        return 4

    @property
    def kt(self) -> float:
        return R_KJ_PER_MOL_K * self.temperature

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        r2 = ((x * self.NM_PER_UNIT).reshape(-1, 4, 3) ** 2).sum(-1)
        return 0.5 * (torch.tensor(SPRINGS, dtype=x.dtype) * r2).sum(-1) / self.kt

    def openmm_twin(self) -> OpenMMTwin:
        system = openmm.System()
        force = openmm.CustomExternalForce("0.5*k*(x^2 + y^2 + z^2)")
        force.addPerParticleParameter("k")
        for i, (k, m) in enumerate(zip(SPRINGS, MASSES)):
            system.addParticle(m)
            force.addParticle(i, [k])
        system.addForce(force)
        return OpenMMTwin(system, nm_per_unit=self.NM_PER_UNIT, kj_per_mol_per_kt=self.kt,
                          temperature_kelvin=self.temperature)

    def sample_initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return 0.01 * torch.randn(n, 12, generator=generator, dtype=self.dtype)

    def reference(self):
        raise LookupError("test system")


def run(system, sampler, budget, seed=0):
    return list(run_openmm_langevin(sampler, system, budget, torch.Generator().manual_seed(seed)))


def per_chain_averages(values: np.ndarray, burn: float = 0.2) -> np.ndarray:
    return values[int(burn * values.shape[0]):].mean(axis=0)


def assert_within(estimates: np.ndarray, exact: float, z: float = 4.5, what: str = "") -> float:
    mean, se = estimates.mean(), estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(mean - exact) < z * se, f"{what}: {mean:.5f} ± {se:.5f}, exact {exact:.5f}"
    return se


def test_harmonic_twin_samples_the_exact_distribution_in_the_systems_units():
    """LangevinMiddle, like BAOAB, samples a harmonic potential's configurations exactly."""
    system = TetheredParticles()
    sampler = LangevinMD(dt=0.01, friction=10.0, n_chains=16, thin=5)
    snapshot = run(system, sampler, Budget(max_evals=16 * 20_000, n_snapshots=1))[-1]
    x, u = snapshot.positions, snapshot.energies
    # the energies are the system's own function of the returned positions
    torch.testing.assert_close(u.reshape(-1)[:500], system.energy(x.reshape(-1, 12)[:500]), rtol=1e-9, atol=1e-9)
    r2_nm = ((x * system.NM_PER_UNIT).reshape(*x.shape[:2], 4, 3) ** 2).sum(-1).numpy()  # (T, C, 4)
    for i, k in enumerate(SPRINGS):
        exact = 3 * system.kt / k
        se = assert_within(per_chain_averages(r2_nm[..., i]) / exact, 1.0, what=f"<r²> of particle {i}")
        assert se < 0.02  # power: a 10 % error in kT or in a unit would show
    assert_within(per_chain_averages(u.numpy()), 6.0, what="<u>")
    assert snapshot.diagnostics["kinetic_temperature"] == pytest.approx(1.0, abs=0.01)
    assert snapshot.diagnostics["platform"] == "Reference"


def test_same_seed_same_trajectory_different_seed_different():
    def positions(seed):
        system = get_system("alanine_dipeptide")
        sampler = LangevinMD(dt=0.001, friction=1.0, n_chains=3, thin=5)
        system.sample_initial(1, torch.Generator())  # minimizes the start, charged to setup
        budget = Budget(max_evals=system.ledger.total_evals + 3 * 5 * 20, n_snapshots=2)
        return run(system, sampler, budget, seed)[-1].positions

    first = positions(3)
    assert first.shape == (20, 3, 66) and first.dtype == torch.float64
    assert torch.equal(first, positions(3))
    assert not torch.equal(first, positions(4))


def test_each_block_charges_chains_times_thin_force_evaluations_and_the_budget_stops_it():
    system = TetheredParticles()
    n, thin = 6, 7
    budget = Budget(max_evals=n * thin * 40 + 1, n_snapshots=4)
    snapshots = run(system, LangevinMD(dt=0.01, n_chains=n, thin=thin), budget)
    cost = system.ledger.as_dict()
    steps = snapshots[-1].diagnostics["steps"]
    assert steps % thin == 0
    assert cost["force_evals"] == n * (steps + 1) and cost["energy_evals"] == 0
    assert budget.max_evals <= cost["total_evals"] < budget.max_evals + n * thin
    assert len(snapshots) == 4
    assert snapshots[-1].positions.shape == (steps // thin, n, 12)
    assert [s.cost["total_evals"] for s in snapshots] == sorted(s.cost["total_evals"] for s in snapshots)
    assert snapshots[-1].log_weights is None


def test_alanine_kinetic_temperature_is_the_target():
    """Velocities of a Langevin chain are Maxwell–Boltzmann at the target whatever the
    potential: ⟨K⟩ = (66/2)·k_B·T. The start is thermal (minimum plus thermal velocities)."""
    system = get_system("alanine_dipeptide", temperature=400.0)
    assert thermal_dof(system.openmm_twin().system) == 66
    # strong friction: the start's kinetic energy that flows into the potential is restored
    # within ≈ 1/(2γ) = 0.01 ps, so the transient biases the 2 ps average by < 0.3 %
    sampler = LangevinMD(dt=0.0005, friction=50.0, n_chains=8, thin=10)
    snapshot = run(system, sampler, Budget(max_evals=8 * 4000 + 1000, n_snapshots=1))[-1]
    assert snapshot.diagnostics["kinetic_temperature"] == pytest.approx(1.0, abs=0.02)
    # and the potential energy rose from the minimum towards equipartition (≈ 33 kT above it)
    u_min = float(system.energy(system.minimized_positions[None])[0])
    assert 20 < float(snapshot.energies[-50:].mean()) - u_min < 45


@pytest.mark.slow
def test_alanine_mean_energy_agrees_with_the_torch_baoab_backend():
    """Two integrators, two code paths (OpenMM's LangevinMiddle on the twin, 60 ps per chain;
    torch BAOAB on energy_and_forces, reduced units with unit masses), one density: ⟨u⟩ must
    agree within the combined error bars. Both runs cross between the C5 and C7eq basins
    many times (measured: P(φ > −2 rad) ≈ 0.45 in both), so the chains are equilibrated."""
    def mean_energy(backend_run, sampler, steps):
        system = get_system("alanine_dipeptide")
        budget = Budget(max_evals=sampler.n_chains * steps, n_snapshots=1)
        snapshot = list(backend_run(sampler, system, budget, torch.Generator().manual_seed(1)))[-1]
        chains = per_chain_averages(snapshot.energies.numpy(), burn=0.25)
        return chains.mean(), chains.std(ddof=1) / np.sqrt(len(chains))

    openmm_mean, openmm_se = mean_energy(run_openmm_langevin, LangevinMD(dt=0.001, friction=1.0, n_chains=16, thin=20), 60_000)
    torch_sampler = LangevinMD(dt=0.001, friction=5.0, n_chains=16, thin=20)
    torch_mean, torch_se = mean_energy(lambda s, *a: LangevinMD.run(s, *a), torch_sampler, 12_000)
    se = np.hypot(openmm_se, torch_se)
    assert abs(openmm_mean - torch_mean) < 4 * se, (openmm_mean, openmm_se, torch_mean, torch_se)
    assert se < 0.3  # kT: a 3 % error in the temperature (≈ 1 kT in ⟨u⟩) would show


def test_md_sampler_with_backend_openmm_runs_on_the_twin():
    """`md` with backend = "openmm" is the OpenMM path, seeded the same way."""
    system = TetheredParticles()
    sampler = LangevinMD(dt=0.01, friction=10.0, n_chains=4, thin=5, backend="openmm")
    budget = Budget(max_evals=4 * 5 * 10 + 4, n_snapshots=1)
    via_sampler = list(sampler.run(system, budget, torch.Generator().manual_seed(1)))[-1]
    direct = run(TetheredParticles(), sampler, budget, seed=1)[-1]
    assert via_sampler.diagnostics["backend"] == "openmm"
    assert torch.equal(via_sampler.positions, direct.positions)
    with pytest.raises(ValueError, match="backend: unknown backend 'gromacs'; valid choices: torch, openmm"):
        LangevinMD(backend="gromacs")


def test_openmm_backend_refuses_a_2d_system():
    system = get_system("ka2d")
    sampler = LangevinMD(backend="openmm", n_chains=2)
    with pytest.raises(ValueError, match="'openmm' runs 3D systems only; 'ka2d' is 2D"):
        next(sampler.run(system, Budget(max_evals=1e4), torch.Generator().manual_seed(0)))
