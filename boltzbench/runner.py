"""The runner: cells → sampler.run(system) → snapshots → metrics → one record per cell.

For every snapshot the runner turns the samples so far into :class:`Samples` and evaluates
the cell's metrics on them; the list of (cost, wall seconds, metrics) is the cell's
accuracy-versus-cost curve. The ledger's clock is stopped while metrics are computed, so
analysis is never charged to the sampler. Any exception inside a cell (including
non-finite energies) fails that cell only, with a diagnostic in ``error``.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from boltzbench.contracts import Budget, Samples, Snapshot, System
from boltzbench.matrix import Cell, Component, Matrix
from boltzbench.registry import get_metric, get_sampler, get_system
from boltzbench.store import SCHEMA, Store

PACKAGES = ("boltzbench", "torch", "numpy", "scipy", "pot", "openmm")


class NonFiniteEnergy(RuntimeError):
    """A sampler produced NaN or infinite energies or positions."""


def environment() -> dict[str, Any]:
    """Versions, threads and device: what a record needs to be reproduced."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def to_samples(snapshot: Snapshot, system: System) -> Samples:
    """The NumPy view of a snapshot, with the system's observables and state labels."""
    positions = snapshot.positions
    lead = positions.shape[:2]
    flat = positions.reshape(-1, positions.shape[-1])
    observables = {k: v.reshape(*lead, *v.shape[1:]).detach().cpu().numpy()
                   for k, v in system.observables(flat).items()}
    return Samples(
        positions=positions.detach().cpu().numpy(),
        energies=snapshot.energies.detach().cpu().numpy(),
        log_weights=None if snapshot.log_weights is None else snapshot.log_weights.detach().cpu().numpy(),
        observables=observables,
        states=system.state_of(flat).reshape(lead).cpu().numpy(),
    )


def _check_finite(snapshot: Snapshot) -> None:
    bad = ~(torch.isfinite(snapshot.energies) & torch.isfinite(snapshot.positions).all(dim=-1))
    if bad.any():
        raise NonFiniteEnergy(
            f"non-finite energies or positions in {int(bad.sum())} of {bad.numel()} samples "
            f"by cost {snapshot.cost['total_evals']:.4g} evaluations: the sampler diverged "
            f"(for MD, a smaller dt usually cures this)")


@dataclass
class CellOutcome:
    """A finished cell: its record and, if it got that far, its final samples."""

    record: dict[str, Any]
    samples: Samples | None


def make_cell(system: str, sampler: str, *, seed: int = 0, budget: Budget | None = None,
              system_params: dict | None = None, sampler_params: dict | None = None,
              metrics: tuple[str, ...] | None = None) -> Cell:
    """A cell from names and parameters (the Python-API way to describe one run)."""
    sys_obj = get_system(system, **(system_params or {}))
    smp_obj = get_sampler(sampler, **(sampler_params or {}))
    return Cell(
        system=Component(system, system, sys_obj.params()),
        sampler=Component(sampler, sampler, smp_obj.params()),
        seed=seed,
        budget=budget or Budget(max_evals=100_000),
        metrics=tuple(metrics or type(sys_obj).default_metrics),
    )


def run_cell(cell: Cell, *, matrix: dict[str, Any] | None = None,
             on_progress: Callable[[float], None] | None = None) -> CellOutcome:
    """Run one cell to its budget; never raises for a failure inside the cell."""
    started = dt.datetime.now(dt.timezone.utc)
    system = get_system(cell.system.name, **cell.system.params)
    sampler = get_sampler(cell.sampler.name, **cell.sampler.params)
    metrics = {name: get_metric(name) for name in cell.metrics}
    ledger = system.ledger
    curve: list[dict[str, Any]] = []
    final: dict[str, Any] = {"metrics": {}, "diagnostics": {}}
    samples, reference, status, error = None, None, "ok", None
    try:
        reference = system.reference()
        snapshots = sampler.run(system, cell.budget, torch.Generator().manual_seed(cell.seed))
        while True:
            ledger.start()
            try:
                snapshot = next(snapshots, None)
            finally:
                ledger.stop()
            if snapshot is None:
                break
            _check_finite(snapshot)
            samples = to_samples(snapshot, system)
            values = {name: metric(samples, reference) for name, metric in metrics.items()}
            curve.append({"cost": snapshot.cost["total_evals"], "wall_s": snapshot.cost["total_wall_s"],
                          "metrics": values})
            final = {"metrics": values, "diagnostics": snapshot.diagnostics}
            if on_progress is not None:
                on_progress(min(cell.budget.used(ledger), 1.0))
        if not curve:
            raise RuntimeError(f"sampler {cell.sampler.name!r} yielded no snapshot")
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the matrix
        status = "failed"
        where = traceback.extract_tb(exc.__traceback__)[-1]
        error = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
    record = {
        "schema": SCHEMA,
        "cell_id": cell.cell_id,
        "status": status,
        "error": error,
        **cell.spec(),
        "matrix": matrix or {},
        "cost": ledger.as_dict(),
        "curve": curve,
        "final": final,
        "reference": None if reference is None else {"exact": reference.exact,
                                                     "provenance": reference.provenance},
        "env": environment(),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return CellOutcome(record, samples if status == "ok" else None)


def sample_arrays(samples: Samples) -> dict[str, np.ndarray]:
    """What ``keep_samples`` writes beside a record."""
    arrays = {"positions": samples.positions, "energies": samples.energies}
    if samples.log_weights is not None:
        arrays["log_weights"] = samples.log_weights
    return arrays


@dataclass
class RunSummary:
    out: Path
    cells: int
    skipped: int
    ok: int
    failed: int


def run_matrix(matrix: Matrix, out: str | Path, *, progress: bool = True,
               retry_failed: bool = False) -> RunSummary:
    """Run every cell of ``matrix`` not yet finished in ``out``; resumable at any point."""
    from tqdm.auto import tqdm

    store = Store(out)
    store.remove_partial()
    cells = matrix.cells()
    todo = [cell for cell in cells if not store.is_done(cell.cell_id, retry_failed)]
    info = {"name": matrix.name, "baseline": matrix.baseline, "source": matrix.source}
    ok = failed = 0
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(todo), disable=not progress, unit="cell", dynamic_ncols=True,
               mininterval=0.2 if interactive else 10.0,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} cells [{elapsed}<{remaining}]{postfix}")
    with bar:
        for cell in todo:
            bar.set_postfix_str(str(cell))
            start, done = bar.n, 0.0

            def advance(fraction: float) -> None:
                nonlocal done
                bar.update(fraction - done)
                done = fraction

            outcome = run_cell(cell, matrix=info, on_progress=advance)
            keep = matrix.keep_samples and outcome.samples is not None
            store.write(outcome.record, sample_arrays(outcome.samples) if keep else None)
            bar.update(start + 1 - bar.n)
            if outcome.record["status"] == "ok":
                ok += 1
            else:
                failed += 1
                bar.write(f"cell {cell} failed: {outcome.record['error']}")
    return RunSummary(Path(out), len(cells), len(cells) - len(todo), ok, failed)
