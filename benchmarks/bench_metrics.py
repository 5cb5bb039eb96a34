"""Benchmark: metric cost on a 10⁵-sample cell, and report cost over 100 cells.

Run ``python -m boltzbench.benchmarks.bench_metrics`` (add ``--cells N`` or ``--samples N``
to change the sizes). Targets (issue 6): all metrics of a 10⁵-sample cell in under 10 s,
and a report (Markdown + HTML, every figure) over 100 cells in under 60 s, on 2 cores.

The cell is synthetic but shaped like real ones: 1000 draws × 100 chains of a 2D
double-well-like system with x1, φ/ψ and 6 pair distances per configuration, once as
chains and once as weighted samples. The 100 records are copies of a real record (one
small double-well cell run here), relabelled over 5 systems × 4 samplers × 5 seeds with
synthetic curves, PT/PA diagnostics, and kept samples for one system.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from boltzbench.contracts import Budget, Reference, Samples
from boltzbench.registry import BUILTIN, get_metric


def synthetic_cell(n_steps: int, n_chains: int, weighted: bool, seed: int = 0) -> tuple[Samples, Reference]:
    rng = np.random.default_rng(seed)
    n = n_steps * n_chains
    x = rng.normal(size=(n_steps, n_chains, 2)) + np.array([-2.5, 0.0])
    energies = (x[..., 0] ** 4 / 4 - 3 * x[..., 0] ** 2 + x[..., 0] + x[..., 1] ** 2 / 2)
    angles = rng.uniform(-math.pi, math.pi, size=(2, n_steps, n_chains))
    pairs = rng.uniform(0.9, 3.0, size=(n_steps, n_chains, 6))
    samples = Samples(
        positions=x, energies=energies,
        log_weights=rng.normal(size=(n_steps, n_chains)) if weighted else None,
        observables={"x1": x[..., 0], "x2": x[..., 1], "phi": angles[0], "psi": angles[1],
                     "pair_distance/AA": pairs},
        states=(x[..., 0] > -2.5).astype(int),
    )
    y = rng.normal(size=(n, 2)) + np.array([-2.4, 0.0])
    grid = np.linspace(-6, 6, 20_001)
    cdf = 0.5 * (1 + np.vectorize(math.erf)((grid + 2.4) / math.sqrt(2)))
    reference = Reference(
        energies=(y[:, 0] ** 4 / 4 - 3 * y[:, 0] ** 2 + y[:, 0] + y[:, 1] ** 2 / 2),
        observables={"x1": y[:, 0], "x2": y[:, 1], "positions": y,
                     "phi": rng.uniform(-math.pi, math.pi, n), "psi": rng.uniform(-math.pi, math.pi, n),
                     "pair_distance/AA": rng.uniform(0.9, 3.0, n * 6)},
        exact={"mean_energy": -10.0, "delta_f": 4.8}, cdfs={"x1": (grid, cdf)}, provenance={"method": "bench"})
    return samples, reference


def time_metrics(samples: Samples, reference: Reference) -> tuple[dict[str, float], float]:
    times = {}
    start = time.perf_counter()
    for name in BUILTIN["metrics"]:
        metric = get_metric(name)
        t0 = time.perf_counter()
        metric(samples, reference)
        times[name] = time.perf_counter() - t0
    return times, time.perf_counter() - start


def template_record() -> dict:
    """One real record (a tiny double-well MC cell run here) to copy."""
    from boltzbench.runner import make_cell, run_cell

    cell = make_cell("double_well", "mc", budget=Budget(max_evals=20_000, n_snapshots=20),
                     sampler_params={"n_chains": 16})
    return run_cell(cell, matrix={"name": "bench", "baseline": "md", "source": "bench"}).record


def write_results(folder: Path, n_cells: int, seed: int = 0) -> int:
    """n_cells records (5 systems × 4 samplers × seeds) from the template; returns the count."""
    rng = np.random.default_rng(seed)
    template = template_record()
    records_dir = folder / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    systems = [f"system{i}" for i in range(5)]
    samplers = ["md", "mc", "pt", "pa"]
    seeds = max(1, n_cells // (len(systems) * len(samplers)))
    count = 0
    for s_index, system in enumerate(systems):
        for k, sampler in enumerate(samplers):
            for seed_ in range(seeds):
                record = copy.deepcopy(template)
                record["system"]["label"] = system
                record["sampler"]["label"] = record["sampler"]["name"] = sampler
                record["seed"] = seed_
                record["cell_id"] = f"{s_index}{k}{seed_:04d}" + "0" * 10
                rate = 1.0 + k
                for point in record["curve"]:
                    for metric, value in point["metrics"].items():
                        if value is not None:
                            noise = 1 + 0.05 * rng.standard_normal()
                            point["metrics"][metric] = (value * rate if metric == "ess" else value / rate) * noise
                record["final"]["metrics"] = record["curve"][-1]["metrics"]
                if sampler == "pt":
                    record["final"]["diagnostics"] = {"betas": [1.0, 0.7, 0.5, 0.3], "round_trips": 4,
                                                      "pair_acceptance": list(rng.uniform(0.2, 0.6, 3))}
                if sampler == "pa":
                    record["final"]["diagnostics"] = {"log_z_ratio": -2.0, "log_z_ratio_error": 0.1, "schedule": [
                        {"beta": b, "ess_fraction": 0.9, "family_entropy": 5 - 2 * b, "n_families": 100}
                        for b in np.linspace(0.1, 1, 20)]}
                if s_index == 0:
                    name = f"{record['cell_id']}.npz"
                    np.savez_compressed(records_dir / name, energies=rng.normal(size=(100, 100)),
                                        positions=rng.normal(size=(100, 100, 2)))
                    record["samples_file"] = name
                (records_dir / f"{record['cell_id']}.json").write_text(json.dumps(record))
                count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000, help="samples in the metric cell")
    parser.add_argument("--cells", type=int, default=100, help="cells in the report")
    args = parser.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}")

    n_chains = 100
    print(f"\n## Metrics on one cell of {args.samples} samples (target: all under 10 s)\n")
    print("| metric | chains (s) | weighted (s) |\n|---|---|---|")
    chains = time_metrics(*synthetic_cell(args.samples // n_chains, n_chains, weighted=False))
    weighted = time_metrics(*synthetic_cell(args.samples // n_chains, n_chains, weighted=True))
    for name in chains[0]:
        print(f"| {name} | {chains[0][name]:.3f} | {weighted[0][name]:.3f} |")
    print(f"| **all** | **{chains[1]:.2f}** | **{weighted[1]:.2f}** |")

    from boltzbench.reports.markdown import generate_report

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n = write_results(folder, args.cells)
        start = time.perf_counter()
        outcome = generate_report(folder)
        elapsed = time.perf_counter() - start
        figures = len(list(outcome.markdown.parent.glob("*.png")))
        print(f"\n## Report over {n} cells (target: under 60 s)\n")
        print(f"report.md + index.html with {figures} figures: {elapsed:.1f} s "
              f"(index.html {outcome.html.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
