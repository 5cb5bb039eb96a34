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


class Store:
    """The records folder of one results directory: ``OUT/records/<cell_id>.json``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.records_dir = self.out / "records"

    def path(self, cell_id: str) -> Path:
        return self.records_dir / f"{cell_id}.json"

    def load(self, cell_id: str) -> dict[str, Any] | None:
        path = self.path(cell_id)
        return json.loads(path.read_text()) if path.is_file() else None

    def is_done(self, cell_id: str, retry_failed: bool = False) -> bool:
        """A cell is done when its record exists (and is ``ok``, if failures are retried)."""
        record = self.load(cell_id)
        return record is not None and (record["status"] == "ok" or not retry_failed)

    def write(self, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        if arrays is not None:
            name = f"{record['cell_id']}.npz"
            write_npz_atomic(self.records_dir / name, arrays)
            record = {**record, "samples_file": name}
        write_json_atomic(self.path(record["cell_id"]), record)

    def records(self) -> list[dict[str, Any]]:
        """Every finished record, in a stable order (system, sampler, seed)."""
        records = [json.loads(p.read_text()) for p in sorted(self.records_dir.glob("*.json"))]
        return sorted(records, key=lambda r: (r["system"]["label"], r["sampler"]["label"], r["seed"]))

    def remove_partial(self) -> int:
        """Delete temporary files left by a run killed mid-write; returns how many."""
        leftovers = list(self.records_dir.glob(".*.tmp")) if self.records_dir.is_dir() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)
