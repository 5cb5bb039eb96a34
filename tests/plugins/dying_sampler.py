"""Samplers that kill the process running them: for the worker-death tests (Dask)."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from boltzbench.contracts import param
from boltzbench.samplers.mc import MetropolisMC


@dataclass
class DiesOnce(MetropolisMC):
    """Kills its process the first time it runs (leaving a marker file), then samples."""

    name: ClassVar[str] = "dies_once"
    marker: str = param("", "file that records the first death")

    def run(self, system, budget, generator):
        if not Path(self.marker).exists():
            Path(self.marker).write_text("died")
            os._exit(1)
        yield from super().run(system, budget, generator)


@dataclass
class AlwaysDies(MetropolisMC):
    """Kills its process every time it runs."""

    name: ClassVar[str] = "always_dies"

    def run(self, system, budget, generator):
        os._exit(1)
        yield  # pragma: no cover
