"""OpenMM twins of the pair-potential systems: the same energies, built from OpenMM forces.

Units. Lennard-Jones reduced units map exactly onto OpenMM's (nm, kJ/mol, amu) with σ_AA = 1 nm,
ε_AA = 1 kJ/mol and m = 1 amu: then positions need no conversion (``nm_per_unit`` = 1), an
energy U in units of ε is U kJ/mol, and kT = T·ε means ``kj_per_mol_per_kt`` = T and a
thermostat temperature of T / R kelvin with R = 0.00831446261815324 kJ/(mol·K) (the molar gas
constant, CODATA 2018 exact value); the reduced time unit is then 1 ps.

Forces (OpenMM 8 user guide, "Custom forces"):

* mixtures — one ``CustomNonbondedForce`` with the species as a per-particle parameter and
  ε_αβ, σ_αβ, r_c,αβ and the shift φ_αβ(r_c) as ``Discrete2DFunction`` tables (``ternary2d``:
  no shift, its smoothing polynomial written into the expression); the per-pair
  cutoff is ``step(rc - r)`` inside the expression; the force's own cutoff is the largest
  pair cutoff, with ``CutoffPeriodic`` (minimum image) and no switching or long-range
  correction;
* soft spheres — the same with the diameter as per-particle parameter and σ_ij computed in
  the expression;
* DW-4, LJ-13 — ``NoCutoff``; the LJ-13 restraint (k/2)Σ|x_i − x̄|² is a
  ``CustomCentroidBondForce`` that ties each particle's own group to the group of all
  particles (equal weights, so x̄ is the unweighted centre).

Two-dimensional systems are embedded in the plane z = 0: pad positions with
:func:`to_openmm_positions`; periodic 2D boxes get a z edge of twice the cutoff plus one, so
that z images never interact. Such a twin is for energy and force cross-checks only: OpenMM
dynamics would move particles out of the plane.
"""

from __future__ import annotations

import numpy as np
import torch

from boltzbench.contracts import OpenMMTwin

MOLAR_GAS_CONSTANT_R = 0.00831446261815324  # kJ/(mol·K)


def _openmm():
    import openmm
    return openmm


def _new_system(n_particles: int, box: tuple[float, ...] | None, cutoff: float | None):
    """An OpenMM System of n unit-mass particles; periodic box edges padded to 3D."""
    mm = _openmm()
    system = mm.System()
    for _ in range(n_particles):
        system.addParticle(1.0)
    box3 = None
    if box is not None:
        box3 = tuple(box) + (2.0 * cutoff + 1.0,) * (3 - len(box))
        system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*(e if i == j else 0.0 for j in range(3)))
                                              for i, e in enumerate(box3)))
    return system, box3


def _periodic_cutoff(cutoff: float, box: tuple[float, ...]) -> float:
    """OpenMM refuses a cutoff above half the box; at the smallest allowed box (edge = 2·r_c up
    to rounding) take half the box, which drops only pairs at r = r_c, where φ = 0."""
    return min(cutoff, 0.5 * min(box))


def _table(values: np.ndarray):
    """A symmetric K×K table as a Discrete2DFunction (x index fastest)."""
    k = values.shape[0]
    return _openmm().Discrete2DFunction(k, k, [float(values[i, j]) for j in range(k) for i in range(k)])


def _twin(system_obj, mm_system, box3) -> OpenMMTwin:
    t = float(system_obj.temperature)
    return OpenMMTwin(system=mm_system, nm_per_unit=1.0, kj_per_mol_per_kt=t,
                      temperature_kelvin=t / MOLAR_GAS_CONSTANT_R, box_nm=box3, dim=system_obj.dim)


def _periodic_twin(s, system, box3, force, per_particle: list[list[float]], cutoff: float) -> OpenMMTwin:
    """Add the particles' parameters to a CustomNonbondedForce with a plain periodic cutoff
    (no switching, no long-range correction: the torch kernels truncate the same way)."""
    mm = _openmm()
    for values in per_particle:
        force.addParticle(values)
    force.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(_periodic_cutoff(cutoff, s.box_edges))
    force.setUseSwitchingFunction(False)
    force.setUseLongRangeCorrection(False)
    system.addForce(force)
    return _twin(s, system, box3)


def lj_mixture_twin(s) -> OpenMMTwin:
    """LJ mixture: truncated and shifted (ka3d, ka2d), or with the polynomial smoothing
    4ε[C0 + C2(r/σ)² + C4(r/σ)⁴] added instead of the shift (ternary2d)."""
    from boltzbench.systems.liquids import LJ_CUTOFF, lj_shift
    mm = _openmm()
    sig = np.array(s.sigma, dtype=float)
    eps = np.array(s.epsilon, dtype=float)
    cutoff = LJ_CUTOFF * sig.max()
    system, box3 = _new_system(s.n_particles, s.box_edges, cutoff)
    lookup = "eps = epsilon_t(t1, t2); sig = sigma_t(t1, t2); rc = cutoff_t(t1, t2)"
    if s.smoothing is None:
        force = mm.CustomNonbondedForce("step(rc - r) * (4*eps*((sig/r)^12 - (sig/r)^6) - shift);"
                                        f"{lookup}; shift = shift_t(t1, t2)")
        force.addTabulatedFunction("shift_t", _table(eps * lj_shift()))
    else:
        c0, c2, c4 = s.smoothing
        force = mm.CustomNonbondedForce(
            f"step(rc - r) * 4*eps*((sig/r)^12 - (sig/r)^6 + ({c0!r}) + ({c2!r})*(r/sig)^2 + ({c4!r})*(r/sig)^4);"
            f"{lookup}")
    force.addPerParticleParameter("t")
    force.addTabulatedFunction("epsilon_t", _table(eps))
    force.addTabulatedFunction("sigma_t", _table(sig))
    force.addTabulatedFunction("cutoff_t", _table(LJ_CUTOFF * sig))
    return _periodic_twin(s, system, box3, force, [[float(t)] for t in s.species.tolist()], cutoff)


def soft_sphere_twin(s) -> OpenMMTwin:
    """Polydisperse non-additive soft spheres: the diameter is the per-particle parameter."""
    from boltzbench.systems.liquids import (
        SS_C0,
        SS_C2,
        SS_C4,
        SS_CUTOFF,
        SS_NONADDITIVITY,
        nonadditive_sigma,
    )
    mm = _openmm()
    cutoff = SS_CUTOFF * float(nonadditive_sigma(s.diameters).max())
    system, box3 = _new_system(s.n_particles, s.box_edges, cutoff)
    force = mm.CustomNonbondedForce(
        f"step({SS_CUTOFF!r} - y) * (y^(-12) + ({SS_C0!r}) + ({SS_C2!r})*y^2 + ({SS_C4!r})*y^4);"
        f"y = r/sij; sij = 0.5*(d1 + d2)*(1 - {SS_NONADDITIVITY!r}*abs(d1 - d2))")
    force.addPerParticleParameter("d")
    return _periodic_twin(s, system, box3, force, [[float(d)] for d in s.diameters.tolist()], cutoff)


def dw4_twin(s) -> OpenMMTwin:
    """DW-4 pair double well, all pairs, no cutoff."""
    mm = _openmm()
    system, _ = _new_system(s.n_particles, None, None)
    force = mm.CustomNonbondedForce(f"({s.a!r})*q + ({s.b!r})*q^2 + ({s.c!r})*q^4; q = r - ({s.d0!r})")
    for _ in range(s.n_particles):
        force.addParticle([])
    force.setNonbondedMethod(mm.CustomNonbondedForce.NoCutoff)
    system.addForce(force)
    return _twin(s, system, None)


def lj13_twin(s) -> OpenMMTwin:
    """LJ-13: ε[(r_m/r)¹² − 2(r_m/r)⁶] over all pairs plus the centre-of-mass restraint."""
    mm = _openmm()
    n = s.n_particles
    system, _ = _new_system(n, None, None)
    force = mm.CustomNonbondedForce(f"({s.epsilon!r})*((({s.rm!r})/r)^12 - 2*(({s.rm!r})/r)^6)")
    for _ in range(n):
        force.addParticle([])
    force.setNonbondedMethod(mm.CustomNonbondedForce.NoCutoff)
    system.addForce(force)
    if s.oscillator_scale > 0:
        restraint = mm.CustomCentroidBondForce(2, f"0.5*({s.oscillator_scale!r})*distance(g1, g2)^2")
        groups = [restraint.addGroup([i], [1.0]) for i in range(n)]
        everyone = restraint.addGroup(list(range(n)), [1.0] * n)
        for g in groups:
            restraint.addBond([g, everyone], [])
        system.addForce(restraint)
    return _twin(s, system, None)


def openmm_twin(s) -> OpenMMTwin:
    """The OpenMM twin of any pair-potential system of this package."""
    from boltzbench.systems.clusters import DoubleWell4, LennardJones13
    from boltzbench.systems.liquids import LennardJonesMixture, SoftSpheres
    for cls, build in ((LennardJonesMixture, lj_mixture_twin), (SoftSpheres, soft_sphere_twin),
                       (DoubleWell4, dw4_twin), (LennardJones13, lj13_twin)):
        if isinstance(s, cls):
            return build(s)
    raise NotImplementedError(f"system {s.name!r} has no OpenMM twin")


def to_openmm_positions(s, x: torch.Tensor, twin: OpenMMTwin) -> np.ndarray:
    """Configurations x (B, N·d) → OpenMM positions (B, N, 3) in nm (z = 0 in 2D)."""
    pos = x.detach().cpu().double().numpy().reshape(x.shape[0], s.n_particles, s.dim)
    out = np.zeros((x.shape[0], s.n_particles, 3))
    out[:, :, : s.dim] = pos
    return out * twin.nm_per_unit


def openmm_energy_forces(s, x: torch.Tensor, context, twin: OpenMMTwin) -> tuple[np.ndarray, np.ndarray]:
    """Reduced energies (B,) and reduced forces (B, N·d) of x evaluated by an OpenMM Context
    of ``twin``: u = U_kJ/mol / kj_per_mol_per_kt, f = F_kJ/mol/nm · nm_per_unit / kj_per_mol_per_kt."""
    u, f = [], []
    for pos in to_openmm_positions(s, x, twin):
        context.setPositions(pos)
        state = context.getState(getEnergy=True, getForces=True)
        u.append(state.getPotentialEnergy()._value)
        f.append(state.getForces(asNumpy=True)._value[:, : s.dim].reshape(-1))
    scale = twin.kj_per_mol_per_kt
    return np.array(u) / scale, np.array(f) * twin.nm_per_unit / scale


def context(twin: OpenMMTwin, platform: str = "Reference", properties: dict | None = None):
    """A Context of the twin (VerletIntegrator, never stepped unless the caller does)."""
    mm = _openmm()
    return mm.Context(twin.system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform),
                      properties or {})
