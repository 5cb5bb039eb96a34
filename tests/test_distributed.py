"""Dask execution: same numbers as serial, resume across schedulers, dead workers, timeouts."""

import json
import time
from pathlib import Path

import pytest

from boltzbench import parse_matrix, run_matrix
from boltzbench.cli import main
from boltzbench.runner import SchedulerError

PLUGINS = str(Path(__file__).parent / "plugins")


def matrix(samplers=(("mc", {}),), seeds=(0, 1), max_evals=16 * 2000):
    return parse_matrix({
        "name": "dask-test", "seeds": list(seeds), "budget": {"max_evals": max_evals, "n_snapshots": 3},
        "systems": [{"name": "double_well"}],
        "samplers": [{"name": name, "label": name.split(":")[-1], "params": {"n_chains": 16, **params}}
                     for name, params in samplers],
    })


def records(out):
    return {p.name: json.loads(p.read_text()) for p in (Path(out) / "records").glob("*.json")}


def numbers(record):
    return record["curve"][-1]["metrics"], record["cost"]["total_evals"], record["final"]["diagnostics"]


def test_local_cluster_gives_the_same_numbers_as_serial(tmp_path):
    m = matrix(samplers=(("mc", {}), ("md", {})))
    run_matrix(m, tmp_path / "serial", scheduler="serial", progress=False)
    summary = run_matrix(m, tmp_path / "dask", scheduler="local", workers=2, progress=False)
    assert (summary.ok, summary.failed) == (4, 0)
    serial, dask = records(tmp_path / "serial"), records(tmp_path / "dask")
    assert serial.keys() == dask.keys()
    for name in serial:
        assert numbers(serial[name]) == numbers(dask[name])
        assert dask[name]["env"]["torch_threads"] == 1


def test_resume_works_across_schedulers(tmp_path):
    run_matrix(matrix(seeds=[0]), tmp_path, scheduler="serial", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "records").glob("*.json")}
    summary = run_matrix(matrix(seeds=[0, 1, 2]), tmp_path, scheduler="local", workers=2, progress=False)
    assert (summary.skipped, summary.ok) == (1, 2)
    after = {p.name: p.read_bytes() for p in (tmp_path / "records").glob("*.json")}
    assert len(after) == 3 and all(after[k] == v for k, v in before.items())


def test_a_dead_worker_costs_its_cell_one_retry_then_a_failed_record(tmp_path, monkeypatch):
    """A cell's process that kills its worker (a worker death, not a cell's: those are
    failed records at once, see the next test)."""
    monkeypatch.setenv("PYTHONPATH", PLUGINS)
    monkeypatch.syspath_prepend(PLUGINS)
    m = matrix(samplers=(("dying_sampler:KillsWorkerOnce", {"marker": str(tmp_path / "marker")}),
                         ("dying_sampler:AlwaysKillsWorker", {}), ("mc", {})), seeds=[0])
    summary = run_matrix(m, tmp_path / "out", scheduler="local", workers=2, progress=False)
    by_label = {r["sampler"]["label"]: r for r in records(tmp_path / "out").values()}
    assert (tmp_path / "marker").exists(), "the first attempt did not run"
    assert by_label["KillsWorkerOnce"]["status"] == "ok"
    assert by_label["AlwaysKillsWorker"]["status"] == "failed"
    assert "died twice" in by_label["AlwaysKillsWorker"]["error"]
    assert by_label["mc"]["status"] == "ok"
    assert (summary.ok, summary.failed) == (2, 1)


def test_a_cell_that_dies_or_hangs_on_a_worker_gives_its_record_and_the_run_exits(tmp_path, monkeypatch):
    """The task runs its cell in a child process: os._exit is a failed record (no retry, as
    in the serial scheduler), a cell that ignores its deadline is killed, and run_matrix returns."""
    monkeypatch.setenv("PYTHONPATH", PLUGINS)
    monkeypatch.syspath_prepend(PLUGINS)
    m = matrix(samplers=(("dying_sampler:AlwaysDies", {}), ("dying_sampler:Hangs", {}), ("mc", {})), seeds=[0])
    summary = run_matrix(m, tmp_path / "out", scheduler="local", workers=2, timeout_s=1.0, progress=False)
    by_label = {r["sampler"]["label"]: r for r in records(tmp_path / "out").values()}
    assert by_label["AlwaysDies"]["status"] == "failed"
    assert "the cell's process exited with code 1" in by_label["AlwaysDies"]["error"]
    assert by_label["Hangs"]["status"] == "timeout" and "was killed 2 s later" in by_label["Hangs"]["error"]
    assert by_label["mc"]["status"] == "ok"
    assert (summary.ok, summary.failed) == (1, 2)


def test_cell_timeout_records_timeout_and_keeps_the_curve(tmp_path):
    m = matrix(max_evals=1e12, seeds=[0])
    summary = run_matrix(m, tmp_path, scheduler="serial", timeout_s=1.0, progress=False)
    (record,) = records(tmp_path).values()
    assert summary.failed == 1
    assert record["status"] == "timeout" and "timeout of 1 s" in record["error"]
    assert record["cost"]["total_evals"] > 0


def test_an_unreachable_scheduler_fails_fast_and_writes_nothing(tmp_path):
    started = time.monotonic()
    with pytest.raises(SchedulerError, match="cannot reach"):
        run_matrix(matrix(), tmp_path / "out", scheduler="tcp://127.0.0.1:9", progress=False)
    assert time.monotonic() - started < 15
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--scheduler", "tcp://127.0.0.1:9"], ["--scheduler", "nowhere"],
                                  ["--workers", "0"], ["--cell-timeout", "-1"]])
def test_cli_rejects_bad_execution_options(tmp_path, capsys, args):
    assert main(["run", "--out", str(tmp_path / "out"), "--no-progress", *args]) == 2
    assert f"error: {args[0]}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
