"""Benchmark: OpenMM formulations of the same pair systems, old against new, in one run.

Run ``python -m boltzbench.benchmarks.openmm_formulations`` (``--quick``: shorter timings;
``--json PATH`` keeps the rows). For each system it times ``integrator.step`` (LangevinMiddle,
dt = 0.002, from a relaxed configuration) of every formulation on OpenMM's CPU platform at 1
and 2 threads (and on the Reference platform for the small clusters), and checks that each
formulation's energy equals the torch kernel's (Reference platform, float64). Formulations:

* ``twin`` — what ``systems/openmm_twins.py`` builds now (its docstring says why);
* ``tables`` — the earlier twin of the mixtures: one CustomNonbondedForce, σ, ε, r_c and the
  shift as ``Discrete2DFunction`` tables of the species, ``step(rc - r)`` in the expression;
* ``groups`` — one CustomNonbondedForce per species pair, restricted with
  ``addInteractionGroup`` and cut at that pair's r_c, constants baked in;
* ``step_y`` — the earlier soft-sphere expression (``step(x_c - r/σ_ij)``, powers of r/σ_ij);
* ``nonbonded`` — the earlier clusters: CustomNonbondedForce (NoCutoff), and for LJ-13 the
  restraint as a CustomCentroidBondForce;
* ``all_A_NonbondedForce`` — not the system (every particle an A, unshifted): OpenMM's
  built-in LJ kernel at the same N, density and cutoff, for scale.

Speeds are steps per second: the best of ``repeats`` interleaved timings by the wall clock,
and by the process's CPU time (which a loaded machine disturbs less; with 2 threads it adds
both threads' time, so it is not a speed then). ``/twin`` is the CPU-time rate relative to
the current twin's at the same setting: the cost ratio, robust to load.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from boltzbench import get_system
from boltzbench.systems import openmm_twins
from boltzbench.systems.liquids import LJ_CUTOFF, SS_C0, SS_C2, SS_C4, SS_CUTOFF, SS_NONADDITIVITY, lj_shift

CASES = (("ka3d", {"n_particles": 256}), ("ternary2d", {}), ("soft_spheres", {"n_particles": 256}),
         ("lj13", {}), ("dw4", {}))
DT = 0.002
#: formulations of the system itself (the others only give a scale)
TWINS_OF_THE_SYSTEM = ("twin", "tables", "groups", "step_y", "nonbonded")


def _periodic(s, energy: str, name: str, parameters: list[list[float]], cutoff: float, groups=()):
    """A CustomNonbondedForce with a plain periodic cutoff, optionally restricted to groups."""
    import openmm as mm
    force = mm.CustomNonbondedForce(energy)
    force.addPerParticleParameter(name)
    for p in parameters:
        force.addParticle(p)
    for a, b in groups:
        force.addInteractionGroup(a, b)
    force.setNonbondedMethod(mm.CustomNonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(openmm_twins._periodic_cutoff(cutoff, s.box_edges))
    force.setUseSwitchingFunction(False)
    force.setUseLongRangeCorrection(False)
    return force


def _table(values: np.ndarray):
    import openmm as mm
    k = values.shape[0]
    return mm.Discrete2DFunction(k, k, [float(values[i, j]) for j in range(k) for i in range(k)])


def tables_twin(s):
    """The earlier mixture twin: Discrete2DFunction tables, step() cutoff, largest cutoff."""
    sig, eps = np.array(s.sigma, dtype=float), np.array(s.epsilon, dtype=float)
    system, box3 = openmm_twins._new_system(s.n_particles, s.box_edges, LJ_CUTOFF * sig.max())
    poly = ("- shift" if s.smoothing is None
            else "+ 4*eps*(({!r}) + ({!r})*(r/sig)^2 + ({!r})*(r/sig)^4)".format(*s.smoothing))
    force = _periodic(s, f"step(rc - r)*(4*eps*((sig/r)^12 - (sig/r)^6) {poly}); eps = epsilon_t(t1, t2); "
                         "sig = sigma_t(t1, t2); rc = cutoff_t(t1, t2); shift = shift_t(t1, t2)",
                      "t", [[float(t)] for t in s.species.tolist()], LJ_CUTOFF * sig.max())
    for name, table in (("epsilon_t", eps), ("sigma_t", sig), ("cutoff_t", LJ_CUTOFF * sig),
                        ("shift_t", eps * lj_shift())):
        force.addTabulatedFunction(name, _table(table))
    system.addForce(force)
    return openmm_twins._twin(s, system, box3)


def groups_twin(s):
    """One force per species pair (α ≤ β), addInteractionGroup(set_α, set_β), cut at r_c,αβ."""
    system, box3 = openmm_twins._new_system(s.n_particles, s.box_edges, LJ_CUTOFF * float(np.max(s.sigma)))
    species = s.species.numpy()
    sets = [set(np.flatnonzero(species == a).tolist()) for a in range(len(s.sigma))]
    one = [1.0]   # a single species code: the expression selects the only pair there is
    for a in range(len(sets)):
        for b in range(a, len(sets)):
            energy = openmm_twins.lj_mixture_expression(
                [[s.sigma[a][b]]], [[s.epsilon[a][b]]], LJ_CUTOFF,
                lj_shift() if s.smoothing is None else None, s.smoothing)
            force = _periodic(s, energy, "t", [one] * s.n_particles, LJ_CUTOFF * s.sigma[a][b], [(sets[a], sets[b])])
            force.setForceGroup(len(system.getForces()))
            system.addForce(force)
    return openmm_twins._twin(s, system, box3)


def step_y_twin(s):
    """The earlier soft-sphere expression."""
    from boltzbench.systems.liquids import nonadditive_sigma
    cutoff = SS_CUTOFF * float(nonadditive_sigma(s.diameters).max())
    system, box3 = openmm_twins._new_system(s.n_particles, s.box_edges, cutoff)
    system.addForce(_periodic(
        s, f"step({SS_CUTOFF!r} - y)*(y^(-12) + ({SS_C0!r}) + ({SS_C2!r})*y^2 + ({SS_C4!r})*y^4); y = r/sij; "
           f"sij = 0.5*(d1 + d2)*(1 - {SS_NONADDITIVITY!r}*abs(d1 - d2))",
        "d", [[float(d)] for d in s.diameters.tolist()], cutoff))
    return openmm_twins._twin(s, system, box3)


def nonbonded_twin(s):
    """The earlier cluster twins: CustomNonbondedForce without cutoff (+ centroid restraint)."""
    import openmm as mm
    system, _ = openmm_twins._new_system(s.n_particles, None, None)
    if s.name == "dw4":
        energy = f"({s.a!r})*q + ({s.b!r})*q^2 + ({s.c!r})*q^4; q = r - ({s.d0!r})"
    else:
        energy = f"({s.epsilon!r})*((({s.rm!r})/r)^12 - 2*(({s.rm!r})/r)^6)"
    force = mm.CustomNonbondedForce(energy)
    for _ in range(s.n_particles):
        force.addParticle([])
    system.addForce(force)
    if s.name == "lj13" and s.oscillator_scale > 0:
        restraint = mm.CustomCentroidBondForce(2, f"0.5*({s.oscillator_scale!r})*distance(g1, g2)^2")
        everyone = restraint.addGroup(list(range(s.n_particles)), [1.0] * s.n_particles)
        for i in range(s.n_particles):
            restraint.addBond([restraint.addGroup([i], [1.0]), everyone], [])
        system.addForce(restraint)
    return openmm_twins._twin(s, system, None)


def single_species_floor(s):
    """Not the system: every particle an A (σ = ε = 1) in OpenMM's built-in NonbondedForce,
    cut at 2.5 without shift — the speed of OpenMM's hand-written LJ kernel, for scale."""
    import openmm as mm
    system, box3 = openmm_twins._new_system(s.n_particles, s.box_edges, LJ_CUTOFF)
    force = mm.NonbondedForce()
    for _ in range(s.n_particles):
        force.addParticle(0.0, 1.0, 1.0)
    force.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(openmm_twins._periodic_cutoff(LJ_CUTOFF, s.box_edges))
    force.setUseDispersionCorrection(False)
    system.addForce(force)
    return openmm_twins._twin(s, system, box3)


def formulations(s) -> dict:
    """Name → OpenMM twin, the current one first."""
    out = {"twin": s.openmm_twin()}
    if hasattr(s, "smoothing"):
        out.update(tables=tables_twin(s), groups=groups_twin(s), all_A_NonbondedForce=single_species_floor(s))
    elif s.name == "soft_spheres":
        out["step_y"] = step_y_twin(s)
    else:
        out["nonbonded"] = nonbonded_twin(s)
    return out


def stepper(twin, positions: np.ndarray, platform: str, threads: int):
    import openmm as mm
    integrator = mm.LangevinMiddleIntegrator(twin.temperature_kelvin, 1.0, DT)
    integrator.setRandomNumberSeed(1)
    properties = {"Threads": str(threads)} if platform == "CPU" else {}
    context = mm.Context(twin.system, integrator, mm.Platform.getPlatformByName(platform), properties)
    context.setPositions(positions)
    context.setVelocitiesToTemperature(twin.temperature_kelvin, 1)
    integrator.step(20)
    return context, integrator


def timed(integrator, seconds: float, chunk: int = 20) -> tuple[float, float]:
    """Steps per second by the wall clock and by process CPU time, over ≥ ``seconds``."""
    steps, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        integrator.step(chunk)
        steps += chunk
    return steps / (time.perf_counter() - wall), steps / max(time.process_time() - cpu, 1e-9)


def measure(name: str, params: dict, repeats: int, seconds: float) -> list[dict]:
    s = get_system(name, **params)
    x = s.sample_initial(1, torch.Generator().manual_seed(0))
    u = float(s.energy(x)[0])
    forms = formulations(s)
    settings = [("CPU", 1), ("CPU", 2)] + ([("Reference", 1)] if s.n_particles < 100 and s.box_edges is None else [])
    runs, rows = {}, []
    for key, twin in forms.items():
        u_mm, _ = openmm_twins.openmm_energy_forces(s, x, openmm_twins.context(twin, "Reference"), twin)
        positions = openmm_twins.to_openmm_positions(s, x, twin)[0]
        for platform, threads in settings:
            runs[key, platform, threads] = [stepper(twin, positions, platform, threads), 0.0, 0.0,
                                            abs(float(u_mm[0]) - u) / abs(u) if key in TWINS_OF_THE_SYSTEM
                                            else float("nan")]   # another potential: not compared
    for _ in range(repeats):      # interleaved: every formulation sees the same machine load
        for run in runs.values():
            wall, cpu = timed(run[0][1], seconds)   # (context, integrator)
            run[1], run[2] = max(run[1], wall), max(run[2], cpu)
    for (key, platform, threads), (_, wall, cpu, err) in runs.items():
        rows.append({"system": name, "n_particles": s.n_particles, "formulation": key, "platform": platform,
                     "threads": threads, "steps_per_s": wall, "steps_per_cpu_s": cpu, "energy_rel_diff": err,
                     "speedup_vs_twin": cpu / runs["twin", platform, threads][2]})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| system | N | formulation | platform | threads | steps/s (wall) | steps/CPU-s | /twin "
             "| energy vs torch |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['system']} | {r['n_particles']} | {r['formulation']} | {r['platform']} | {r['threads']} | "
                     f"{r['steps_per_s']:.0f} | {r['steps_per_cpu_s']:.0f} | {r['speedup_vs_twin']:.2f} | "
                     f"{r['energy_rel_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions, best kept")
    parser.add_argument("--seconds", type=float, default=0.5, help="duration of one timing")
    parser.add_argument("--quick", action="store_true", help="3 repetitions of 0.2 s")
    names = [c[0] for c in CASES]
    parser.add_argument("--systems", nargs="*", default=names, choices=names, help="subset of the cases")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds = 3, 0.2
    import openmm
    load = os.getloadavg()[0]
    rows = [r for name, params in CASES if name in args.systems
            for r in measure(name, params, args.repeats, args.seconds)]
    print(markdown(rows))
    print(f"\nintegrator.step, LangevinMiddle dt = {DT}; /twin = steps per CPU-second relative to the current twin. "
          f"OpenMM {openmm.__version__}, {os.cpu_count()} CPUs, load average {load:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
