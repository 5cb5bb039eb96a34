"""boltzbench: rank methods for sampling Boltzmann distributions on shared systems.

Python API::

    import boltzbench
    system = boltzbench.get_system("double_well", temperature=1.0)
    sampler = boltzbench.get_sampler("md", dt=0.01)
    cell = boltzbench.make_cell("double_well", "mc", seed=0, budget=boltzbench.Budget(max_evals=1e5))
    outcome = boltzbench.run_cell(cell)          # outcome.record is the JSON record
    boltzbench.run_matrix(boltzbench.load_matrix("benchmarks/matrices/quick.toml"), "results/")
"""

from boltzbench.contracts import (Budget, CostLedger, ParameterError, Reference, Sampler, Samples,
                                  Snapshot, SnapshotSchedule, System, param, require)
from boltzbench.matrix import Cell, Matrix, MatrixError, load_matrix, parse_matrix
from boltzbench.registry import get_metric, get_sampler, get_system
from boltzbench.runner import make_cell, run_cell, run_matrix
from boltzbench.samplers.chains import ChainSampler, ChainTrace

__version__ = "0.1.0"

__all__ = [
    "Budget", "Cell", "ChainSampler", "ChainTrace", "CostLedger", "Matrix", "MatrixError",
    "ParameterError", "Reference", "Sampler", "Samples", "Snapshot", "SnapshotSchedule", "System",
    "get_metric", "get_sampler", "get_system", "load_matrix", "make_cell", "param", "parse_matrix",
    "require", "run_cell", "run_matrix",
]
