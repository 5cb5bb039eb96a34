"""The prepared GPU check (benchmarks/gpu_check.py) on the CPU: one broken measurement is reported
in its entry and the table goes on, and the exit status says so."""

import pytest
import torch

import boltzbench.samplers.flows.bench as flow_bench
from boltzbench.benchmarks import gpu_check


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """gpu_check.main sets torch's thread count; the rest of the session keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_measurement_that_raises_is_an_entry_and_the_table_goes_on(monkeypatch, capsys):
    def broken_measure(*args, **kwargs):
        raise RuntimeError("Expected all tensors to be on the same device\nsecond line")

    monkeypatch.setattr(flow_bench, "measure", broken_measure)
    monkeypatch.setattr(gpu_check, "kernel_rate", lambda *args: 1.0)
    monkeypatch.setattr(gpu_check, "run_glass_cell", lambda *args: "ok, 1.0 s")
    status = gpu_check.main(["--quick"])
    table = capsys.readouterr().out
    flow_rows = [line for line in table.splitlines() if line.startswith("| flow step")]
    assert flow_rows and all("failed: RuntimeError: Expected all tensors to be on the same device |" in row
                             for row in flow_rows)
    assert "second line" not in table
    assert sum(line.startswith("| cell") for line in table.splitlines()) == 2  # after the failure
    assert status == 1


def test_a_clean_table_exits_zero(monkeypatch, capsys):
    monkeypatch.setattr(flow_bench, "measure", lambda *args, **kwargs: {"ml_kl_step_ms": 2.0,
                                                                        "samples_with_energy_per_s": 1e5})
    monkeypatch.setattr(gpu_check, "kernel_rate", lambda *args: 1.0)
    monkeypatch.setattr(gpu_check, "run_glass_cell", lambda *args: "ok, 1.0 s")
    assert gpu_check.main(["--quick"]) == 0
    assert "| flow step | double_well mlp: ML+KL step, batch 256 (ms) | 2 |" in capsys.readouterr().out
