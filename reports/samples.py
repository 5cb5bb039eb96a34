"""Samples kept beside records (``<cell_id>.npz``, named by the record's ``samples_file``).

Arrays read (NumPy only, ``allow_pickle=False``): ``energies`` (T, C), ``log_weights``
(T, C) when the sampler weights its samples, ``positions`` (T, C, dof), and observables
stored as ``observables/<name>`` (T, C, ...) — for example ``observables/phi``,
``observables/pair_distance/AA`` — and ``states``. A missing or unreadable file gives
None and a note; reports never fail on one.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boltzbench.contracts import weights_from_log

OBSERVABLE_PREFIX = "observables/"


@dataclass
class KeptSamples:
    """Flattened kept samples of one cell: n = T·C draws with normalized weights."""

    energies: np.ndarray
    weights: np.ndarray
    observables: dict[str, np.ndarray] = field(default_factory=dict)
    dof: int | None = None


def _shape(npz: Any, key: str) -> tuple[int, ...]:
    """The shape of one array of an open .npz, read from its header (no decompression)."""
    with npz.zip.open(f"{key}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(handle)
    return tuple(shape)


def load_samples(record: dict[str, Any], records_dir: Path) -> tuple[KeptSamples | None, str | None]:
    """The kept samples of ``record`` and None, or None and why there are none."""
    name = record.get("samples_file")
    if not name:
        return None, None
    path = Path(records_dir) / Path(name).name
    try:
        with np.load(path, allow_pickle=False) as data:
            energies = np.asarray(data["energies"], float)
            n = energies.size
            log_w = np.asarray(data["log_weights"], float) if "log_weights" in data.files else None
            observables = {key[len(OBSERVABLE_PREFIX):]: np.asarray(data[key]).reshape(n, -1)
                           for key in data.files if key.startswith(OBSERVABLE_PREFIX)}
            dof = _shape(data, "positions")[-1] if "positions" in data.files else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        return None, f"{path.name}: unreadable samples ({type(exc).__name__}: {exc})"
    return KeptSamples(energies.ravel(), np.full(n, 1.0 / n) if log_w is None else weights_from_log(log_w), observables, dof), None
