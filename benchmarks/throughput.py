"""Benchmark: batched energy+force throughput of the torch pair kernels against OpenMM's CPU
platform on the same system, in one run.

Run ``python -m boltzbench.benchmarks.throughput`` (``--quick`` for fewer repetitions,
``--json PATH`` to keep the numbers). Throughput is in particle-steps per second: one
energy+force evaluation of one configuration of N particles counts N.

* numba: ``system.energy_and_forces`` with ``kernel = "numba"`` (the compiled all-pairs loop of
  ``systems/compiled_pairs.py``, float64; the default on the CPU), same batches.
* torch: ``system.energy_and_forces`` (``kernel = "torch"``) on a fixed batch of B relaxed configurations (B = 1, 16,
  64), float64 and float32 with the default Verlet list (built once: the kernel alone) and
  float32 with the dense kernel; and ``torch f32 MD``: BAOAB Langevin steps of the float32
  system at OpenMM's physical time step, so the Verlet list is rebuilt as particles move
  (and the integrator's own tensor work is included). ``torch.set_num_threads(threads)``.
* OpenMM (the twin of ``systems/openmm_twins.py``, in the formulation that measured fastest
  with equal energies — one CustomNonbondedForce on the neighbour list, pair constants
  selected in the expression; ``benchmarks/openmm_formulations.py`` times it against the
  earlier tabulated form and interaction groups —, CPU platform, ``Threads`` = threads; the
  CPU platform computes nonbonded forces in single precision):
  (a) ``step`` — ``integrator.step(n)`` of one Context (LangevinMiddle, dt = 0.002): OpenMM's
  best case, neighbour list reused, no Python in the loop; independent of B, so timed
  beside every B and the best of all those timings is reported in every row;
  (b) ``call`` — ``setPositions`` + ``getState(energy, forces)`` for each of the B
  configurations: what a batched sampler driving OpenMM from Python pays.
  For 2D systems the OpenMM particles sit in the plane z = 0; under ``step`` they leave it
  (thermal z motion), which changes the neighbour count little and the cost not at all.

Every timing is the best of ``repeats`` interleaved repetitions (torch and OpenMM alternate),
which keeps both sides comparable on a shared, loaded machine. On an oversubscribed machine
(load above the core count) run with ``OMP_WAIT_POLICY=PASSIVE``: with libgomp's default
spin-waiting, torch's two OpenMP threads meet at a barrier after every tensor operation and
lose whole scheduler time slices there, which measured 5-10× slower at load ≈ 4 on 2 cores,
while OpenMM's own thread pool was unaffected (the policy is read when torch is imported, so
set it in the environment). Goals (issue 16, item 2): the CPU kernel ≥ 1× OpenMM ``step`` at
N = 256 with ≥ 16 replicas, ≥ 3× at N = 43 with ≥ 64 replicas.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch

from boltzbench import get_system
from boltzbench.systems import openmm_twins

CASES = (("ka3d", {"n_particles": 256}), ("ternary2d", {"n_particles": 43}))
REPLICAS = (1, 16, 64)
PRECISIONS = ("float64", "float32")
DT = 0.002


def best_time(fn, repeats: int, min_seconds: float) -> float:
    """Best (smallest) seconds per call of ``fn`` over ``repeats`` batches of ≥ min_seconds."""
    fn()
    calls = 1
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(min_seconds / once))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def openmm_context(system, x, threads: int):
    import openmm
    twin = system.openmm_twin()
    integrator = openmm.LangevinMiddleIntegrator(twin.temperature_kelvin, 1.0, DT)
    context = openmm.Context(twin.system, integrator, openmm.Platform.getPlatformByName("CPU"),
                             {"Threads": str(threads)})
    positions = openmm_twins.to_openmm_positions(system, x, twin)
    context.setPositions(positions[0])
    context.setVelocitiesToTemperature(twin.temperature_kelvin, 1)
    return context, integrator, positions


def baoab(system, x, v, f, dt: float, generator: torch.Generator, steps: int):
    """``steps`` BAOAB Langevin steps (friction 1, m = 1, reduced units of the System contract)."""
    c = math.exp(-dt)
    for _ in range(steps):
        v = v + 0.5 * dt * f
        x = x + 0.5 * dt * v
        v = c * v + math.sqrt(1 - c * c) * torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        x = x + 0.5 * dt * v
        _, f = system.energy_and_forces(x)
        v = v + 0.5 * dt * f
    return x, v, f


def measure(name: str, params: dict, threads: int, repeats: int, min_seconds: float,
            device: str = "cpu") -> list[dict]:
    """Rows of throughputs (particle-steps/s) for one system at every batch size."""
    torch.set_num_threads(threads)
    variants = {"float64": {"precision": "float64", "kernel": "torch"},
                "float32": {"precision": "float32", "kernel": "torch"},
                "float32_dense": {"precision": "float32", "verlet_skin": 0.0, "kernel": "torch"}}
    if device == "cpu":
        variants["numba"] = {"precision": "float64", "kernel": "numba"}
    systems = {k: get_system(name, device=device, **params, **v) for k, v in variants.items()}
    reference = systems["float64"]
    n = reference.n_particles
    x_all = reference.sample_initial(max(REPLICAS), torch.Generator().manual_seed(0))
    context, integrator, positions = openmm_context(reference, x_all, threads)
    integrator.step(50)
    steps_per_call = 20
    # the same physical time step as OpenMM's: t_reduced = t·sqrt(kT) for unit masses
    dt = DT * math.sqrt(reference.temperature)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for b in REPLICAS:
        xs = {k: x_all[:b].to(device=s.torch_device, dtype=s.dtype) for k, s in systems.items()}

        def kernel(key, x=xs):
            def run():
                systems[key].energy_and_forces(x[key])
                sync()
            return run

        md_system = systems["float32"]
        gen = torch.Generator(device=md_system.torch_device).manual_seed(1)
        state = [xs["float32"].clone(), torch.zeros_like(xs["float32"]), md_system.energy_and_forces(xs["float32"])[1]]
        builds_before = md_system.__dict__.get("verlet_builds", 0)
        md_steps = [0]

        def torch_md(system=md_system, state=state, gen=gen, counter=md_steps):
            state[:] = baoab(system, *state, dt, gen, steps_per_call)
            counter[0] += steps_per_call
            sync()

        def openmm_call(batch=positions[:b]):
            for pos in batch:
                context.setPositions(pos)
                context.getState(getEnergy=True, getForces=True)

        def openmm_step():
            integrator.step(steps_per_call)

        t = {k: float("inf") for k in variants}
        t_md = t_call = t_step = float("inf")
        for _ in range(repeats):   # interleaved: each side sees the same machine load
            for key in variants:
                t[key] = min(t[key], best_time(kernel(key), 1, min_seconds))
            t_md = min(t_md, best_time(torch_md, 1, min_seconds) / steps_per_call)
            t_step = min(t_step, best_time(openmm_step, 1, min_seconds) / steps_per_call)
            t_call = min(t_call, best_time(openmm_call, 1, min_seconds))
            context.setPositions(positions[0])
        builds = md_system.__dict__.get("verlet_builds", 0) - builds_before
        row = {"system": name, "n_particles": n, "replicas": b, "device": device,
               "openmm_step": n / t_step, "openmm_call": b * n / t_call,
               "torch_float32_md": b * n / t_md, "md_steps_per_list_build": md_steps[0] / max(builds, 1)}
        for key in variants:
            row["numba" if key == "numba" else f"torch_{key}"] = b * n / t[key]
        rows.append(row)
    best_step = max(r["openmm_step"] for r in rows)   # independent of B: the best of every timing
    for r in rows:
        r["openmm_step"] = best_step
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| system | N | replicas | numba f64 | torch f64 | torch f32 | torch f32 dense | torch f32 MD "
            "| OpenMM step | OpenMM call | numba/step | f64/step | f32/step | f32 MD/step | f32/call |\n|"
            + "---|" * 15)
    lines = [head]
    for r in rows:
        numba = r.get("numba", math.nan)
        lines.append(
            f"| {r['system']} | {r['n_particles']} | {r['replicas']} | {numba:.3g} | {r['torch_float64']:.3g} | "
            f"{r['torch_float32']:.3g} | {r['torch_float32_dense']:.3g} | {r['torch_float32_md']:.3g} | "
            f"{r['openmm_step']:.3g} | {r['openmm_call']:.3g} | {numba / r['openmm_step']:.2f} | "
            f"{r['torch_float64'] / r['openmm_step']:.2f} | {r['torch_float32'] / r['openmm_step']:.2f} | "
            f"{r['torch_float32_md'] / r['openmm_step']:.2f} | {r['torch_float32'] / r['openmm_call']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMM CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions, best kept")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="duration of one timed batch")
    parser.add_argument("--quick", action="store_true", help="2 repetitions of 0.05 s")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.min_seconds = 2, 0.05
    import openmm
    load = os.getloadavg()
    rows = []
    for name, params in CASES:
        rows += measure(name, params, args.threads, args.repeats, args.min_seconds, args.device)
    print(markdown(rows))
    print(f"\nparticle-steps per second; ratios torch/OpenMM. threads={args.threads}, "
          f"torch {torch.__version__}, OpenMM {openmm.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {load[0]:.1f} before / {os.getloadavg()[0]:.1f} after")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "threads": args.threads, "load_before": load,
                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                       "load_after": os.getloadavg()}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
