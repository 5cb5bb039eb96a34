"""Result records on disk: one JSON file per finished cell, written atomically.

A record is written to a temporary file in the same folder, flushed to disk and renamed
over its final name (``os.replace`` is atomic on POSIX and Windows), so a record is either
complete or absent whatever moment a run is killed at. Samples, when kept, go beside the
record as ``<cell_id>.npz`` (NumPy arrays, never pickle) and are written first, so a
record never points at a missing file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

SCHEMA = "boltzbench.record/1"
KNOWN_SCHEMAS = (SCHEMA,)
STATUSES = ("ok", "failed", "timeout")
#: The keys of the normalized cell: what the cell id hashes and every record repeats.
SPEC_KEYS = ("system", "sampler", "seed", "budget", "metrics")


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: NumPy/torch scalars and arrays become numbers and lists;
    non-finite floats become ``None`` (JSON has no NaN or infinity)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_problem(obj: Any, where: str = "value") -> str | None:
    """Where ``obj`` holds something that is not plain JSON ("diagnostics.x is a set"), or None."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}, not a string"
            problem = json_problem(value, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(obj, list):
        return next((p for i, v in enumerate(obj) if (p := json_problem(v, f"{where}[{i}]"))), None)
    if obj is None or isinstance(obj, (str, bool, int)) or (isinstance(obj, float) and math.isfinite(obj)):
        return None
    return f"{where} is {obj!r} (a {type(obj).__name__}), not a JSON value"


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for sharing
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    text = json.dumps(to_jsonable(obj), indent=1, allow_nan=False)
    _write_atomic(Path(path), lambda handle: handle.write(text.encode()))


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    _write_atomic(Path(path), lambda handle: np.savez_compressed(handle, **arrays))


def cell_id_of(spec: dict[str, Any]) -> str:
    """The cell id: a hash of the normalized cell (system, sampler, seed, budget, metrics)."""
    blob = json.dumps({k: spec.get(k) for k in SPEC_KEYS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics_problem(metrics: Any, where: str) -> str | None:
    if not isinstance(metrics, dict):
        return f"{where} is not an object"
    for name, value in metrics.items():
        if value is not None and not _is_number(value):
            return f"{where}.{name} is {value!r}, not a number or null"
    return None


def record_problem(record: Any, file_name: str | None = None) -> str | None:
    """Why ``record`` is not a usable boltzbench record, or None if it is one.

    Checked: the schema (a version this code knows), the cell (system and sampler with
    label, name and params; integer seed; budget; metrics), that ``cell_id`` is the hash of
    that cell (:func:`cell_id_of`: a record edited into another cell is not that cell's
    record) and, given ``file_name``, the file's stem, the status, and the shapes that reports
    read: ``matrix``, ``cost``, ``curve`` points and ``final`` metrics (numbers or null) and
    diagnostics.
    """
    if not isinstance(record, dict):
        return f"not a boltzbench record (a JSON {type(record).__name__}, not an object)"
    schema = record.get("schema")
    family, _, version = schema.partition("/") if isinstance(schema, str) else ("", "", "")
    if family != SCHEMA.split("/")[0]:
        return f"not a boltzbench record (schema {schema!r}, expected {SCHEMA!r})"
    if schema not in KNOWN_SCHEMAS:
        return f"schema {schema!r} is not one this boltzbench reads ({', '.join(KNOWN_SCHEMAS)})"
    for key in ("system", "sampler"):
        part = record.get(key)
        if not (isinstance(part, dict) and isinstance(part.get("label"), str) and isinstance(part.get("name"), str)
                and isinstance(part.get("params"), dict)):
            return f"malformed record: no {key} with label, name and params"
    seed = record.get("seed")
    if not (isinstance(seed, int) and not isinstance(seed, bool)):
        return f"malformed record: seed {seed!r} is not an integer"
    if not isinstance(record.get("budget"), dict) or not isinstance(record.get("metrics"), list):
        return "malformed record: no budget or metrics list"
    cell_id = record.get("cell_id")
    if not isinstance(cell_id, str):
        return "malformed record: no cell_id"
    if cell_id != cell_id_of(record):
        return (f"its cell (system, sampler, seed, budget, metrics) hashes to {cell_id_of(record)}, not to its "
                f"cell_id {cell_id}: edited after it was written")
    if file_name is not None and Path(file_name).stem != cell_id:
        return f"holds the record of cell {cell_id}, not of the cell its file name says"
    if record.get("status") not in STATUSES:
        return f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}"
    for key, kind in (("matrix", dict), ("cost", dict), ("curve", list), ("final", dict)):
        if not isinstance(record.get(key), kind):
            return f"malformed record: {key} is {record.get(key)!r}, not a JSON {'object' if kind is dict else 'array'}"
    if not isinstance(record["final"].get("diagnostics"), dict):
        return "malformed record: no final.diagnostics object"
    problem = _metrics_problem(record["final"].get("metrics"), "final.metrics")
    for i, point in enumerate(record["curve"]):
        if problem is not None:
            break
        if not (isinstance(point, dict) and _is_number(point.get("cost"))):
            return f"malformed record: curve[{i}] has no numeric cost"
        problem = _metrics_problem(point.get("metrics"), f"curve[{i}].metrics")
    return None if problem is None else f"malformed record: {problem}"


def _undefined_non_finite(record: dict[str, Any]) -> dict[str, Any]:
    """The record with NaN/±inf metric values (legal in Python's JSON reader, never written
    by boltzbench) turned into null: undefined, never a number that sorts or averages."""
    def clean(metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: v if v is None or math.isfinite(v) else None for k, v in metrics.items()}

    return {**record, "final": {**record["final"], "metrics": clean(record["final"]["metrics"])},
            "curve": [{**p, "metrics": clean(p["metrics"])} for p in record["curve"]]}


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a usable record file, else (None, why not)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"not readable JSON ({type(exc).__name__}: {exc})"
    problem = record_problem(record, path.name)
    return (None, problem) if problem else (_undefined_non_finite(record), None)


class FolderBusy(ValueError):
    """The results folder is locked by another running ``boltzbench run``."""


class Store:
    """The records folder of one results directory: ``OUT/records/<cell_id>.json``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.records_dir = self.out / "records"
        self._locked = False  # holding OUT/.lock (see lock)

    def path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

    def load(self, cell_id: str) -> dict[str, Any] | None:
        """The cell's record, or None when it is absent or not a usable record of that cell."""
        return read_record(self.path(cell_id))[0]

    def is_done(self, cell_id: str, retry_failed: bool = False, need_samples: bool = False) -> bool:
        """A cell is done when a usable record exists, and is ``ok`` if failures are retried,
        and, if ``need_samples`` (the matrix keeps samples), an ``ok`` record has its samples
        file beside it. A corrupt file, or an ok cell without its samples, is rerun."""
        record = self.load(cell_id)
        if record is None:
            return False
        if record["status"] != "ok":
            return not retry_failed
        return not need_samples or self.has_samples(record)

    def has_samples(self, record: dict[str, Any]) -> bool:
        """Whether the record names a samples file that is there beside it."""
        name = record.get("samples_file")
        return (isinstance(name, str) and Path(name).name == name and (self.records_dir / name).is_file()
                and zipfile.is_zipfile(self.records_dir / name))

    def write(self, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        if arrays is not None:
            name = f"{record['cell_id']}.npz"
            write_npz_atomic(self.records_dir / name, arrays)
            record = {**record, "samples_file": name}
        write_json_atomic(self.path(record["cell_id"]), record)

    def records(self, problems: list[str] | None = None) -> list[dict[str, Any]]:
        """Every finished record, in a stable order (system, sampler, seed).

        A file that is not a readable boltzbench record (corrupt or foreign JSON) is skipped;
        when ``problems`` is given, "<file name>: <reason>" is appended to it for each one.
        """
        records = []
        for path in sorted(self.records_dir.glob("*.json")):
            record, reason = read_record(path)
            if record is not None:
                records.append(record)
            elif problems is not None:
                problems.append(f"{path.name}: {reason}")
        return sorted(records, key=lambda r: (r["system"]["label"], r["sampler"]["label"], r["seed"]))

    def remove_partial(self) -> int:
        """Delete temporary files left by a run killed mid-write; returns how many.

        Only while holding :meth:`lock`: a temporary file is then never a live run's write.
        """
        if not self._locked:
            raise RuntimeError(f"{self.out}: remove_partial needs the folder's lock (Store.lock)")
        leftovers = list(self.records_dir.glob(".*.tmp")) if self.records_dir.is_dir() else []
        leftovers += list(self.out.glob(".matrix.json.*.tmp"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``OUT/.lock`` exclusively for a run (``fcntl.flock``; creates OUT).

        The kernel releases the lock when the process ends, however it ends, so a killed
        run never leaves the folder locked. The file keeps the holder's pid, for the message
        of :class:`FolderBusy`, raised at once when another process holds the lock. Not
        reentrant: one lock per folder per process.
        """
        import fcntl

        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ValueError(f"--out {self.out}: cannot write here ({exc.strerror or exc})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise FolderBusy(f"--out {self.out}: in use by another boltzbench run (pid {holder}); wait "
                                 "for it to end, or give another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._locked = True
            try:
                yield
            finally:
                self._locked = False
        finally:
            os.close(fd)  # releases the lock
