"""Samplers that kill or block the process running them: for the tests of dying and hanging cells."""

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


@dataclass
class TalksThenDies(MetropolisMC):
    """Writes ``lines`` numbered lines to ``sys.stderr``, yields a snapshot, writes a last
    line to file descriptor 2 directly (as compiled code would), then calls ``os._exit(3)``."""

    name: ClassVar[str] = "talks_then_dies"
    lines: int = param(25, "numbered lines written to sys.stderr before the first snapshot")

    def run(self, system, budget, generator):
        import sys

        for i in range(self.lines):
            print(f"talks_then_dies line {i}", file=sys.stderr)
        yield next(super().run(system, budget, generator))
        os.write(2, b"talks_then_dies: last words, on fd 2\n")
        os._exit(3)


@dataclass
class Segfaults(MetropolisMC):
    """Crashes its process with a segmentation fault, as a bug in compiled code would."""

    name: ClassVar[str] = "segfaults"

    def run(self, system, budget, generator):
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
        yield  # pragma: no cover


@dataclass
class Hangs(MetropolisMC):
    """Ignores its budget and its deadline: yields one snapshot, says so on stderr, then
    sleeps forever."""

    name: ClassVar[str] = "hangs"

    def run(self, system, budget, generator):
        import sys
        import time

        yield next(super().run(system, budget, generator))
        print("hangs: asleep, whatever the deadline", file=sys.stderr)
        while True:
            time.sleep(0.1)


@dataclass
class FloodsThenHangs(MetropolisMC):
    """Ignores its deadline: writes to file descriptor 2 as fast as it can for ``seconds``,
    then sleeps forever."""

    name: ClassVar[str] = "floods_then_hangs"
    seconds: float = param(15.0, "how long it floods fd 2")

    def run(self, system, budget, generator):
        import time

        end, chunk = time.monotonic() + self.seconds, b"flood " * 10_000 + b"\n"
        while time.monotonic() < end:
            os.write(2, chunk)
        while True:
            time.sleep(0.1)
        yield  # pragma: no cover


def _kill_the_dask_worker():
    """Kill the Dask worker running this cell: the cell's process is a child of the fork
    server, itself a child of the worker."""
    import signal
    import time

    import psutil

    os.kill(psutil.Process(os.getppid()).ppid(), signal.SIGKILL)
    time.sleep(60)  # this process ends with its parents


@dataclass
class KillsWorkerOnce(MetropolisMC):
    """Kills its Dask worker the first time it runs (leaving a marker file), then samples."""

    name: ClassVar[str] = "kills_worker_once"
    marker: str = param("", "file that records the first kill")

    def run(self, system, budget, generator):
        if not Path(self.marker).exists():
            Path(self.marker).write_text("killed")
            _kill_the_dask_worker()
        yield from super().run(system, budget, generator)


@dataclass
class AlwaysKillsWorker(MetropolisMC):
    """Kills its Dask worker every time it runs."""

    name: ClassVar[str] = "always_kills_worker"

    def run(self, system, budget, generator):
        _kill_the_dask_worker()
        yield  # pragma: no cover


@dataclass
class OddDiagnostics(MetropolisMC):
    """Puts a value in its diagnostics: ``what`` = "object" (not JSON), "tensor" (converted)."""

    name: ClassVar[str] = "odd_diagnostics"
    what: str = param("object", "object or tensor")

    def run(self, system, budget, generator):
        import torch

        odd = object() if self.what == "object" else torch.arange(3.0)
        for snapshot in super().run(system, budget, generator):
            snapshot.diagnostics["odd"] = odd
            yield snapshot


@dataclass
class LeavesAHelper(MetropolisMC):
    """Starts a long-lived helper process that inherits every descriptor, then exits its own
    process: the helper holds the result pipe open, but the cell is still over."""

    name: ClassVar[str] = "leaves_a_helper"
    pid_file: str = param("", "file that records the helper's pid")

    def run(self, system, budget, generator):
        import subprocess

        helper = subprocess.Popen(["sleep", "300"], close_fds=False)
        Path(self.pid_file).write_text(str(helper.pid))
        os._exit(3)
        yield  # pragma: no cover
