"""A Dask worker preload that kills its worker process while the worker starts: for the
tests of a LocalCluster whose start fails (``distributed.worker.preload``).

``BOLTZBENCH_TEST_WORKER_DEATHS`` names a folder: each worker start takes one ticket file
``death-*`` out of it (by renaming, atomic) and dies; once no ticket is left, workers start.
"""

import os
from pathlib import Path


def dask_setup(worker):
    folder = Path(os.environ["BOLTZBENCH_TEST_WORKER_DEATHS"])
    for ticket in sorted(folder.glob("death-*")):
        try:
            ticket.rename(folder / f"used-{ticket.name}-{os.getpid()}")
        except OSError:  # another worker took it
            continue
        os._exit(1)
