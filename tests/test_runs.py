"""Runs that cannot get stuck (issue 13, items 7 and 12–17): every cell in a child process
(a dead cell is a failed record, a hung one a timeout record), the same torch threads in
every scheduler, exit codes, bad --out and options, the folder lock, the Dask start."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dask
import pytest

from boltzbench import Budget, load_matrix, make_cell, run_matrix
from boltzbench.cli import main
from boltzbench.distributed import START_ATTEMPTS
from boltzbench.isolation import TAIL_LINES, TAIL_WIDTH, run_cell_in_process, stderr_tail
from boltzbench.runner import run_cell
from boltzbench.samplers.mc import MetropolisMC
from boltzbench.store import Store

PLUGINS = str(Path(__file__).parent / "plugins")


@dataclass
class CheapLiar(MetropolisMC):
    """Says every snapshot cost −5 evaluations."""

    def run(self, system, budget, generator):
        for snapshot in super().run(system, budget, generator):
            snapshot.cost = {**snapshot.cost, "total_evals": -5.0}
            yield snapshot
RUN = ["--no-progress", "--no-report"]


def write_matrix(path: Path, samplers, seeds=(0,), max_evals=16 * 300, keep_samples=False) -> Path:
    """A double-well matrix file; ``samplers``: (registered name, label) pairs, 16 chains each."""
    entries = "".join(f'[[samplers]]\nname = "{name}"\nlabel = "{label}"\nparams = {{ n_chains = 16 }}\n'
                      for name, label in samplers)
    path.write_text(f'name = "runs"\nseeds = {list(seeds)}\nkeep_samples = {str(keep_samples).lower()}\n'
                    f'[budget]\nmax_evals = {max_evals}\nn_snapshots = 3\n[[systems]]\nname = "double_well"\n'
                    + entries)
    return path


def by_label(out: Path) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    return {r["sampler"]["label"]: r for r in records}


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.syspath_prepend(PLUGINS)  # cell processes get the parent's sys.path
    monkeypatch.setenv("PYTHONPATH", PLUGINS)  # Dask workers get the environment


# ------------------------------------------------------------- 12, 14: dead and hung cells


def test_a_dead_cell_is_a_failed_record_the_serial_run_goes_on_and_a_rerun_exits_1(tmp_path, plugins, capsys):
    """Cells that os._exit or segfault fail with their exit code or signal; the cell after
    them still runs. A rerun runs nothing, says how many finished cells failed, exits 1."""
    path = write_matrix(tmp_path / "m.toml", [("dying_sampler:AlwaysDies", "exits"),
                                              ("dying_sampler:Segfaults", "segfaults"), ("mc", "mc")])
    command = ["run", str(path), "--out", str(tmp_path / "out"), "--scheduler", "serial", *RUN]
    assert main(command) == 1
    records = by_label(tmp_path / "out")
    assert records["exits"]["status"] == "failed"
    assert "the cell's process exited with code 1 before it returned a result" in records["exits"]["error"]
    assert records["exits"]["error"].endswith("see the run's stderr)")  # it wrote nothing: no tail
    assert records["segfaults"]["status"] == "failed"
    assert "killed by SIGSEGV (signal 11); a segmentation fault" in records["segfaults"]["error"]
    # faulthandler's report, with the sampler's frame, from the child's file descriptor 2
    assert ("before it returned a result\nlast lines the cell's process wrote to stderr:\n"
            "Fatal Python error: Segmentation fault\n") in records["segfaults"]["error"]
    assert re.search(r'dying_sampler\.py", line \d+ in run\n', records["segfaults"]["error"])
    assert records["mc"]["status"] == "ok" and len(records["mc"]["curve"]) == 3
    assert records["exits"]["env"]["torch_threads"] == records["mc"]["env"]["torch_threads"] == 1
    assert "1 ok, 2 failed" in capsys.readouterr().out

    assert main(command) == 1
    assert ("0 cells run (0 ok, 0 failed), 3 already finished (2 of them failed or timed out; "
            "--retry-failed reruns them)") in capsys.readouterr().out


def test_a_hung_cell_is_killed_after_timeout_and_grace_and_the_serial_run_goes_on(tmp_path, plugins):
    matrix = load_matrix(write_matrix(tmp_path / "m.toml", [("dying_sampler:Hangs", "hangs"), ("mc", "mc")]))
    started = time.monotonic()
    summary = run_matrix(matrix, tmp_path / "out", timeout_s=1.0, progress=False)
    assert time.monotonic() - started < 30
    assert (summary.ok, summary.failed) == (1, 1)
    hung = by_label(tmp_path / "out")["hangs"]
    assert hung["status"] == "timeout"
    assert "per-cell timeout of 1 s: the cell did not stop at its deadline" in hung["error"]
    assert hung["error"].endswith("was killed 2 s later, at 33 % of the budget; no curve is kept\n"
                                  "last lines the cell's process wrote to stderr:\n"
                                  "hangs: asleep, whatever the deadline")


def test_a_dead_cell_names_its_last_stderr_lines_which_reached_the_run_live(plugins, capfd):
    """A cell writes 25 lines to sys.stderr and one to fd 2, then os._exit(3): its failed
    record ends with the last 20 of them; each reached this process's fd 2 as it was written
    (those before the first snapshot already at its progress call), and no descriptor is left open."""
    cell = make_cell("double_well", "dying_sampler:TalksThenDies", budget=Budget(max_evals=16 * 300, n_snapshots=3),
                     sampler_params={"n_chains": 16})
    capfd.readouterr()
    at_progress = []
    outcome = run_cell_in_process(cell, on_progress=lambda _: at_progress.append(capfd.readouterr().err))
    lines = [f"talks_then_dies line {i}" for i in range(25)] + ["talks_then_dies: last words, on fd 2"]
    assert len(at_progress) == 1 and at_progress[0].startswith("".join(line + "\n" for line in lines[:25]))
    assert at_progress[0] + capfd.readouterr().err == "".join(line + "\n" for line in lines)  # each once
    assert outcome.record["status"] == "failed"
    assert outcome.record["error"] == ("the cell's process exited with code 3 before it returned a result (os._exit "
                                       "or sys.exit in the sampler or a plugin, or a failure to start: see the run's "
                                       "stderr)\nlast lines the cell's process wrote to stderr:\n"
                                       + "\n".join(lines[-TAIL_LINES:]))
    descriptors = len(os.listdir("/proc/self/fd"))
    run_cell_in_process(cell)
    assert len(os.listdir("/proc/self/fd")) == descriptors


def test_a_cell_flooding_stderr_faster_than_the_run_passes_it_on_is_still_killed_on_time(plugins, monkeypatch):
    """The parent's fd 2 takes 64 KB per 20 ms while the cell floods it for 15 s and then hangs:
    the cell is killed at timeout + grace (about 3 s), not once the flood ends (copying all
    that the cell wrote before looking at the clock again kept it alive to ≥ 15 s)."""
    import boltzbench.isolation as isolation

    write_all = isolation._write_all

    def slow_write_all(fd, data):  # a slow terminal or log collector on the run's stderr
        time.sleep(0.02 * len(data) / 65536)
        write_all(fd, data[-100:])  # keep the test's own stderr small

    monkeypatch.setattr(isolation, "_write_all", slow_write_all)
    cell = make_cell("double_well", "dying_sampler:FloodsThenHangs", budget=Budget(max_evals=16 * 300, n_snapshots=3),
                     sampler_params={"n_chains": 16, "seconds": 15.0})
    started = time.monotonic()
    outcome = run_cell_in_process(cell, timeout_s=1.0)
    assert time.monotonic() - started < 10
    assert outcome.record["status"] == "timeout"
    assert outcome.record["error"].split("wrote to stderr:\n")[1].count("flood") > 20


def test_stderr_tail_keeps_the_last_lines_each_cut_to_width():
    data = b"".join(f"{i}\n".encode() for i in range(30)) + b"x" * 500 + b"\n\xff\n  \n\n"
    tail = stderr_tail(data).split("\n")
    assert len(tail) == TAIL_LINES and tail[0] == "12" and tail[-1] == "\ufffd"  # undecodable byte replaced
    assert tail[-2] == "x" * TAIL_WIDTH + " …"
    assert stderr_tail(b"") == stderr_tail(b" \n\t\n") == ""


def test_a_cell_process_sends_progress_and_runs_with_the_threads_asked():
    """Progress fractions cross the pipe as the cell runs; the record's env has the child's
    real thread count (this test process has 1), and the numbers are those of run_cell."""
    cell = make_cell("double_well", "mc", budget=Budget(max_evals=16 * 300, n_snapshots=3),
                     sampler_params={"n_chains": 16})
    fractions = []
    outcome = run_cell_in_process(cell, threads=2, on_progress=fractions.append)
    assert len(fractions) == 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert outcome.record["env"]["torch_threads"] == 2
    assert outcome.samples is None  # samples cross the pipe only when the matrix keeps them
    assert outcome.record["curve"][-1]["metrics"] == run_cell(cell).record["curve"][-1]["metrics"]
    assert run_cell_in_process(cell, keep_samples=True).samples.positions.shape[1:] == (16, 2)


# ------------------------------------------------------- 13, 17: threads, no dashboard


@contextmanager
def port_taken(port: int):
    """Hold 127.0.0.1:``port`` (if something else holds it already, it is taken anyway)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    try:
        yield
    finally:
        sock.close()


def test_serial_and_dask_give_the_same_numbers_with_the_same_threads_and_no_dashboard(tmp_path):
    path = write_matrix(tmp_path / "m.toml", [("mc", "mc"), ("md", "md")])
    assert main(["run", str(path), "--out", str(tmp_path / "serial"), "--scheduler", "serial", "--threads", "2",
                 *RUN]) == 0
    with port_taken(8787):
        result = subprocess.run([sys.executable, "-m", "boltzbench.cli", "run", str(path), "--out",
                                 str(tmp_path / "dask"), "--scheduler", "local", "--workers", "1", "--threads", "2",
                                 *RUN], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "8787" not in result.stderr
    serial, dask_ = by_label(tmp_path / "serial"), by_label(tmp_path / "dask")
    for label in ("mc", "md"):
        def points(record):
            return [(point["cost"], point["metrics"]) for point in record["curve"]]

        assert points(serial[label]) == points(dask_[label]) and len(points(serial[label])) == 3
        assert serial[label]["final"]["diagnostics"] == dask_[label]["final"]["diagnostics"]
        assert serial[label]["env"]["torch_threads"] == dask_[label]["env"]["torch_threads"] == 2


# ----------------------------------------------------------- 15: options and --out


@pytest.mark.parametrize("option", [["--cell-timeout", "nan"], ["--cell-timeout", "inf"], ["--cell-timeout", "-1"],
                                    ["--cell-timeout", "0"], ["--workers", "0"], ["--threads", "0"],
                                    ["--threads", "-2"], ["--out", ""]])
def test_cli_rejects_option_values_that_would_not_run_as_meant(tmp_path, capsys, option):
    path = write_matrix(tmp_path / "m.toml", [("mc", "mc")])
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--scheduler", "serial", *RUN, *option]) == 2
    assert f"error: {option[0]}: must be" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["file", "below a file", "read-only folder"])
def test_a_bad_out_is_rejected_before_any_cell_runs(tmp_path, capsys, kind):
    path = write_matrix(tmp_path / "m.toml", [("mc", "mc")])
    blocker = tmp_path / "blocker"
    if kind == "read-only folder":
        blocker.mkdir()
        blocker.chmod(0o555)
        if os.access(blocker, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop root")
        out = blocker / "out"
        expected = f"error: --out {out}: cannot write in {blocker} (read-only or not a folder)"
    else:
        blocker.write_text("not a folder")
        out = blocker if kind == "file" else blocker / "out"
        expected = f"error: --out {out}: " + ("is a file" if kind == "file" else f"lies below {blocker}, which is a file")
    assert main(["run", str(path), "--out", str(out), "--scheduler", "serial", *RUN]) == 2
    assert expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "m.toml"]


# --------------------------------------------------------------------- 16: the lock


def test_a_folder_in_use_is_refused_and_its_temporary_files_are_left_alone(tmp_path, capsys):
    """While a run holds OUT/.lock, another exits 2 naming the holder and touches nothing,
    not even a temporary file (a live run's write); once the lock is free, a run cleans it."""
    path = write_matrix(tmp_path / "m.toml", [("mc", "mc")])
    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    live_write = out / "records" / ".0123456789abcdef.json.x1y2.tmp"
    live_write.write_text('{"half": ')
    with Store(out).lock():
        assert main(["run", str(path), "--out", str(out), "--scheduler", "serial", *RUN]) == 2
        assert (f"error: --out {out}: in use by another boltzbench run (pid {os.getpid()})"
                in capsys.readouterr().err)
        assert live_write.exists() and not list((out / "records").glob("*.json"))
        with pytest.raises(RuntimeError, match="needs the folder's lock"):
            Store(out).remove_partial()
    assert main(["run", str(path), "--out", str(out), "--scheduler", "serial", *RUN]) == 0
    assert not live_write.exists() and len(list((out / "records").glob("*.json"))) == 1


# ------------------------------------------------- 7: samples added later; matrix.json


def test_keep_samples_added_to_a_finished_matrix_reruns_the_cells_without_samples(tmp_path, capsys):
    out = tmp_path / "out"
    plain = write_matrix(tmp_path / "plain.toml", [("mc", "mc")], seeds=(0, 1))
    assert main(["run", str(plain), "--out", str(out), "--scheduler", "serial", *RUN]) == 0
    assert json.loads((out / "matrix.json").read_text()) == {
        "name": "runs", "source": str(plain), "cell_ids": [c.cell_id for c in load_matrix(plain).cells()]}
    keeping = write_matrix(tmp_path / "keeping.toml", [("mc", "mc")], seeds=(0, 1), keep_samples=True)
    assert [c.cell_id for c in load_matrix(keeping).cells()] == [c.cell_id for c in load_matrix(plain).cells()]
    capsys.readouterr()

    assert main(["run", str(keeping), "--out", str(out), "--scheduler", "serial", *RUN]) == 0
    said = capsys.readouterr().out
    assert "2 cells run (2 ok, 0 failed), 0 already finished" in said
    assert "2 of the cells run had finished ok without a samples file and were rerun" in said
    for path in (out / "records").glob("*.json"):
        assert (out / "records" / json.loads(path.read_text())["samples_file"]).is_file()
    assert json.loads((out / "matrix.json").read_text())["source"] == str(keeping)

    assert main(["run", str(keeping), "--out", str(out), "--scheduler", "serial", *RUN]) == 0
    assert "0 cells run (0 ok, 0 failed), 2 already finished\n" in capsys.readouterr().out

    junk = next((out / "records").glob("*.npz"))   # a samples file that is not one is no samples file
    junk.write_bytes(b"not a zip archive")
    assert main(["run", str(keeping), "--out", str(out), "--scheduler", "serial", *RUN]) == 0
    assert "1 of the cells run had finished ok without a samples file" in capsys.readouterr().out


# -------------------------------------------------- 17: a cluster that fails to start


def test_a_local_cluster_start_that_fails_is_retried_then_refused_clearly(tmp_path, plugins, monkeypatch, capsys):
    """A worker that dies while the LocalCluster starts: one death is retried and the run
    goes on; a death at every attempt exits 2 with a message, no traceback, nothing written."""
    deaths = tmp_path / "deaths"
    deaths.mkdir()
    monkeypatch.setenv("BOLTZBENCH_TEST_WORKER_DEATHS", str(deaths))
    path = write_matrix(tmp_path / "m.toml", [("mc", "mc")])
    (deaths / "death-0").touch()
    with dask.config.set({"distributed.worker.preload": ["dying_worker"]}):
        summary = run_matrix(load_matrix(path), tmp_path / "once", scheduler="local", workers=1, progress=False)
        assert (summary.ok, summary.failed) == (1, 0)
        assert not list(deaths.glob("death-*")), "no worker died while starting"
        for i in range(START_ATTEMPTS):
            (deaths / f"death-{i}").touch()
        assert main(["run", str(path), "--out", str(tmp_path / "always"), "--scheduler", "local", "--workers", "1",
                     *RUN]) == 2
    err = capsys.readouterr().err
    assert (f"error: --scheduler local: the Dask LocalCluster of 1 workers failed to start {START_ATTEMPTS} "
            "times (last: RuntimeError: Nanny failed to start worker process); no cell ran") in err
    assert "Traceback" not in err
    assert not (tmp_path / "always").exists()


# --------------------------------------------------------------- the Python API


def test_a_script_without_a_main_guard_can_run_a_matrix(tmp_path):
    """Cell processes never rerun the caller's script (as spawn and forkserver would)."""
    path = write_matrix(tmp_path / "m.toml", [("mc", "mc")])
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import boltzbench
        summary = boltzbench.run_matrix(boltzbench.load_matrix({str(path)!r}), {str(tmp_path / 'out')!r},
                                        progress=False)
        print("ran", summary.ok, summary.failed)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ran 1 0"]


# ------------------------------------------------- what a cell leaves behind, and odd results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"   # a zombie is dead


def test_a_cell_whose_helper_holds_the_pipe_is_still_over_and_its_helper_is_killed(tmp_path, plugins):
    """The cell exits while a process it started keeps the result pipe open: the run sees the
    death from the process's sentinel (not an end of file that never comes) and kills the
    cell's whole process group."""
    pid_file = tmp_path / "helper.pid"
    path = write_matrix(tmp_path / "m.toml", [("dying_sampler:LeavesAHelper", "helper")])
    path.write_text(path.read_text().replace("n_chains = 16", f'n_chains = 16, pid_file = "{pid_file}"'))
    started = time.monotonic()
    summary = run_matrix(load_matrix(path), tmp_path / "out", progress=False)
    assert summary.failed == 1 and time.monotonic() - started < 60     # not the helper's 300 s
    assert "exited with code 3" in by_label(tmp_path / "out")["helper"]["error"]
    helper = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(helper)


@pytest.mark.parametrize("what, status", [("object", "failed"), ("tensor", "ok")])
def test_diagnostics_are_json_in_the_record_or_the_cell_fails_alone(tmp_path, plugins, what, status):
    """A tensor in the diagnostics is converted; a value that is not JSON fails its own cell,
    named, and the run goes on (it used to crash the run, and every resume with it)."""
    path = write_matrix(tmp_path / "m.toml", [("dying_sampler:OddDiagnostics", "odd"), ("mc", "mc")])
    text = path.read_text().replace("params = { n_chains = 16 }", f'params = {{ n_chains = 16, what = "{what}" }}', 1)
    path.write_text(text)
    summary = run_matrix(load_matrix(path), tmp_path / "out", scheduler="serial", progress=False)
    records = by_label(tmp_path / "out")
    assert records["odd"]["status"] == status and records["mc"]["status"] == "ok"
    assert summary.ok + summary.failed == 2
    if status == "ok":
        assert records["odd"]["final"]["diagnostics"]["odd"] == [0.0, 1.0, 2.0]
    else:
        assert "diagnostics.odd is <object object" in records["odd"]["error"]


def test_the_curve_counts_the_ledger_not_what_the_snapshot_says():
    """A sampler cannot make itself cheaper by writing its own cost into a snapshot."""
    from boltzbench.contracts import Budget
    from boltzbench.matrix import Cell, Component

    cell = Cell(Component("double_well", "double_well", {}),
                Component("liar", "test_runs:CheapLiar", {"n_chains": 16}),
                0, Budget(max_evals=16 * 200, n_snapshots=2), ("energy_w1",))
    record = run_cell(cell).record
    assert [p["cost"] for p in record["curve"]] == [16 * 100, 16 * 200]
