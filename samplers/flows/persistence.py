"""Saving and loading a trained Boltzmann generator (no pickle).

A ``.pt`` file written by :func:`save_flow` holds only tensors, strings and numbers, so it
is read back with ``torch.load(path, weights_only=True)``:

* ``state_dict`` — the flow's weights and buffers (standardization statistics, Z-matrix),
* ``spec`` — the architecture as a JSON string (enough to rebuild the module),
* ``meta`` — JSON: the base description, the setup cost of the original training
  (evaluations and wall seconds), the training diagnostics, the cache key's inputs,
* ``base_state`` — for a thermal base, the chains' last state (tensors) so that a run
  that reuses the flow continues them instead of starting cold.

:func:`cache_key` hashes what determines a trained flow — system and parameters, every
training parameter, the training seed and the budget (training stops at a fraction of
it) — so a matrix can reuse one flow across the seeds of its sampling phase.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "boltzbench-flow/2"  # 2: internal coordinates go through BondAngleDomain


def cache_key(inputs: dict[str, Any]) -> str:
    """A 16-hex-digit SHA-256 of the JSON of ``inputs`` (sorted keys)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_flow(path: str | Path, state_dict: dict[str, torch.Tensor], spec: dict[str, Any],
              meta: dict[str, Any], base_state: dict[str, Any] | None = None) -> Path:
    """Write the flow atomically (temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "spec": json.dumps(spec, sort_keys=True),
        "meta": json.dumps(meta, sort_keys=True),
        "base_state": {k: (v.detach().cpu() if torch.is_tensor(v) else v)
                       for k, v in (base_state or {}).items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_flow(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`save_flow` with ``weights_only=True``.

    Returns (state_dict, spec, meta, base_state).
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a boltzbench flow file (format {payload.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return payload["state_dict"], json.loads(payload["spec"]), json.loads(payload["meta"]), payload["base_state"]
