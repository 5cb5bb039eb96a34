"""Result records on disk: one JSON file per finished cell, written atomically.

A record is written to a temporary file in the same folder, flushed to disk and renamed
over its final name (``os.replace`` is atomic on POSIX and Windows), so a record is either
complete or absent whatever moment a run is killed at. Samples, when kept, go beside the
record as ``<cell_id>.npz`` (NumPy arrays, never pickle) and are written first, so a
record never points at a missing file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCHEMA = "boltzbench.record/1"


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


def _record_problem(record: Any) -> str | None:
    """Why ``record`` is not a usable boltzbench record, or None if it is one."""
    if not isinstance(record, dict):
        return f"not a boltzbench record (a JSON {type(record).__name__}, not an object)"
    schema = record.get("schema")
    if not (isinstance(schema, str) and schema.split("/")[0] == SCHEMA.split("/")[0]):
        return f"not a boltzbench record (schema {schema!r}, expected {SCHEMA!r})"
    for key in ("system", "sampler"):
        if not (isinstance(record.get(key), dict) and isinstance(record[key].get("label"), str)):
            return f"malformed record: no {key}.label"
    if not isinstance(record.get("seed"), int) or not isinstance(record.get("status"), str):
        return "malformed record: no integer seed or no status"
    if record["status"] == "ok" and not (
            isinstance(record.get("final"), dict) and isinstance(record["final"].get("metrics"), dict)
            and isinstance(record.get("cost"), dict) and isinstance(record.get("curve"), list)):
        return "malformed record: status ok without final metrics, cost or curve"
    return None


class Store:
    """The records folder of one results directory: ``OUT/records/<cell_id>.json``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.records_dir = self.out / "records"

    def path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

    def load(self, cell_id: str) -> dict[str, Any] | None:
        """The cell's record, or None when it is absent or not a readable record."""
        try:
            record = json.loads(self.path(cell_id).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return record if _record_problem(record) is None else None

    def is_done(self, cell_id: str, retry_failed: bool = False) -> bool:
        """A cell is done when a readable record exists (and is ``ok``, if failures are
        retried); a corrupt file is rerun and overwritten."""
        record = self.load(cell_id)
        return record is not None and (record["status"] == "ok" or not retry_failed)

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
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                reason = _record_problem(record)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                reason = f"not readable JSON ({type(exc).__name__}: {exc})"
            if reason is None:
                records.append(record)
            elif problems is not None:
                problems.append(f"{path.name}: {reason}")
        return sorted(records, key=lambda r: (r["system"]["label"], r["sampler"]["label"], r["seed"]))

    def remove_partial(self) -> int:
        """Delete temporary files left by a run killed mid-write; returns how many."""
        leftovers = list(self.records_dir.glob(".*.tmp")) if self.records_dir.is_dir() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)
