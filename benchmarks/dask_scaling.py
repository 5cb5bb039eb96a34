"""Scaling of the Dask runner: the same CPU-bound matrix on 1 and on 2 local workers.

    python -m boltzbench.benchmarks.dask_scaling [--cells 8] [--evals 3000000]

Prints the wall time of each run and their ratio (the issue's target: ≥ 1.7× with 2
workers on 2 cores). Both runs happen in one invocation, on fresh output folders.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from boltzbench import parse_matrix, run_matrix


def scaling_matrix(cells: int, evals: float):
    return parse_matrix({
        "name": "dask-scaling", "seeds": list(range(cells)),
        "budget": {"max_evals": evals, "n_snapshots": 2},
        "systems": [{"name": "double_well"}],
        "samplers": [{"name": "mc", "params": {"n_chains": 64}}],
    })


def timed_run(matrix, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = run_matrix(matrix, out, scheduler="local", workers=workers, progress=False)
        elapsed = time.perf_counter() - started
    assert summary.ok == len(matrix.cells()), summary
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--evals", type=float, default=3_000_000)
    args = parser.parse_args()
    matrix = scaling_matrix(args.cells, args.evals)
    one, two = timed_run(matrix, 1), timed_run(matrix, 2)
    print(f"| workers | wall s ({args.cells} cells × {args.evals:.3g} evaluations) |\n|---|---|")
    print(f"| 1 | {one:.1f} |\n| 2 | {two:.1f} |")
    print(f"speedup with 2 workers: {one / two:.2f}×")


if __name__ == "__main__":
    main()
