"""Running cells on Dask (``dask.distributed``): one task per cell.

* ``local`` starts a :class:`~distributed.LocalCluster` of worker *processes*, one thread
  each, and each task sets torch to one thread, so workers do not fight over cores.
* ``tcp://HOST:PORT`` (or any Dask address) connects to an existing scheduler; an
  unreachable address fails within ``connect_timeout`` seconds, before anything is written.
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
import torch
from distributed import Client, LocalCluster, as_completed
from distributed.scheduler import KilledWorker

from boltzbench.matrix import Cell
from boltzbench.runner import CellOutcome, SchedulerError, failed_record, run_cell


def _run_cell_task(cell: Cell, matrix: dict[str, Any], timeout_s: float | None) -> CellOutcome:
    torch.set_num_threads(1)
    return run_cell(cell, matrix=matrix, timeout_s=timeout_s)


@contextmanager
def dask_client(scheduler: str, workers: int | None = None, connect_timeout: float = 5.0) -> Iterator[Client]:
    """A client for ``"local"`` (a new LocalCluster of ``workers`` processes) or an address."""
    cluster = None
    if scheduler == "local":
        # worker-saturation 1.0: a worker holds only the cell it runs, so a death is charged
        # to that cell alone, not to cells merely queued on the same worker.
        with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                              "distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                   processes=True, dashboard_address=None, silence_logs=logging.ERROR)
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


def run_cells(client: Client, cells: list[Cell], matrix: dict[str, Any],
              timeout_s: float | None = None) -> Iterator[tuple[Cell, CellOutcome]]:
    """Submit every cell; yield (cell, outcome) as cells finish, in completion order."""
    futures = {client.submit(_run_cell_task, cell, matrix, timeout_s, key=f"cell-{cell.cell_id}",
                             pure=False): cell for cell in cells}
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
