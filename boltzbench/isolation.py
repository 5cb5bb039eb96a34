"""Every cell in a child process, whatever the scheduler.

A cell that kills its process (``os._exit``, a segfault in compiled code, the OOM killer)
or ignores its deadline then costs only its own record, never the run: the parent turns a
death into a ``failed`` record naming the exit code or signal and ending with the last
lines the cell's process wrote to stderr, and kills a cell still running a grace period
after its timeout (a ``timeout`` record, with those lines too). Children are forked from
a "forkserver" that has imported boltzbench once, so a cell starts in well under a second
with a clean, single-threaded torch, and runs with the torch threads it is given.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from contextlib import contextmanager
from multiprocessing import connection
from typing import Any, Callable

import torch

from boltzbench.matrix import Cell
from boltzbench.runner import CellOutcome, failed_record, run_cell

_CONTEXT: Any = None
TAIL_LINES = 20  # lines of a dead cell's stderr in its record,
TAIL_WIDTH = 200  # each cut to this many characters: at most about 4 KB
COPY_LIMIT = 1 << 20  # bytes of a cell's stderr passed on per look at the pipe (Linux's pipe-max-size)


def kill_grace_s(timeout_s: float) -> float:
    """Seconds a cell may run past ``timeout_s`` before its process is killed: max(2 s, 10 %
    of the timeout), for the sampler's last step and the final metrics after the deadline."""
    return max(2.0, 0.1 * timeout_s)


def _context():
    """The start method of cell processes: "forkserver", with boltzbench preloaded (a cell's
    process is a fork of a clean single-threaded server, so it starts in milliseconds and
    never inherits a torch thread pool), else "spawn"."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CONTEXT = multiprocessing.get_context("forkserver")
            _CONTEXT.set_forkserver_preload(["boltzbench.isolation", "boltzbench._warm"])
        else:  # pragma: no cover - Windows
            _CONTEXT = multiprocessing.get_context("spawn")
    return _CONTEXT


@contextmanager
def _starting_child():
    """What holds while a cell's process starts.

    * A daemonic process (a Dask worker, by default) may start it: multiprocessing refuses
      so that no child outlives a daemon, and a cell's process ends with its parent anyway
      (:func:`_exit_with_parent`).
    * The child does not rerun the caller's main script, as "spawn" and "forkserver" would:
      a cell needs only importable modules, so a script calling ``run_matrix`` needs no
      ``if __name__ == "__main__"`` guard, and no cell pays for the script's imports.
    """
    config = multiprocessing.current_process()._config  # noqa: SLF001 - where the flag lives
    daemon = config.pop("daemon", None)
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__: nothing to rerun
    try:
        yield
    finally:
        sys.modules["__main__"] = main
        if daemon is not None:
            config["daemon"] = daemon


def _exit_with_parent() -> None:
    """End this process as soon as the process that started it dies (a killed run or Dask
    worker must not leave its cell computing, nor, through this process, its fork server):
    a daemon thread waits on multiprocessing's sentinel of the parent."""
    parent = multiprocessing.parent_process()

    def watch() -> None:
        parent.join()  # returns when the parent's end of the sentinel pipe closes
        os._exit(70)

    if parent is not None:
        threading.Thread(target=watch, name="boltzbench-exit-with-parent", daemon=True).start()


def _stderr_to(pipe) -> None:
    """Make the write end ``pipe`` of the parent's :class:`_StderrTee` this process's file
    descriptor 2 (so the output of compiled code is caught too, not only ``sys.stderr``'s),
    and let :mod:`faulthandler` print the Python stack there on SIGSEGV, SIGBUS, SIGABRT,
    SIGFPE or SIGILL."""
    sys.stderr.flush()
    os.dup2(pipe.fileno(), 2)
    pipe.close()
    faulthandler.enable(file=2, all_threads=False)  # the crashing thread: the cell's, in a short tail


def _cell_process(conn, stderr, cell: Cell, matrix: dict[str, Any] | None, timeout_s: float | None,
                  threads: int, keep_samples: bool, environ: dict[str, str]) -> None:
    """The body of a cell's process: ``threads`` torch threads, then the cell; progress
    fractions and the outcome go to the parent over ``conn``, file descriptor 2 to the pipe
    ``stderr``."""
    _stderr_to(stderr)
    os.setsid()  # a process group of its own: the parent kills it whole, with what the cell started
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it then kills this process
    _exit_with_parent()
    os.environ.clear()  # the parent's environment now (the fork server has the one of its start),
    os.environ.update(environ)  # e.g. BOLTZBENCH_REFERENCES
    torch.set_num_threads(threads)
    outcome = run_cell(cell, matrix=matrix, timeout_s=timeout_s,
                       on_progress=lambda fraction: conn.send(("progress", fraction)))
    try:
        conn.send(("outcome", outcome if keep_samples else CellOutcome(outcome.record, None)))
    except Exception as exc:  # noqa: BLE001 - e.g. kept samples that cannot be pickled
        conn.send(("outcome", CellOutcome(failed_record(
            cell, matrix, f"the cell's result could not be sent to the run: {type(exc).__name__}: {exc}",
            threads=threads), None)))
    conn.close()


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` whole; drop it if ``fd`` cannot take it (a closed stderr)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass


class _StderrTee:
    """The read end of the pipe that is a cell process's file descriptor 2.

    :meth:`copy` passes what the child wrote on to this process's fd 2 at once (live output,
    as when the child wrote there itself) and keeps the last ``keep`` bytes, for the record
    of a cell that dies. What the child wrote before it died, even by SIGKILL, is in the
    pipe: one :meth:`copy` after its death gets it all (a pipe holds at most
    ``COPY_LIMIT``, the largest capacity an unprivileged process can give it).
    """

    def __init__(self, receiver, keep: int = 1 << 16):  # room for long lines, e.g. faulthandler's module list
        self.receiver, self.keep, self.kept, self.open = receiver, keep, bytearray(), True
        os.set_blocking(receiver.fileno(), False)

    def waitables(self) -> list[Any]:
        """What to add to :func:`connection.wait`: the pipe, until every writer closed it."""
        return [self.receiver] if self.open else []

    def copy(self) -> None:
        """Pass on and keep what the pipe holds now, at most ``COPY_LIMIT`` bytes: a cell that
        writes faster than this process's fd 2 takes output must not keep its caller from the
        kill time. Never blocks on the pipe."""
        left = COPY_LIMIT
        while self.open and left > 0:
            try:
                chunk = os.read(self.receiver.fileno(), min(65536, left))
            except BlockingIOError:
                return
            if not chunk:
                self.open = False  # end of file: no process holds the write end
                return
            _write_all(2, chunk)
            left -= len(chunk)
            self.kept += chunk
            del self.kept[:-self.keep]

    def close(self) -> None:
        self.open = False
        self.receiver.close()


def stderr_tail(data: bytes, lines: int = TAIL_LINES, width: int = TAIL_WIDTH) -> str:
    """The last ``lines`` lines of ``data`` (UTF-8, undecodable bytes replaced), trailing
    whitespace dropped, each line cut to ``width`` characters; "" when ``data`` is blank."""
    text = data.decode("utf-8", errors="replace").rstrip()
    return "\n".join(line if len(line) <= width else line[:width] + " …" for line in text.splitlines()[-lines:])


def with_stderr_tail(error: str, tail: str) -> str:
    """``error`` then, if the cell's process wrote anything to stderr, its last lines."""
    return f"{error}\nlast lines the cell's process wrote to stderr:\n{tail}" if tail else error


def _join(process, stderr: _StderrTee, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``process`` to end, copying its stderr meanwhile (a child
    whose stderr pipe is full would block and never end)."""
    end = time.monotonic() + timeout
    while True:
        ready = connection.wait([process.sentinel, *stderr.waitables()], max(0.0, end - time.monotonic()))
        stderr.copy()
        if process.sentinel in ready or time.monotonic() >= end:
            return


def _kill_group(pid: int) -> None:
    """Kill what is left of a cell's process group: processes the cell started (it leads a
    group of its own, :func:`_cell_process`), which must not outlive it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left


def _death(exitcode: int | None) -> str:
    """Why a cell's process ended without a result, from its exit code (−N: killed by signal N)."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        hint = {"SIGKILL": "; killed from outside, on Linux often by the out-of-memory killer (see dmesg)",
                "SIGSEGV": "; a segmentation fault, usually in compiled code",
                "SIGBUS": "; a bus error, usually in compiled code",
                "SIGABRT": "; an abort, usually a failed check in compiled code"}.get(name, "")
        return f"the cell's process was killed by {name} (signal {-exitcode}){hint}, before it returned a result"
    return (f"the cell's process exited with code {exitcode} before it returned a result (os._exit or "
            "sys.exit in the sampler or a plugin, or a failure to start: see the run's stderr)")


def run_cell_in_process(cell: Cell, *, matrix: dict[str, Any] | None = None, timeout_s: float | None = None,
                        threads: int = 1, keep_samples: bool = False,
                        on_progress: Callable[[float], None] | None = None) -> CellOutcome:
    """Run one cell in a child process with ``threads`` torch threads; never raises for
    anything the cell does (a Ctrl-C of this process kills the child and propagates).

    The child runs :func:`run_cell` (so the cooperative ``timeout_s`` applies) and sends
    progress fractions and its :class:`CellOutcome` back over a pipe, the samples only when
    ``keep_samples``. A child that ends without an outcome (os._exit, a segfault, the OOM
    killer) gives a ``failed`` record naming its exit code or signal; one still running
    ``kill_grace_s(timeout_s)`` after ``timeout_s`` is killed and gives a ``timeout`` record.
    Both end with the last lines (:func:`stderr_tail`) the child wrote to its file
    descriptor 2, a pipe to this process, which passes them on to its own fd 2 as they come.
    """
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    err_receiver, err_sender = context.Pipe(duplex=False)  # raw bytes, not messages: see _StderrTee
    process = context.Process(target=_cell_process, name=f"boltzbench-cell-{cell.cell_id}",
                              args=(sender, err_sender, cell, matrix, timeout_s, threads, keep_samples,
                                    dict(os.environ)))
    with _starting_child():
        process.start()
    sender.close()  # the child holds the only write end (a grandchild may inherit it: see below)
    err_sender.close()
    stderr = _StderrTee(err_receiver)
    kill_at = None if timeout_s is None else time.monotonic() + timeout_s + kill_grace_s(timeout_s)
    outcome, ended, progress = None, False, 0.0
    try:
        while outcome is None and not ended:
            wait = None if kill_at is None else kill_at - time.monotonic()
            if wait is not None and wait <= 0:
                break  # past the kill time
            # the pipe has data, or the child ended (its sentinel: a grandchild that inherited
            # the pipe must not hide the child's death by keeping the pipe open), or wrote to stderr
            ready = connection.wait([receiver, process.sentinel, *stderr.waitables()], wait)
            stderr.copy()
            if receiver not in ready and process.sentinel not in ready:
                continue
            if not receiver.poll():
                ended = True
                break
            try:
                kind, value = receiver.recv()
            except (EOFError, OSError):
                ended = True
                break
            if kind == "outcome":
                outcome = value
            else:
                progress = value
                if on_progress is not None:
                    on_progress(value)
    finally:
        receiver.close()
        _join(process, stderr, 5.0 if outcome is not None or ended else 0.0)
        if process.is_alive():
            process.kill()
            process.join()
        _kill_group(process.pid)
        stderr.copy()  # the rest: all that the child and its group wrote is in the pipe now
        stderr.close()
    exitcode = process.exitcode
    process.close()
    if outcome is not None:
        return outcome
    tail = stderr_tail(stderr.kept)
    if ended:
        return CellOutcome(failed_record(cell, matrix, with_stderr_tail(_death(exitcode), tail), threads=threads),
                           None)
    error = (f"per-cell timeout of {timeout_s:g} s: the cell did not stop at its deadline (a step that "
             f"never checks the budget, or a hang) and was killed {kill_grace_s(timeout_s):g} s later, "
             f"at {100 * progress:.0f} % of the budget; no curve is kept")
    return CellOutcome(failed_record(cell, matrix, with_stderr_tail(error, tail), status="timeout", threads=threads),
                       None)
