"""Benchmark: one Monte Carlo sweep against one MD step of the same liquid, in one run.

Run ``python -m boltzbench.benchmarks.mc_sweep`` (``--quick`` for fewer repetitions,
``--json PATH`` to keep the numbers, ``--no-torch-sweep`` to skip the slow torch backend).

* MD step: ``samplers.md.baoab_step`` (``energy_and_forces`` + BAOAB) with the ``md``
  sampler's default dt, friction and mass, float64 and the system's default Verlet list, so
  list rebuilds are included as they happen in a run.
* MC sweep: N attempted single-particle moves per replica, a fraction ``p_swap`` = 0.2 of
  them identity swaps (``samplers/swap_mc.py``, :class:`SwapMove`), with the numba backend
  (one compiled loop per sweep) and the torch backend (the system's local-energy API, one
  vectorized call per attempt); the random numbers of the sweep are drawn in torch and
  included in its time.

Both act on the same B replicas (B = 1 and 16) of the same relaxed configurations,
``torch.set_num_threads(threads)``; every time is the best of ``repeats`` interleaved
repetitions (MD and MC alternate, so both see the same machine load). The goal (issue 4):
a sweep costs at most 3 MD steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from boltzbench import get_system
from boltzbench.benchmarks.throughput import best_time
from boltzbench.samplers.md import LangevinMD, baoab_step
from boltzbench.samplers.moves import Walkers
from boltzbench.samplers.swap_mc import SwapMove

CASES = (("ternary2d", {"n_particles": 43}), ("ka3d", {"n_particles": 256}))
REPLICAS = (1, 16)
P_SWAP = 0.2
STEP = 0.1
TARGET = 3.0  # a sweep should cost at most this many MD steps


def measure(name: str, params: dict, replicas: int, repeats: int, min_seconds: float,
            torch_sweep: bool) -> dict:
    """Seconds per MD step and per MC sweep (numba, torch) for one system and batch size."""
    system = get_system(name, **params)
    gen = torch.Generator().manual_seed(0)
    x = system.sample_initial(replicas, gen)
    md = LangevinMD()
    _, f = system.energy_and_forces(x)
    state = [x.clone(), torch.randn(x.shape, generator=gen, dtype=x.dtype), f]

    def md_step():
        state[0], state[1], _, state[2] = baoab_step(state[0], state[1], state[2], system, md.dt, md.friction,
                                                     md.mass, gen)

    moves, walkers = {}, {}
    for backend in ("numba", "torch") if torch_sweep else ("numba",):
        moves[backend] = SwapMove(STEP, P_SWAP, backend)
        moves[backend].prepare(system)  # compile outside the timing
        walkers[backend] = Walkers.start(system, x.clone(), torch.ones(replicas, dtype=torch.float64))
        moves[backend](walkers[backend], system, gen)

    def sweep(backend):
        return lambda: moves[backend](walkers[backend], system, gen)

    t_md = float("inf")
    t_sweep = {k: float("inf") for k in moves}
    for _ in range(repeats):
        t_md = min(t_md, best_time(md_step, 1, min_seconds))
        for backend in moves:
            seconds = min_seconds if backend == "numba" else min(min_seconds, 0.05)
            t_sweep[backend] = min(t_sweep[backend], best_time(sweep(backend), 1, seconds))
    counts = moves["numba"].counts.sum(0)
    row = {"system": name, "n_particles": system.n_particles, "replicas": replicas, "md_step_s": t_md,
           "acceptance_displacement": float(counts[1] / counts[0]),
           "acceptance_swap": float(counts[3] / counts[2]) if float(counts[2]) else None}
    for backend, t in t_sweep.items():
        row[f"sweep_{backend}_s"] = t
        row[f"ratio_{backend}"] = t / t_md
    return row


def markdown(rows: list[dict]) -> str:
    has_torch = all("sweep_torch_s" in r for r in rows)
    head = "| system | N | replicas | MD step (ms) | sweep numba (ms) | sweep/MD numba |"
    head += " sweep torch (ms) | sweep/MD torch |" if has_torch else ""
    lines = [head, "|" + "---|" * (8 if has_torch else 6)]
    for r in rows:
        line = (f"| {r['system']} | {r['n_particles']} | {r['replicas']} | {1e3 * r['md_step_s']:.3g} | "
                f"{1e3 * r['sweep_numba_s']:.3g} | {r['ratio_numba']:.2f} |")
        if has_torch:
            line += f" {1e3 * r['sweep_torch_s']:.3g} | {r['ratio_torch']:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; the numba sweep "
                                                                 "is single-threaded)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions, best kept")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="duration of one timed batch")
    parser.add_argument("--quick", action="store_true", help="2 repetitions of 0.05 s")
    parser.add_argument("--no-torch-sweep", action="store_true", help="skip the (slow) torch-backend sweep")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.min_seconds = 2, 0.05
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = [measure(name, params, b, args.repeats, args.min_seconds, not args.no_torch_sweep)
            for name, params in CASES for b in REPLICAS]
    print(markdown(rows))
    worst = max(r["ratio_numba"] for r in rows)
    print(f"\nsweep = N attempted moves per replica (p_swap = {P_SWAP}); MD step = energy_and_forces + BAOAB, "
          f"float64, Verlet list. Goal: sweep/MD <= {TARGET:g}; worst numba ratio {worst:.2f} "
          f"({'met' if worst <= TARGET else 'NOT met'}). threads={args.threads}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} "
          f"before / {os.getloadavg()[0]:.1f} after")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "threads": args.threads, "p_swap": P_SWAP, "load_before": load,
                       "load_after": os.getloadavg()}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
