"""OpenMM backend of the Langevin MD baseline: each chain is an OpenMM Context.

``run_openmm_langevin`` is what ``LangevinMD.run`` calls with ``backend = "openmm"``. It
integrates the system's OpenMM twin (``System.openmm_twin()``) with OpenMM's
``LangevinMiddleIntegrator``, the "middle" (BAOAB-type) Langevin splitting of Zhang, Liu,
Sun & Leimkuhler, J. Chem. Phys. 151, 074103 (2019), whose configurational sampling error is
O(dt²) with a small constant (Leimkuhler & Matthews, AMRX 2013) and which, like BAOAB,
samples a harmonic potential's configurations exactly for any stable dt.

Units (the one rule): this backend works in OpenMM's units. ``dt`` is in ps, ``friction``
in 1/ps, the temperature is the twin's ``temperature_kelvin`` and the masses are those of
the OpenMM System, so the sampler's ``mass`` is not used. For a Lennard-Jones twin with
``nm_per_unit`` = 1 and ε = 1 kJ/mol (m = 1 amu) the ps is the reduced time unit; for
alanine dipeptide dt is a physical time step (≈ 0.5–1 fs, i.e. 0.0005–0.001, without
constraints). Positions come back as x = x_nm / ``nm_per_unit`` and energies as
u = U_kJ/mol / ``kj_per_mol_per_kt``, the system's own units.

Chains: one Context per chain (fine for tens of chains), on OpenMM's Reference platform for
non-periodic systems of fewer than ``SMALL_SYSTEM`` particles (for 22-atom alanine dipeptide
it steps several times faster than the CPU platform, whose per-step overhead dominates at
that size; for the LJ-13 twin 19×) and on the CPU platform with one thread otherwise (a
periodic liquid's CustomNonbondedForce steps 3× faster there already at N = 70, soft
spheres); ``platform=`` overrides. Integrator seeded with a value drawn from the torch generator (never 0,
which OpenMM reads as "pick a random seed"), velocities drawn from Maxwell–Boltzmann with a
second drawn seed. The contexts advance ``thin`` steps at a time; after each block the
positions and energies of every chain are read, kept as one thinned sample, and the ledger
is charged n_chains·thin force evaluations (plus n_chains for the forces at the start, as
the torch backend does). Reading the energy at a kept step makes OpenMM recompute it; that
readout is analysis, not charged, as an integrator that kept its last energy would give it
for free. Budgets are checked per block, so a run may overshoot by up to n_chains·thin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from boltzbench.contracts import Budget, OpenMMTwin, Snapshot, System
from boltzbench.samplers.chains import ChainTrace

if TYPE_CHECKING:
    from boltzbench.samplers.md import LangevinMD

#: seeds drawn for OpenMM lie in [1, SEED_RANGE); 0 would mean "random"
SEED_RANGE = 2**31 - 1
#: below this many particles the Reference platform is the default, else the CPU platform
SMALL_SYSTEM = 100


def default_platform(omm_system) -> str:
    """'Reference' for non-periodic systems of fewer than SMALL_SYSTEM particles, else 'CPU'."""
    small = omm_system.getNumParticles() < SMALL_SYSTEM
    return "Reference" if small and not omm_system.usesPeriodicBoundaryConditions() else "CPU"


def thermal_dof(omm_system) -> int:
    """Degrees of freedom that carry kinetic energy: 3N − constraints (− 3 if the centre of
    mass motion is removed)."""
    import openmm

    n = sum(omm_system.getParticleMass(i)._value > 0 for i in range(omm_system.getNumParticles()))
    removes_com = any(isinstance(f, openmm.CMMotionRemover) for f in omm_system.getForces())
    return 3 * n - omm_system.getNumConstraints() - (3 if removes_com else 0)


def chain_context(twin: OpenMMTwin, x: torch.Tensor, dt: float, friction: float,
                  integrator_seed: int, velocity_seed: int, platform: str):
    """One chain's Context: LangevinMiddle integrator, positions x (system units), thermal velocities."""
    import openmm

    integrator = openmm.LangevinMiddleIntegrator(twin.temperature_kelvin, friction, dt)
    integrator.setRandomNumberSeed(integrator_seed)
    properties = {"Threads": "1"} if platform == "CPU" else {}
    context = openmm.Context(twin.system, integrator, openmm.Platform.getPlatformByName(platform), properties)
    if twin.box_nm is not None:
        a, b, c = (openmm.Vec3(*(edge if i == j else 0.0 for j in range(3))) for i, edge in enumerate(twin.box_nm))
        context.setPeriodicBoxVectors(a, b, c)
    context.setPositions(x.detach().cpu().double().numpy().reshape(-1, 3) * twin.nm_per_unit)
    context.setVelocitiesToTemperature(twin.temperature_kelvin, velocity_seed)
    return context


def read_chains(contexts, twin: OpenMMTwin, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Positions (C, dof) and reduced energies (C,) in system units, kinetic energies (C,) in kJ/mol."""
    periodic = twin.box_nm is not None
    x, u, kinetic = [], np.empty(len(contexts)), np.empty(len(contexts))
    for i, context in enumerate(contexts):
        state = context.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=periodic)
        x.append(state.getPositions(asNumpy=True)._value.reshape(-1))  # nm
        u[i] = state.getPotentialEnergy()._value  # kJ/mol
        kinetic[i] = state.getKineticEnergy()._value
    x = torch.as_tensor(np.stack(x) / twin.nm_per_unit, dtype=dtype)
    return x, torch.as_tensor(u / twin.kj_per_mol_per_kt, dtype=dtype), kinetic


def run_openmm_langevin(sampler: LangevinMD, system: System, budget: Budget,
                        generator: torch.Generator, platform: str | None = None) -> Iterator[Snapshot]:
    """Langevin MD of ``system``'s OpenMM twin, ``sampler.n_chains`` chains; yields snapshots
    on the budget's schedule. ``sampler.dt`` in ps, ``sampler.friction`` in 1/ps; ``platform``
    (an OpenMM platform name) defaults to :func:`default_platform`."""
    twin = system.openmm_twin()
    if twin.dim != 3:
        raise ValueError(f"backend: 'openmm' runs 3D systems only; {system.name!r} is {twin.dim}D "
                         f"(its OpenMM twin serves energy checks): use backend = 'torch'")
    platform = platform or default_platform(twin.system)
    ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(1)
    n, thin = sampler.n_chains, sampler.thin
    x = system.sample_initial(n, generator)
    seeds = torch.randint(1, SEED_RANGE, (n, 2), generator=generator).tolist()
    with ledger.setup_phase():
        contexts = [chain_context(twin, x[i], sampler.dt, sampler.friction, *seeds[i], platform)
                    for i in range(n)]
    half_dof_kt = 0.5 * thermal_dof(twin.system) * twin.kj_per_mol_per_kt  # equipartition, kJ/mol
    ledger.charge(forces=n)  # the forces at the start, computed by the first step
    kinetic = 0.0
    while not budget.exhausted(ledger):
        for context in contexts:
            context.getIntegrator().step(thin)
        ledger.charge(forces=n * thin)
        x, u, k = read_chains(contexts, twin, system.dtype)
        kinetic += float(k.mean())
        trace.step(x, u)  # one kept sample per block of `thin` steps
        if schedule.due(ledger):
            yield trace.snapshot(ledger, {
                "steps": trace.steps * thin,
                # kinetic temperature in units of the target: 1 at equilibrium
                "kinetic_temperature": kinetic / trace.steps / half_dof_kt,
                "backend": "openmm",
                "platform": platform,
            })
