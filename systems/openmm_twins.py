"""OpenMM twins of the pair-potential systems: the same energies, built from OpenMM forces.

Units. Lennard-Jones reduced units map exactly onto OpenMM's (nm, kJ/mol, amu) with σ_AA = 1 nm,
ε_AA = 1 kJ/mol and m = 1 amu: then positions need no conversion (``nm_per_unit`` = 1), an
energy U in units of ε is U kJ/mol, and kT = T·ε means ``kj_per_mol_per_kt`` = T and a
thermostat temperature of T / R kelvin with R = 0.00831446261815324 kJ/(mol·K) (the molar gas
constant, CODATA 2018 exact value); the reduced time unit is then 1 ps.

Forces (OpenMM 8 user guide, "Custom forces"), each in the form that measured fastest, with
equal energies, on OpenMM's CPU platform (``python -m boltzbench.benchmarks.openmm_formulations``):

* mixtures — one ``CustomNonbondedForce`` on the neighbour list of the largest pair cutoff
  (``CutoffPeriodic``: minimum image; no switching, no long-range correction). Particle i
  carries t_i = 2^species, so t1 + t2 names the unordered species pair (sums of two powers of
  two are distinct), and ``select`` chains on it pick the pair's constants, baked into the
  expression as numbers: u = c12/r¹² − c6/r⁶ + a0 (+ a2·r² + a4·r⁴: the smoothing of
  ``ternary2d``) for r < r_c,αβ, written ``select(step(r - rc), 0, u)`` so that r = r_c is
  outside, as in the torch kernels (r² < r_c²). Slower, hence not used: ``Discrete2DFunction``
  tables of σ, ε, r_c and shift (the earlier twin) and one force per species pair restricted
  with ``addInteractionGroup`` and its own cutoff — on the CPU platform interaction groups
  loop over every pair of the two sets, O(N²), bypassing the neighbour list and its vectorized
  kernel (OpenMM ``platforms/cpu/src/CpuCustomNonbondedForce.cpp``);
* soft spheres — the same with the diameter as per-particle parameter, σ_ij computed in the
  expression and the cutoff x_c·σ_ij in it, the force's cutoff the largest possible x_c·σ_ij
  (binning diameters into species would not be exact);
* DW-4, LJ-13 — one ``CustomBondForce`` over all N(N−1)/2 pairs, no cutoff: on the Reference
  platform, which the MD backend uses below 100 particles, it steps 20-80× faster than a
  ``CustomNonbondedForce`` (``NoCutoff``). The LJ-13 restraint (k/2)Σ|x_i − x̄|² is a pair sum
  too, since Σ_i |x_i − x̄|² = (1/N)Σ_{i<j} |x_i − x_j|² for the unweighted centre x̄: each
  pair carries k/(2N)·r_ij² in the same expression.

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


def species_codes(k: int) -> list[float]:
    """Per-particle code t = 2^α of species α = 0..k−1: t1 + t2 names the unordered pair."""
    return [float(2 ** a) for a in range(k)]


def pair_constant(values: dict[int, float], key: str = "key") -> str:
    """A Lepton expression equal to ``values[key]`` for each integer key, as nested
    ``select(key - k, <rest>, v_k)`` (exact comparisons of small integers)."""
    keys = sorted(values)
    expr = repr(float(values[keys[-1]]))
    for k in reversed(keys[:-1]):
        expr = f"select({key} - {k}, {expr}, {float(values[k])!r})"
    return expr


def lj_mixture_expression(sigma, epsilon, cutoff: float, shift: float | None,
                          smoothing: tuple[float, float, float] | None) -> str:
    """Pair energy of a Lennard-Jones mixture for a CustomNonbondedForce with per-particle
    t = 2^species: u = c12·y² − c6·y + a0 + a2·r² + a4·r⁴ (y = r⁻⁶) for r < r_c,αβ = cutoff·σ_αβ,
    0 beyond; c12 = 4εσ¹², c6 = 4εσ⁶ and either a0 = −ε·shift (truncated and shifted, a2 = a4 = 0)
    or a0 = 4εC0, a2 = 4εC2/σ², a4 = 4εC4/σ⁴ (``smoothing`` = (C0, C2, C4))."""
    sig, eps = np.asarray(sigma, dtype=float), np.asarray(epsilon, dtype=float)
    codes = species_codes(sig.shape[0])
    const: dict[str, dict[int, float]] = {name: {} for name in ("c12", "c6", "a0", "a2", "a4", "rc")}
    for a in range(sig.shape[0]):
        for b in range(a, sig.shape[0]):
            key, e, s = int(codes[a] + codes[b]), float(eps[a, b]), float(sig[a, b])
            const["c12"][key], const["c6"][key], const["rc"][key] = 4 * e * s**12, 4 * e * s**6, cutoff * s
            if smoothing is None:
                const["a0"][key] = -e * shift
            else:
                c0, c2, c4 = smoothing
                const["a0"][key], const["a2"][key], const["a4"][key] = 4 * e * c0, 4 * e * c2 / s**2, 4 * e * c4 / s**4
    poly = "a0" if smoothing is None else "a0 + a2*r2 + a4*r2*r2"
    names = [n for n in const if const[n]]
    return (f"select(step(r - rc), 0, c12*y*y - c6*y + {poly}); y = 1/(r2*r2*r2); r2 = r*r; "
            + "; ".join(f"{n} = {pair_constant(const[n])}" for n in names) + "; key = t1 + t2")


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
    cutoff = LJ_CUTOFF * float(np.max(s.sigma))
    system, box3 = _new_system(s.n_particles, s.box_edges, cutoff)
    force = mm.CustomNonbondedForce(lj_mixture_expression(
        s.sigma, s.epsilon, LJ_CUTOFF, lj_shift() if s.smoothing is None else None, s.smoothing))
    force.addPerParticleParameter("t")
    codes = species_codes(len(s.sigma))
    return _periodic_twin(s, system, box3, force, [[codes[t]] for t in s.species.tolist()], cutoff)


def soft_sphere_expression() -> str:
    """Pair energy of the soft spheres for a CustomNonbondedForce with per-particle diameter d:
    y = (r/σ_ij)², u = y⁻⁶ + c0 + c2·y + c4·y² for y < x_c², 0 beyond (r = x_c·σ_ij is outside),
    σ_ij = (d1 + d2)/2·(1 − 0.2·|d1 − d2|)."""
    from boltzbench.systems.liquids import SS_C0, SS_C2, SS_C4, SS_CUTOFF, SS_NONADDITIVITY
    return (f"select(step(y - {SS_CUTOFF ** 2!r}), 0, 1/(y*y*y)^2 + ({SS_C0!r}) + ({SS_C2!r})*y + ({SS_C4!r})*y*y);"
            f"y = r*r/(sij*sij); sij = 0.5*(d1 + d2)*(1 - {SS_NONADDITIVITY!r}*abs(d1 - d2))")


def soft_sphere_twin(s) -> OpenMMTwin:
    """Polydisperse non-additive soft spheres: the diameter is the per-particle parameter."""
    from boltzbench.systems.liquids import SS_CUTOFF, nonadditive_sigma
    mm = _openmm()
    cutoff = SS_CUTOFF * float(nonadditive_sigma(s.diameters).max())
    system, box3 = _new_system(s.n_particles, s.box_edges, cutoff)
    force = mm.CustomNonbondedForce(soft_sphere_expression())
    force.addPerParticleParameter("d")
    return _periodic_twin(s, system, box3, force, [[float(d)] for d in s.diameters.tolist()], cutoff)


def _all_pairs_twin(s, energy: str) -> OpenMMTwin:
    """A twin whose energy is Σ_{i<j} energy(r_ij): one CustomBondForce over all pairs."""
    mm = _openmm()
    system, _ = _new_system(s.n_particles, None, None)
    force = mm.CustomBondForce(energy)
    for i in range(s.n_particles):
        for j in range(i + 1, s.n_particles):
            force.addBond(i, j, [])
    system.addForce(force)
    return _twin(s, system, None)


def dw4_twin(s) -> OpenMMTwin:
    """DW-4 pair double well, all pairs, no cutoff."""
    return _all_pairs_twin(s, f"({s.a!r})*q + ({s.b!r})*q^2 + ({s.c!r})*q^4; q = r - ({s.d0!r})")


def lj13_twin(s) -> OpenMMTwin:
    """LJ-13: ε[(r_m/r)¹² − 2(r_m/r)⁶] over all pairs plus the centre-of-mass restraint
    (k/2)Σ_i |x_i − x̄|² = k/(2N)·Σ_{i<j} r_ij², folded into the same pair sum."""
    energy = f"({s.epsilon!r})*((({s.rm!r})/r)^12 - 2*(({s.rm!r})/r)^6)"
    if s.oscillator_scale > 0:
        energy += f" + ({0.5 * s.oscillator_scale / s.n_particles!r})*r^2"
    return _all_pairs_twin(s, energy)


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
