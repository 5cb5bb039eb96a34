"""Running cells on Dask (``dask.distributed``): one task per cell.

* ``local`` starts a :class:`~distributed.LocalCluster` of worker *processes*, one thread
  each, without a dashboard; a start that fails is tried again (``START_ATTEMPTS``).
* ``tcp://HOST:PORT`` (or any Dask address) connects to an existing scheduler; an
  unreachable address fails within ``connect_timeout`` seconds, before anything is written.
* Each task runs its cell in a child process of the worker, exactly as the serial
  scheduler does (:func:`~boltzbench.isolation.run_cell_in_process`: the same torch threads,
  a death or a hang past the timeout becomes the cell's record, the worker lives on).
* Workers return records; the client alone writes them (atomically, once each).
* A worker that dies while running a cell costs that cell one retry: the scheduler's
  ``allowed-failures`` is set to 1 and ``worker-saturation`` to 1.0 for the local cluster
  (set both in the config of a remote scheduler for the same behaviour). A second death
  raises ``KilledWorker``, recorded as a failed cell.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import dask
from distributed import Client, LocalCluster, as_completed
from distributed.scheduler import KilledWorker

from boltzbench.matrix import Cell
from boltzbench.isolation import run_cell_in_process
from boltzbench.runner import CellOutcome, SchedulerError, failed_record

#: Attempts at starting a LocalCluster: a worker that dies while starting (killed, out of
#: memory) fails the whole start with "Nanny failed to start", although no cell ran.
START_ATTEMPTS = 3


def _run_cell_task(cell: Cell, matrix: dict[str, Any], timeout_s: float | None, threads: int = 1,
                   keep_samples: bool = False) -> CellOutcome:
    """The task of one cell: the same child-process wrapper as the serial scheduler, so a
    cell that dies or hangs on a worker gives a record and frees the worker."""
    return run_cell_in_process(cell, matrix=matrix, timeout_s=timeout_s, threads=threads,
                               keep_samples=keep_samples)


def start_local_cluster(workers: int | None = None, attempts: int = START_ATTEMPTS) -> LocalCluster:
    """A LocalCluster of ``workers`` one-thread worker processes (default: one per core).

    No dashboard: the scheduler's HTTP server (health and metrics routes only) listens on a
    free port of 127.0.0.1, never on 8787. A start that fails (a worker died while starting)
    is tried again, ``attempts`` times in all, then raises :class:`SchedulerError`.
    """
    n_workers = workers or os.cpu_count() or 1
    errors = []
    for _ in range(attempts):
        try:
            # worker-saturation 1.0: a worker holds only the cell it runs, so a death is
            # charged to that cell alone, not to cells merely queued on the same worker.
            with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                                  "distributed.scheduler.worker-saturation": 1.0}):
                return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                    silence_logs=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - e.g. RuntimeError("Nanny failed to start.")
            cause = exc.__cause__ or exc
            errors.append(f"{type(cause).__name__}: {cause}".strip())
    raise SchedulerError(f"--scheduler local: the Dask LocalCluster of {n_workers} workers failed to start "
                         f"{attempts} times (last: {errors[-1]}); no cell ran. Run again, or try fewer "
                         "--workers or --scheduler serial")


@contextmanager
def dask_client(scheduler: str, workers: int | None = None, connect_timeout: float = 5.0) -> Iterator[Client]:
    """A client for ``"local"`` (a new LocalCluster of ``workers`` processes) or an address."""
    cluster = None
    if scheduler == "local":
        cluster = start_local_cluster(workers)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout=f"{connect_timeout}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerError(f"--scheduler: cannot reach the Dask scheduler at {scheduler!r} within "
                                 f"{connect_timeout:g} s: {exc}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_cells(client: Client, cells: list[Cell], matrix: dict[str, Any], timeout_s: float | None = None, *,
              threads: int = 1, keep_samples: bool = False) -> Iterator[tuple[Cell, CellOutcome]]:
    """Submit every cell; yield (cell, outcome) as cells finish, in completion order."""
    futures = {client.submit(_run_cell_task, cell, matrix, timeout_s, threads, keep_samples,
                             key=f"cell-{cell.cell_id}", pure=False): cell for cell in cells}
    for future in as_completed(futures):
        cell = futures[future]
        try:
            outcome = future.result()
        except KilledWorker:
            outcome = CellOutcome(failed_record(cell, matrix, "the worker running this cell died "
                                                "twice (it was retried once on another worker)"), None)
        except Exception as exc:  # noqa: BLE001 - e.g. a cell that cannot be unpickled
            outcome = CellOutcome(failed_record(cell, matrix, f"{type(exc).__name__}: {exc}"), None)
        finally:
            future.release()
        yield cell, outcome
