"""Every sampler end to end with the system (and the flow) on a CUDA device: records ok, draws
on the device, energies on the system's device. Skipped without CUDA; benchmarks/gpu_check.py
runs these and reports them in its table."""

import pytest
import torch

from boltzbench import Budget, make_cell, run_cell
from boltzbench.contracts import cell_generator, device_of
from boltzbench.registry import get_system

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SYSTEM = {"n_particles": 43, "device": "cuda", "temperature": 0.5}
SAMPLERS = {
    "md": {"n_chains": 16, "dt": 0.005},
    "mc": {"n_chains": 16, "step": 0.05},
    "pt": {"n_chains": 4, "n_replicas": 4, "t_max": 1.5},
    "pa": {"population": 64},
    "swap_mc": {"n_chains": 4, "backend": "torch"},
    "flow": {"base": "thermal", "base_temperature": 2.0, "base_sampler": "md", "base_step": 0.005,
             "base_chains": 16, "base_pool": 512, "data_steps": 100, "data_chains": 8, "data_step": 0.005,
             "train_steps": 20, "n_layers": 2, "hidden": 16, "sample_batch": 256, "device": "cuda"},
}


def test_the_cell_generator_lives_on_the_systems_device():
    system = get_system("double_well")
    assert device_of(system).type == "cpu" and cell_generator(system, 0).device.type == "cpu"


@cuda
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sampler_runs_end_to_end_on_cuda(sampler):
    cell = make_cell("ternary2d", sampler, system_params=SYSTEM, sampler_params=SAMPLERS[sampler],
                     budget=Budget(max_evals=20_000, n_snapshots=2))
    record = run_cell(cell).record
    assert record["status"] == "ok", record["error"]
    assert record["env"]["device"] == "cuda" and record["env"]["cuda"]


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_the_cuda_cells_are_valid_matrices_on_any_machine(sampler):
    """The CUDA cells above are checked on the CPU too, so that they cannot rot unseen."""
    cell = make_cell("ternary2d", sampler, system_params={**SYSTEM, "device": "cpu"},
                     sampler_params={**SAMPLERS[sampler], "device": "cpu"} if sampler == "flow" else SAMPLERS[sampler],
                     budget=Budget(max_evals=20_000, n_snapshots=2))
    assert cell.sampler.name == sampler
