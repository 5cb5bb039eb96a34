"""The runner: cells → sampler.run(system) → snapshots → metrics → one record per cell.

For every snapshot the runner turns the samples so far into :class:`Samples` and evaluates
the cell's metrics on them; the list of (cost, wall seconds, metrics) is the cell's
accuracy-versus-cost curve. The ledger's clock is stopped while metrics are computed, so
analysis is never charged to the sampler. Any exception inside a cell (including
non-finite energies) fails that cell only, with a diagnostic in ``error``; ``run_matrix``
runs every cell in a child process (:mod:`boltzbench.isolation`), so a cell that kills its
process or hangs past its timeout fails only itself too.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from boltzbench.contracts import Budget, Samples, Snapshot, System, cell_generator
from boltzbench.matrix import Cell, CellFilter, Component, Matrix
from boltzbench.metrics.observables import energy_histogram
from boltzbench.registry import get_metric, get_sampler, get_system, registry
from boltzbench.store import SCHEMA, Store, json_problem, to_jsonable, write_json_atomic

PACKAGES = ("boltzbench", "torch", "numpy", "scipy", "pot", "openmm")


class NonFiniteEnergy(RuntimeError):
    """A sampler produced NaN or infinite energies or positions, or NaN or +inf log-weights."""


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def component_origin(kind: str, name: str) -> dict[str, Any]:
    """Where a system's or sampler's class comes from: its module, and the installed
    distribution that provides it with its version (None for a module found on PYTHONPATH
    or in the working folder). A plugin's version thus travels with every record."""
    try:
        module = registry(kind).load(name).__module__
    except Exception as exc:  # a plugin that no longer imports: say so, keep the record
        return {"module": None, "error": f"{type(exc).__name__}: {exc}"}
    top = module.split(".")[0]
    dists = _distributions().get(top, [])
    dist = dists[0] if dists else None
    return {"module": module, "distribution": dist, "version": version(dist) if dist else None}


#: the folder holding the boltzbench package: a git checkout's top when run from one
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def source_revision(root: Path = SOURCE_ROOT) -> dict[str, Any] | None:
    """The git commit of the checkout whose top is ``root`` (the boltzbench source a cell ran,
    when it runs from an editable install), and whether tracked files differ from it
    (``modified``): the version number alone does not say which code produced a result.
    None when ``root`` is not the top of a checkout (an installed wheel, boltzbench inside
    some other repository) or git is absent."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(root).resolve():
            return None
        return {"commit": git("rev-parse", "HEAD"),
                "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str = "cpu") -> dict[str, Any]:
    """Versions, source commit, threads and device: what a record needs to be reproduced."""
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
        "source": source_revision(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda": torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else None,
    }


#: rows analysed at a time by :func:`to_samples`: bounds the temporary memory of the
#: observables (a 10⁷-sample flow snapshot would otherwise cast and analyse all at once)
ANALYSIS_ROWS = 1 << 16


def _analyse(system: System, rows: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Observables and state labels of configurations (n, dof), as NumPy arrays."""
    observables = {k: v.detach().cpu().numpy() for k, v in system.observables(rows).items()}
    return observables, system.state_of(rows).cpu().numpy()


def to_samples(snapshot: Snapshot, system: System, previous: Samples | None = None) -> Samples:
    """The NumPy view of a snapshot, with the system's observables and state labels.

    When the snapshot extends ``previous`` (the same chains, whose first T' draws are
    ``previous.positions``: a chain sampler's growing trace), only the new draws' observables
    and states are computed; recomputing them all at every snapshot made the analysis of a
    cell quadratic in its snapshots (a ternary2d MD cell of the default matrix spent more
    time on pair distances than on sampling). ``positions`` is a copy: a sampler may move the
    tensor it yielded in place, and the next snapshot would then seem to extend this one.
    Positions keep the snapshot's dtype (a flow stores its float32 output); observables and
    states are computed in the system's dtype."""
    positions = snapshot.positions.detach().cpu().numpy().copy()
    start = 0
    if (previous is not None and positions.shape[1:] == previous.positions.shape[1:]
            and len(positions) >= len(previous.positions)
            and np.array_equal(positions[:len(previous.positions)], previous.positions)):
        start = len(previous.positions)
    if start and start == len(positions):  # no new draw since the previous snapshot
        observables, states = previous.observables, previous.states
    else:
        new = torch.from_numpy(positions[start:])  # the copy, as the observables may be views of it
        lead = new.shape[:2]
        parts = [_analyse(system, rows.to(system.dtype))  # a flow may store float32 positions
                 for rows in new.reshape(-1, new.shape[-1]).split(ANALYSIS_ROWS)]
        observables = {k: np.concatenate([obs[k] for obs, _ in parts]).reshape(*lead, *parts[0][0][k].shape[1:])
                       for k in parts[0][0]}
        states = np.concatenate([st for _, st in parts]).reshape(lead)
        if start:
            observables = {k: np.concatenate([previous.observables[k], v]) for k, v in observables.items()}
            states = np.concatenate([previous.states, states])
    return Samples(
        positions=positions,
        energies=snapshot.energies.detach().cpu().numpy(),
        log_weights=None if snapshot.log_weights is None else snapshot.log_weights.detach().cpu().numpy(),
        observables=observables,
        states=states,
        families=None if snapshot.families is None else snapshot.families.detach().cpu().numpy(),
    )


def _check_finite(snapshot: Snapshot) -> None:
    bad = ~(torch.isfinite(snapshot.energies) & torch.isfinite(snapshot.positions).all(dim=-1))
    if bad.any():
        raise NonFiniteEnergy(
            f"non-finite energies or positions in {int(bad.sum())} of {bad.numel()} samples "
            f"by cost {snapshot.cost['total_evals']:.4g} evaluations: the sampler diverged "
            f"(for MD, a smaller dt usually cures this)")
    if snapshot.log_weights is not None:  # −inf is a legal zero weight; NaN and +inf are not
        log_w = snapshot.log_weights
        bad_w = torch.isnan(log_w) | (log_w == math.inf)
        if bad_w.any() or not (log_w > -math.inf).any():
            what = (f"NaN or +inf log-weights in {int(bad_w.sum())} of {bad_w.numel()} samples" if bad_w.any()
                    else f"every one of the {log_w.numel()} log-weights is -inf (no sample carries weight)")
            raise NonFiniteEnergy(f"{what} by cost {snapshot.cost['total_evals']:.4g} evaluations: "
                                  f"the sampler's importance weights are undefined")


def _metric_value(name: str, value: Any) -> float | None:
    """A metric's value as the record keeps it: a float, or None for undefined (None, NaN,
    ±inf); anything else is the metric's error, named."""
    if value is None:
        return None
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"metric {name!r} returned {value!r}, not a number or None")
    return float(value) if math.isfinite(value) else None


def _json_diagnostics(diagnostics: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's diagnostics as JSON values (arrays and tensors become lists); raises
    TypeError naming the first value that is none."""
    converted = to_jsonable(diagnostics)
    problem = json_problem(converted, "diagnostics")
    if problem:
        raise TypeError(f"the sampler's snapshot {problem}: diagnostics must be JSON values (numbers, "
                        "strings, lists, dicts; NumPy arrays and torch tensors are converted)")
    return converted


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


def _record(cell: Cell, matrix: dict[str, Any] | None, *, status: str, error: str | None,
            cost: dict[str, Any], curve: list, final: dict[str, Any], reference: Any,
            started: dt.datetime) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "cell_id": cell.cell_id,
        "status": status,
        "error": error,
        **cell.spec(),
        "matrix": matrix or {},
        "cost": cost,
        "curve": curve,
        "final": final,
        "reference": reference if reference is None or isinstance(reference, dict)
        else {"exact": reference.exact, "provenance": reference.provenance,
              "energy_histogram": energy_histogram(reference.energies)},
        "env": {**environment(cell.sampler.params.get("device") or cell.system.params.get("device") or "cpu"),
                "components": {"system": component_origin("systems", cell.system.name),
                               "sampler": component_origin("samplers", cell.sampler.name)}},
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def failed_record(cell: Cell, matrix: dict[str, Any] | None, error: str, *, status: str = "failed",
                  threads: int | None = None) -> dict[str, Any]:
    """The record of a cell that ended outside ``run_cell`` (its process died or was killed,
    or its worker died): no curve. ``threads``: the torch threads the cell's process had."""
    record = _record(cell, matrix, status=status, error=error, cost={}, curve=[],
                     final={"metrics": {}, "diagnostics": {}}, reference=None,
                     started=dt.datetime.now(dt.timezone.utc))
    if threads is not None:
        record["env"]["torch_threads"] = threads
    return record


def run_cell(cell: Cell, *, matrix: dict[str, Any] | None = None, timeout_s: float | None = None,
             on_progress: Callable[[float], None] | None = None) -> CellOutcome:
    """Run one cell to its budget; never raises for a failure inside the cell.

    ``timeout_s`` is a wall-clock limit (metrics included). It is cooperative: the ledger
    gets a deadline after which every budget counts as exhausted, so the sampler stops at
    its next step; the cell is then recorded as ``timeout`` with its curve so far.
    """
    started = dt.datetime.now(dt.timezone.utc)
    system = get_system(cell.system.name, **cell.system.params)
    sampler = get_sampler(cell.sampler.name, **cell.sampler.params)
    metrics = {name: get_metric(name) for name in cell.metrics}
    ledger = system.ledger
    if timeout_s is not None:
        ledger.deadline = time.monotonic() + timeout_s
    curve: list[dict[str, Any]] = []
    final: dict[str, Any] = {"metrics": {}, "diagnostics": {}}
    samples, reference, status, error = None, None, "ok", None
    try:
        try:
            reference = system.reference()
        except LookupError as exc:  # no reference: run anyway, metrics that need one give None
            reference = {"missing": str(exc)}
        snapshots = sampler.run(system, cell.budget, cell_generator(system, cell.seed))
        while True:
            ledger.start()
            try:
                snapshot = next(snapshots, None)
            finally:
                ledger.stop()
            if snapshot is None:
                break
            _check_finite(snapshot)
            samples = to_samples(snapshot, system, samples)
            values = {name: None if isinstance(reference, dict) and getattr(metric, "needs_reference", True)
                      else _metric_value(name, metric(samples, reference)) for name, metric in metrics.items()}
            # the cost is the ledger's, whatever the snapshot says (its clock is stopped here)
            curve.append({"cost": ledger.total_evals, "wall_s": ledger.total_wall_s, "metrics": values})
            final = {"metrics": values, "diagnostics": _json_diagnostics(snapshot.diagnostics)}
            if on_progress is not None:
                on_progress(min(cell.budget.used(ledger), 1.0))
        if ledger.past_deadline():
            status = "timeout"
            error = (f"per-cell timeout of {timeout_s:g} s reached at cost {ledger.total_evals:.4g} "
                     f"({100 * cell.budget.used(ledger):.0f} % of the budget); the curve so far is kept")
        elif not curve:
            raise RuntimeError(f"sampler {cell.sampler.name!r} yielded no snapshot")
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the matrix
        status = "failed"
        where = traceback.extract_tb(exc.__traceback__)[-1]
        error = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
    record = _record(cell, matrix, status=status, error=error, cost=ledger.as_dict(), curve=curve,
                     final=final, reference=reference, started=started)
    return CellOutcome(record, samples if status == "ok" else None)


def sample_arrays(samples: Samples) -> dict[str, np.ndarray]:
    """What ``keep_samples`` writes beside a record."""
    arrays = {"positions": samples.positions, "energies": samples.energies, "states": samples.states,
              **{f"observables/{k}": v for k, v in samples.observables.items()}}
    if samples.log_weights is not None:
        arrays["log_weights"] = samples.log_weights
    if samples.families is not None:
        arrays["families"] = samples.families
    return arrays


@dataclass
class RunSummary:
    out: Path
    cells: int
    skipped: int
    ok: int
    failed: int  # failed or timed out, of the cells run now
    skipped_failed: int = 0  # failed or timed out, of the finished cells that were skipped
    rerun_for_samples: int = 0  # ok cells rerun because the matrix keeps samples and theirs are missing

    @property
    def failures(self) -> int:
        """Cells of the matrix whose record is failed or timeout after this run."""
        return self.failed + self.skipped_failed


class SchedulerError(ValueError):
    """The Dask scheduler cannot be reached or started (bad ``--scheduler`` input)."""


SCHEDULER_HELP = ("serial (one cell after the other), local (a Dask LocalCluster) or a Dask address such as "
                  "tcp://host:8786")


def check_scheduler(scheduler: str) -> None:
    if scheduler not in ("serial", "local") and "://" not in scheduler:
        raise ValueError(f"--scheduler: unknown scheduler {scheduler!r}; valid choices: {SCHEDULER_HELP}")


def build_missing_references(matrix: Matrix, out: str | Path, *, retry_failed: bool = False,
                             progress: bool = True, log: Callable[[str], None] = print,
                             only: CellFilter | None = None) -> list[Path]:
    """Build, by its recipe, the reference of every system with unfinished cells that has
    none yet (into ``$BOLTZBENCH_REFERENCES``); returns the written provenance paths.

    Runs in this process before the cells start, so that every cell finds its reference;
    on a remote Dask cluster, point ``$BOLTZBENCH_REFERENCES`` at a shared folder.
    """
    from boltzbench.systems.references import ReferenceMissing, build_command, build_reference

    store = Store(out)
    cells = only.cells(matrix.cells()) if only else matrix.cells()
    todo = {cell.system.label: cell.system for cell in cells
            if not store.is_done(cell.cell_id, retry_failed, need_samples=matrix.keep_samples)}
    built = []
    for component in todo.values():
        system = get_system(component.name, **component.params)
        if not system.reference_recipe:
            continue
        try:
            system.reference()
        except ReferenceMissing:
            log(f"building the missing reference: {build_command(system)}")
            built.append(build_reference(system, progress=progress))
    return built


def check_run_options(*, workers: int | None = None, timeout_s: float | None = None, threads: int = 1) -> None:
    """Reject execution options that would not run as meant; each error names its option."""
    for option, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{option}: must be a whole number ≥ 1, got {value!r}")
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                  or not math.isfinite(timeout_s) or timeout_s <= 0):
        raise ValueError(f"--cell-timeout: must be a finite number of seconds > 0, got {timeout_s!r} "
                         "(leave it out for no timeout)")


def check_out(out: str | Path) -> None:
    """Raise ValueError (naming --out) unless results can be written to ``out``: a writable
    folder, or a path that does not exist yet below a writable folder (created by the run)."""
    if not str(out).strip():
        raise ValueError("--out: must be a folder path, got an empty one")
    path = Path(out)
    try:
        existing = path.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            what = "is a file" if existing == path.absolute() else f"lies below {existing}, which is a file"
            raise ValueError(f"--out {path}: {what}, not a folder")
        for folder in (existing, existing / "records"):
            if folder.exists() and not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
                raise ValueError(f"--out {path}: cannot write in {folder} (read-only or not a folder)")
    except OSError as exc:  # e.g. a parent folder we may not look into
        raise ValueError(f"--out {path}: cannot use this folder ({exc.strerror or exc})") from None


def _plan(store: Store, cells: list[Cell], retry_failed: bool, need_samples: bool) -> tuple[list[Cell], int, int]:
    """(cells to run, finished cells that failed, ok cells rerun only for their missing samples)."""
    todo, failed, for_samples = [], 0, 0
    for cell in cells:
        if store.is_done(cell.cell_id, retry_failed, need_samples=need_samples):
            failed += store.load(cell.cell_id)["status"] != "ok"
        else:
            todo.append(cell)
            for_samples += need_samples and store.is_done(cell.cell_id, retry_failed)
    return todo, failed, for_samples


def run_matrix(matrix: Matrix, out: str | Path, *, scheduler: str = "serial", workers: int | None = None,
               timeout_s: float | None = None, progress: bool = True, retry_failed: bool = False,
               threads: int = 1, only: CellFilter | None = None) -> RunSummary:
    """Run every cell of ``matrix`` not yet finished in ``out``; resumable at any point.

    ``only`` (``--system``/``--sampler``/``--seed``) runs the matching cells alone: a partial
    run of the same matrix, so ``OUT/matrix.json`` still lists every cell id of the matrix
    (the report shows the matrix that was run, and a later run fills in the rest); a
    pattern that matches nothing raises ValueError before anything is written.

    ``scheduler``: "serial" runs cells one after the other; "local" or a Dask address runs
    one Dask task per cell (see :mod:`boltzbench.distributed`). Either way each cell runs in
    a child process with ``threads`` torch threads (:func:`boltzbench.isolation.run_cell_in_process`), so a cell
    that dies or hangs past ``timeout_s`` becomes a ``failed`` or ``timeout`` record.

    Before any cell: bad options or ``out`` raise ValueError, a scheduler that cannot be
    reached or started raises :class:`SchedulerError` (nothing written), and a folder in use
    by another run raises :class:`~boltzbench.store.FolderBusy`. The folder stays locked for
    the run; under the lock, temporary files of killed runs are removed and
    ``OUT/matrix.json`` (name, source, cell ids) is written. A finished cell counts as done
    unless it failed and ``retry_failed``, or it is ok without samples and the matrix keeps them.
    """
    check_scheduler(scheduler)
    check_run_options(workers=workers, timeout_s=timeout_s, threads=threads)
    check_out(out)
    store = Store(out)
    all_cells = matrix.cells()
    cells = only.cells(all_cells) if only else all_cells
    info = {"name": matrix.name, "baseline": matrix.baseline, "source": matrix.source}
    counts = {"ok": 0, "failed": 0}
    with _executor(scheduler, workers) as execute, store.lock():
        store.remove_partial()
        write_json_atomic(store.out / "matrix.json", {"name": matrix.name, "source": matrix.source,
                                                      "cell_ids": [cell.cell_id for cell in all_cells]})
        todo, skipped_failed, for_samples = _plan(store, cells, retry_failed, matrix.keep_samples)
        with _progress_bar(len(todo), progress) as bar:
            for cell, outcome in execute(todo, info, timeout_s, threads, matrix.keep_samples, bar):
                keep = matrix.keep_samples and outcome.samples is not None
                try:
                    store.write(outcome.record, sample_arrays(outcome.samples) if keep else None)
                except (TypeError, ValueError) as exc:  # a record that cannot be JSON: the cell's failure
                    outcome = CellOutcome(failed_record(cell, info, f"its record could not be written: {exc}",
                                                        threads=threads), None)
                    store.write(outcome.record)
                ok = outcome.record["status"] == "ok"
                counts["ok" if ok else "failed"] += 1
                if not ok:
                    bar.write(f"cell {cell} {outcome.record['status']}: {outcome.record['error']}")
                bar.set_postfix_str(f"{counts['failed']} failed" if counts["failed"] else "")
    return RunSummary(Path(out), len(cells), len(cells) - len(todo), counts["ok"], counts["failed"],
                      skipped_failed=skipped_failed, rerun_for_samples=for_samples)


@contextmanager
def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    with tqdm(total=total, disable=not enabled, unit="cell", dynamic_ncols=True,
              mininterval=0.2 if interactive else 10.0,
              bar_format="{l_bar}{bar}| {n:.1f}/{total} cells [{elapsed}<{remaining}]{postfix}") as bar:
        yield bar


@contextmanager
def _executor(scheduler: str, workers: int | None):
    """A function (cells, matrix, timeout, threads, keep_samples, bar) → iterator of
    (cell, outcome), moving the bar; a Dask scheduler is reached or started on entry."""
    if scheduler == "serial":
        from boltzbench.isolation import run_cell_in_process

        def execute(cells, info, timeout_s, threads, keep_samples, bar):
            for cell in cells:
                bar.set_description_str(str(cell))
                start, done = bar.n, 0.0

                def advance(fraction: float) -> None:  # progress within the cell, from its process
                    nonlocal done
                    bar.update(fraction - done)
                    done = fraction

                outcome = run_cell_in_process(cell, matrix=info, timeout_s=timeout_s, threads=threads,
                                              keep_samples=keep_samples, on_progress=advance)
                bar.update(start + 1 - bar.n)
                yield cell, outcome
        yield execute
        return

    from boltzbench.distributed import dask_client, run_cells

    with dask_client(scheduler, workers) as client:
        n_workers = len(client.scheduler_info()["workers"])

        def execute(cells, info, timeout_s, threads, keep_samples, bar):
            bar.set_description_str(f"{n_workers} Dask workers")
            for cell, outcome in run_cells(client, cells, info, timeout_s, threads=threads,
                                           keep_samples=keep_samples):
                bar.update(1)  # the bar itself shows cells done/total, the ETA and the failures
                yield cell, outcome
        yield execute
