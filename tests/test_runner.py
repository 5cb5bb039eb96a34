"""The runner and store: records, determinism, failures, resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from boltzbench import Budget, make_cell, parse_matrix, run_cell, run_matrix
from boltzbench.cli import main
from boltzbench.reports.markdown import write_report

SMALL = Budget(max_evals=16 * 400, n_snapshots=4)
WALL_CLOCK = {"wall_s", "total_wall_s", "started_at", "finished_at", "env"}


def numbers(record):
    """The record without wall-clock fields: what must be identical for the same seed."""
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in WALL_CLOCK}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj
    return strip(record)


def matrix_dict(samplers, seeds=(0, 1), max_evals=16 * 400, **extra):
    return {
        "name": "test", "seeds": list(seeds), "budget": {"max_evals": max_evals, "n_snapshots": 3},
        "systems": [{"name": "double_well"}],
        "samplers": [{"name": n, "label": label, "params": p} for label, n, p in samplers],
        **extra,
    }


@pytest.mark.parametrize("sampler", ["md", "mc"])
def test_record_has_the_design_keys_and_a_curve(sampler):
    record = run_cell(make_cell("double_well", sampler, budget=SMALL, sampler_params={"n_chains": 16})).record
    for key in ("schema", "cell_id", "status", "error", "system", "sampler", "seed", "budget",
                "cost", "curve", "final", "env"):
        assert key in record
    assert record["status"] == "ok" and record["error"] is None
    assert len(record["curve"]) == 4
    costs = [point["cost"] for point in record["curve"]]
    assert costs == sorted(costs) and costs[-1] == record["cost"]["total_evals"]
    assert set(record["final"]["metrics"]) == {"energy_w1", "x1_w1", "mean_energy_error", "delta_f_error", "ess"}
    json.dumps(record, allow_nan=False)


def test_a_record_names_the_distribution_and_version_of_its_plugin():
    from importlib.metadata import version
    pytest.importorskip("boltzbench_mala", reason="the example plugin (examples/plugin-sampler) is not installed")
    record = run_cell(make_cell("double_well", "mala", budget=SMALL, sampler_params={"n_chains": 16})).record
    components = record["env"]["components"]
    assert components["sampler"] == {"module": "boltzbench_mala", "distribution": "boltzbench-mala",
                                     "version": version("boltzbench-mala")}
    assert components["system"]["distribution"] == "boltzbench"
    assert components["system"]["module"] == "boltzbench.systems.double_well"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_revision_is_the_checkouts_commit_and_whether_tracked_files_changed(tmp_path):
    """HEAD of a checkout; 'modified' by a changed tracked file, not by an untracked one; None
    for a folder outside any checkout and for one nested inside another repository."""
    from boltzbench.runner import source_revision

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path / "repo"), "-c", "user.name=t", "-c", "user.email=t@t",
                               *args], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "repo" / "inner").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    assert source_revision(tmp_path / "outside") is None
    git("init", "-q")
    (tmp_path / "repo" / "code.py").write_text("a = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    (tmp_path / "repo" / "notes.txt").write_text("untracked\n")
    assert source_revision(tmp_path / "repo") == {"commit": head, "modified": False}
    (tmp_path / "repo" / "code.py").write_text("a = 2\n")
    source_revision.cache_clear()
    assert source_revision(tmp_path / "repo") == {"commit": head, "modified": True}
    assert source_revision(tmp_path / "repo" / "inner") is None


def test_a_record_carries_the_source_revision_of_the_code_that_ran_it():
    from boltzbench.runner import SOURCE_ROOT, source_revision
    record = run_cell(make_cell("double_well", "mc", budget=SMALL, sampler_params={"n_chains": 16})).record
    assert record["env"]["source"] == source_revision(SOURCE_ROOT)


def test_same_cell_same_seed_identical_numbers_different_seed_different():
    def record(seed):
        return run_cell(make_cell("double_well", "mc", seed=seed, budget=SMALL, sampler_params={"n_chains": 16})).record

    first, again, other = record(1), record(1), record(2)
    assert numbers(first) == numbers(again)
    assert first["final"]["metrics"] != other["final"]["metrics"]
    assert first["cell_id"] != other["cell_id"]


def test_a_diverging_sampler_fails_its_own_cell_and_the_matrix_goes_on(tmp_path):
    matrix = parse_matrix(matrix_dict([("md", "md", {"n_chains": 16}), ("md-huge-dt", "md", {"dt": 5.0, "n_chains": 16})]))
    summary = run_matrix(matrix, tmp_path, progress=False)
    assert (summary.ok, summary.failed) == (2, 2)
    records = {(r["sampler"]["label"], r["seed"]): r for r in map(json.loads, map(Path.read_text, (tmp_path / "records").glob("*.json")))}
    bad = records[("md-huge-dt", 0)]
    assert bad["status"] == "failed" and "non-finite" in bad["error"]
    assert "NaN" not in json.dumps(bad)
    assert records[("md", 0)]["status"] == "ok"
    report = write_report(tmp_path).read_text()
    assert "Failed cells" in report and "non-finite" in report


def test_cli_exit_code_says_some_cells_failed(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('seeds = [0]\n[budget]\nmax_evals = 3000\n[[systems]]\nname = "double_well"\n'
                    '[[samplers]]\nname = "md"\nparams = { dt = 5.0, n_chains = 8 }\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--scheduler", "serial"]) == 1
    assert (tmp_path / "out" / "report" / "report.md").is_file()


def test_finished_cells_are_skipped_and_failed_ones_retried_on_request(tmp_path):
    matrix = parse_matrix(matrix_dict([("mc", "mc", {"n_chains": 16}), ("bad", "md", {"dt": 5.0, "n_chains": 16})], seeds=[0]))
    run_matrix(matrix, tmp_path, progress=False)
    again = run_matrix(matrix, tmp_path, progress=False)
    assert (again.skipped, again.ok, again.failed) == (2, 0, 0)
    retried = run_matrix(matrix, tmp_path, progress=False, retry_failed=True)
    assert (retried.skipped, retried.failed) == (1, 1)


def test_kept_samples_load_without_pickle(tmp_path):
    matrix = parse_matrix(matrix_dict([("mc", "mc", {"n_chains": 16, "thin": 4})], seeds=[0], keep_samples=True))
    run_matrix(matrix, tmp_path, progress=False)
    (record_path,) = (tmp_path / "records").glob("*.json")
    record = json.loads(record_path.read_text())
    with np.load(tmp_path / "records" / record["samples_file"], allow_pickle=False) as data:
        kept = record["final"]["diagnostics"]["steps"] // 4
        assert data["positions"].shape == (kept, 16, 2)
        assert data["energies"].shape == (kept, 16)


def test_a_killed_run_resumes_and_finishes_every_cell_exactly_once(tmp_path):
    """SIGKILL mid-run (no chance to clean up), then run again: every finished record is
    kept byte for byte, the rest are added, nothing is half-written."""
    seeds = list(range(6))
    path = tmp_path / "m.toml"
    path.write_text(f'seeds = {seeds}\n[budget]\nmax_evals = 2_000_000\nn_snapshots = 5\n'
                    '[[systems]]\nname = "double_well"\n[[samplers]]\nname = "mc"\n')
    out = tmp_path / "out"
    command = [sys.executable, "-m", "boltzbench.cli", "run", str(path), "--out", str(out), "--no-progress",
               "--scheduler", "serial"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "records"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(records.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = {p.name: p.read_bytes() for p in records.glob("*.json")}
    assert 2 <= len(before) < len(seeds), "the run was not interrupted part-way"
    for blob in before.values():
        assert json.loads(blob)["status"] == "ok"

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{len(before)} already finished" in result.stdout
    after = {p.name: p.read_bytes() for p in records.glob("*.json")}
    assert len(after) == len(seeds)
    assert sorted(json.loads(b)["seed"] for b in after.values()) == seeds
    assert all(after[name] == blob for name, blob in before.items())
    assert not list(records.glob(".*.tmp"))


def test_ctrl_c_keeps_finished_cells_and_exits_130(tmp_path):
    """With the default scheduler (a Dask LocalCluster): Ctrl-C closes the cluster cleanly."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "boltzbench.cli", "run", "--out", str(out), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "records").glob("*.json")):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "run the same command again to resume" in output
    finished = list((out / "records").glob("*.json"))
    assert 1 <= len(finished) < 4
    assert all(json.loads(p.read_text())["status"] == "ok" for p in finished)
    assert not list((out / "records").glob(".*.tmp"))


def test_report_has_tables_and_a_curve_figure(tmp_path):
    matrix = parse_matrix(matrix_dict([("md", "md", {"n_chains": 16}), ("mc", "mc", {"n_chains": 16})]))
    run_matrix(matrix, tmp_path, progress=False)
    report = write_report(tmp_path)
    text = report.read_text()
    assert "| md | 2 |" in text and "| mc | 2 |" in text
    assert "![accuracy versus cost, double_well](curves-double_well.png)" in text
    assert (report.parent / "curves-double_well.png").stat().st_size > 10_000


def test_a_corrupt_record_is_rerun_on_resume(tmp_path):
    matrix = parse_matrix(matrix_dict([("mc", "mc", {"n_chains": 16})], seeds=[0]))
    run_matrix(matrix, tmp_path, progress=False)
    (path,) = (tmp_path / "records").glob("*.json")
    path.write_text('{"schema": "boltzbench.record/1", "cell_')
    again = run_matrix(matrix, tmp_path, progress=False)
    assert (again.skipped, again.ok) == (0, 1)
    assert json.loads(path.read_text())["status"] == "ok"


def test_run_builds_missing_references_first(tmp_path, monkeypatch, capsys):
    """`run` builds a missing reference by the system's recipe before the cells, so that
    the reference metrics of every cell are filled; a second run builds nothing."""
    from boltzbench.systems.clusters import DoubleWell4

    monkeypatch.setenv("BOLTZBENCH_REFERENCES", str(tmp_path / "refs"))
    monkeypatch.setattr(DoubleWell4, "reference_recipe",
                        {**DoubleWell4.reference_recipe, "max_evals": 16 * 8 * 300, "n_samples": 500})
    path = tmp_path / "m.toml"
    path.write_text('seeds = [0]\n[budget]\nmax_evals = 2000\nn_snapshots = 2\n'
                    '[[systems]]\nname = "dw4"\nparams = { temperature = 2.0 }\n'
                    '[[samplers]]\nname = "mc"\nparams = { n_chains = 8 }\n')
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--scheduler", "serial", "--no-report"]) == 0
    assert "building the missing reference: boltzbench reference build dw4 --param temperature=2.0" in capsys.readouterr().err
    assert len(list((tmp_path / "refs").glob("dw4-*.json"))) == 1
    record = json.loads(next((out / "records").glob("*.json")).read_text())
    assert "missing" not in record["reference"]
    assert record["final"]["metrics"]["energy_w1"] is not None
    assert main(["run", str(path), "--out", str(tmp_path / "out2"), "--no-progress", "--scheduler", "serial",
                 "--no-report"]) == 0
    assert "building" not in capsys.readouterr().err


def test_observables_of_a_growing_chain_trace_are_computed_once_per_draw(monkeypatch):
    """A chain sampler's snapshots extend each other: the new draws' observables and states
    are computed, not all of them at every snapshot (quadratic in the number of snapshots),
    and the result equals computing them all at the end; a snapshot that does not extend the
    previous one (other draws) is computed whole."""
    import torch

    from boltzbench import get_sampler, get_system
    from boltzbench.contracts import Snapshot
    from boltzbench.runner import to_samples

    system = get_system("ternary2d")
    snapshots = list(get_sampler("mc", n_chains=4, thin=10, step=0.02).run(
        system, Budget(max_evals=4 * 400, n_snapshots=8), torch.Generator().manual_seed(0)))
    rows = []
    original = system.observables
    monkeypatch.setattr(system, "observables", lambda x: rows.append(len(x)) or original(x))
    samples = None
    for snapshot in snapshots:
        samples = to_samples(snapshot, system, samples)
    assert len(snapshots) >= 5 and sum(rows) == samples.positions.shape[0] * samples.positions.shape[1]
    whole = to_samples(snapshots[-1], system)
    assert set(whole.observables) == set(samples.observables)
    for key, value in whole.observables.items():
        np.testing.assert_array_equal(samples.observables[key], value)
    np.testing.assert_array_equal(samples.states, whole.states)
    computed = sum(rows)
    again = to_samples(snapshots[-1], system, samples)  # a snapshot with no new draw: nothing computed
    assert sum(rows) == computed
    np.testing.assert_array_equal(again.observables["energy_per_particle"], whole.observables["energy_per_particle"])
    other = Snapshot(snapshots[-1].positions.flip(0), snapshots[-1].energies.flip(0), None, {})
    flipped = to_samples(other, system, samples)
    np.testing.assert_array_equal(flipped.observables["energy_per_particle"],
                                  whole.observables["energy_per_particle"][::-1])


def test_a_snapshot_whose_tensor_the_sampler_then_moves_in_place_gets_the_new_observables():
    """A sampler may yield its live population tensor (1, C, dof) and move it in place before
    the next snapshot: the previous samples must not alias that tensor, or the new snapshot
    "extends" them trivially and keeps the observables of the old positions."""
    import torch

    from boltzbench import get_system
    from boltzbench.contracts import Snapshot
    from boltzbench.runner import to_samples

    system = get_system("double_well")
    x = torch.zeros(1, 3, system.dof, dtype=torch.float64)
    first = to_samples(Snapshot(x, system.energy(x[0])[None], None, {}), system)
    x += 1.0  # the sampler's next move, in place
    second = to_samples(Snapshot(x, system.energy(x[0])[None], None, {}), system, first)
    whole = to_samples(Snapshot(x.clone(), system.energy(x[0])[None], None, {}), system)
    np.testing.assert_array_equal(second.states, whole.states)  # all in the right well: 1
    for key, value in whole.observables.items():
        np.testing.assert_array_equal(second.observables[key], value)
    for key, value in first.observables.items():  # the first snapshot's numbers stay as they were
        np.testing.assert_array_equal(value, np.zeros((1, 3)))
    np.testing.assert_array_equal(first.positions, np.zeros((1, 3, system.dof)))


def test_float32_positions_are_kept_and_their_observables_computed_in_the_systems_dtype():
    """A flow stores its float32 output (half the memory of a float64 copy); the observables
    are those of the same positions in float64, not float32 arithmetic."""
    import torch

    from boltzbench import get_system
    from boltzbench.contracts import Snapshot
    from boltzbench.runner import to_samples

    system = get_system("alanine_dipeptide")
    x = system.sample_initial(16, torch.Generator().manual_seed(0)).float()[None]
    samples = to_samples(Snapshot(x, system.energy(x[0].double())[None], None, {}), system)
    assert samples.positions.dtype == np.float32
    exact = system.observables(x[0].double())
    for key, value in samples.observables.items():
        assert value.dtype == np.float64
        np.testing.assert_array_equal(value[0], exact[key].numpy())
