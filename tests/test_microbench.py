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


@pytest.fixture(scope="module", params=[(4, 2, "dw4"), (13, 3, "lj13")], ids=lambda p: p[2])
def flow_matching_batch(request):
    """An EGNN field of the flows-clusters size (3 layers of width 32) and mean-free batches."""
    from boltzbench.samplers.flows.flow_matching import EquivariantCNF, MeanFreeGaussianBase

    n, d, _ = request.param
    generator = torch.Generator().manual_seed(0)
    cnf = EquivariantCNF({"n_particles": n, "spatial_dim": d, "hidden": 32, "n_layers": 3}, generator)
    base = MeanFreeGaussianBase(n, d)
    return cnf, base.sample(256, generator).reshape(256, n, d), base.sample(256, generator).reshape(256, n, d)


def test_equivariant_ot_pairing_of_256(benchmark, flow_matching_batch):
    """One minibatch of flow-matching pairs: the B² aligned cost, the assignment, the alignment."""
    from boltzbench.samplers.flows.flow_matching import equivariant_ot_pairs

    cnf, x0, x1 = flow_matching_batch
    paired = benchmark(equivariant_ot_pairs, x0, x1, np.zeros(cnf.n_particles, dtype=int))
    assert ((paired - x1) ** 2).sum() < ((x0 - x1) ** 2).sum()


def test_velocity_and_exact_divergence_of_64(benchmark, flow_matching_batch):
    """One ODE right-hand side of sampling: v and tr(∂v/∂x) for 64 configurations."""
    cnf, x0, _ = flow_matching_batch
    with torch.no_grad():
        v, div = benchmark(cnf.velocity_and_divergence, torch.tensor(0.5), x0[:64].reshape(64, -1))
    assert v.shape == (64, cnf.dim) and torch.isfinite(div).all()
