"""Micro-benchmarks of the hot kernels (pytest-benchmark).

The default test run executes each once (``--benchmark-disable`` in pyproject), so they
never rot. To measure and keep JSON for comparison between commits::

    pytest tests/test_microbench.py --benchmark-enable --benchmark-only --benchmark-json=bench.json
    pytest-benchmark compare bench-old.json bench.json
"""

import numpy as np
import pytest
import torch

from boltzbench import get_system
from boltzbench.metrics.ess import autocorr_ess
from boltzbench.metrics.wasserstein import w1_samples
from boltzbench.samplers.mc import metropolis_step
from boltzbench.samplers.md import baoab_step


@pytest.fixture(scope="module")
def double_well_batch():
    system = get_system("double_well")
    x = system.sample_initial(256, torch.Generator().manual_seed(0))
    return system, x


def test_double_well_energy_and_forces(benchmark, double_well_batch):
    system, x = double_well_batch
    u, f = benchmark(system.energy_and_forces, x)
    assert u.shape == (256,) and f.shape == (256, 2)


def test_baoab_step(benchmark, double_well_batch):
    system, x = double_well_batch
    generator = torch.Generator().manual_seed(1)
    v = torch.zeros_like(x)
    _, f = system.energy_and_forces(x)
    x_new, *_ = benchmark(baoab_step, x, v, f, system, 0.01, 1.0, 1.0, generator)
    assert torch.isfinite(x_new).all()


def test_metropolis_step(benchmark, double_well_batch):
    system, x = double_well_batch
    generator = torch.Generator().manual_seed(2)
    u = system.energy(x)
    x_new, *_ = benchmark(metropolis_step, x, u, system, 0.1, generator)
    assert torch.isfinite(x_new).all()


def test_w1_on_1e5_samples(benchmark):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=100_000), rng.normal(0.1, 1.0, size=100_000)
    assert benchmark(w1_samples, x, y) == pytest.approx(0.1, abs=0.02)


def test_autocorrelation_ess_on_1000_by_64(benchmark):
    trace = np.random.default_rng(0).normal(size=(1000, 64))
    assert benchmark(autocorr_ess, trace) > 30_000
