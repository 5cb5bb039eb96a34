"""Which records a report shows, and under which row labels.

A **row** of the report is one normalized cell minus its seed: the system (name and all
parameters), the sampler (name and all parameters), the budget and the metrics. Records of
one row are seeds of one setting; records of different rows are never pooled:

* **The matrix that was run.** ``boltzbench run`` writes ``OUT/matrix.json`` with the cell
  ids of its matrix. By default the report shows those cells only and names the other
  records in the folder (an earlier matrix, another ``dt``, another budget); with
  ``all_records`` it shows them too, as rows of their own. A folder without
  ``matrix.json`` shows every record.
* **Distinct labels.** Rows that share a label (``md`` at two time steps, a system at two
  temperatures) get the settings that tell them apart appended, e.g. ``md (dt=0.005)``; the
  sampler's label in the matrix stays in ``sampler.matrix_label``.
* **Duplicates.** Two records of the same row and seed (the same cell run twice under
  different ids, for example by a version that did not yet normalize ``2e4`` to ``20000``)
  count once: the record of the matrix that was run, else the most recently finished one,
  is kept, and the others are named.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "matrix.json"
ROW_KEYS = ("system", "sampler", "budget", "metrics")


@dataclass
class Selection:
    """The records a report shows (one per row and seed, labels distinct per row) and the
    records it sets aside, each as "<file>: <why>"."""

    records: list[dict[str, Any]]
    outside: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def canonical(obj: Any) -> Any:
    """``obj`` with integral floats as integers, so that 2e4 and 20000 compare equal."""
    if isinstance(obj, dict):
        return {k: canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


def row_key(record: dict[str, Any]) -> str:
    """The record's row: its normalized cell minus the seed, as canonical JSON."""
    return json.dumps(canonical({k: record.get(k) for k in ROW_KEYS}), sort_keys=True)


def read_manifest(results: str | Path) -> dict[str, Any] | None:
    """``RESULTS/matrix.json`` (the cells of the last run), or None when absent or unreadable."""
    try:
        manifest = json.loads((Path(results) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    ids = manifest.get("cell_ids") if isinstance(manifest, dict) else None
    return manifest if isinstance(ids, list) else None


def describe(record: dict[str, Any]) -> str:
    return (f"{record['cell_id']}.json ({record['system']['label']} × {record['sampler']['label']} × "
            f"seed {record['seed']}, {record['status']})")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(canonical(obj))}


def differing_settings(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    """The names of the settings (system and sampler parameters, budget, metrics) in which
    the rows of records ``a`` and of records ``b`` differ; [] when they are one setting."""
    def flats(records):
        return {json.dumps(_flat({k: r.get(k) for k in ROW_KEYS}), sort_keys=True) for r in records}

    left, right = flats(a), flats(b)
    if left == right:
        return []
    values = [json.loads(f) for f in left | right]
    names = sorted(set().union(*values))
    return [n.split(".")[-1] for n in names if len({v.get(n) for v in values}) > 1]


def _suffixes(settings: dict[str, Any]) -> dict[str, str]:
    """For rows (key → their settings) that share a label: key → ' (name=value, …)' listing
    the settings in which the rows differ, named by their last component."""
    flat = {key: _flat(value) for key, value in settings.items()}
    names = sorted(set().union(*flat.values()))
    differ = [n for n in names if len({f.get(n) for f in flat.values()}) > 1]
    return {key: " (" + ", ".join(f"{n.split('.')[-1]}={f.get(n, '—')}"
                                  for n in differ) + ")" for key, f in flat.items()}


def _distinct_labels(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with labels made distinct: systems by their parameters, then samplers within
    each system by their name, parameters, budget and metrics."""
    systems: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in records:
        systems[r["system"]["label"]][json.dumps(canonical(r["system"]), sort_keys=True)] = r["system"]
    system_suffix = {label: _suffixes(rows) if len(rows) > 1 else {k: "" for k in rows}
                     for label, rows in systems.items()}
    out = []
    for r in records:
        key = json.dumps(canonical(r["system"]), sort_keys=True)
        label = r["system"]["label"] + system_suffix[r["system"]["label"]][key]
        out.append({**r, "system": {**r["system"], "label": label}})
    samplers: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for r in out:
        settings = {k: r.get(k) for k in ("sampler", "budget", "metrics")}
        samplers[(r["system"]["label"], r["sampler"]["label"])][row_key(r)] = settings
    suffix = {group: _suffixes(rows) if len(rows) > 1 else {k: "" for k in rows} for group, rows in samplers.items()}
    return [{**r, "sampler": {**r["sampler"], "matrix_label": r["sampler"]["label"],
                              "label": r["sampler"]["label"] + suffix[(r["system"]["label"], r["sampler"]["label"])][
                                  row_key(r)]}} for r in out]


def select_records(records: list[dict[str, Any]], manifest: dict[str, Any] | None = None,
                   all_records: bool = False) -> Selection:
    """The records to show (see the module docstring)."""
    current = set(manifest["cell_ids"]) if manifest else None
    shown, outside = [], []
    for record in records:
        if current is None or all_records or record["cell_id"] in current:
            shown.append(record)
        else:
            outside.append(f"{describe(record)}: not a cell of the matrix that was run last"
                           f" ({manifest.get('name', '?')})")
    by_seed: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in shown:
        by_seed[(row_key(record), record["seed"])].append(record)
    kept, duplicates = [], []
    for group in by_seed.values():
        group.sort(key=lambda r: (current is not None and r["cell_id"] in current, str(r.get("finished_at", ""))),
                   reverse=True)
        kept.append(group[0])
        duplicates += [f"{describe(r)}: the same cell and seed as {group[0]['cell_id']}, which is shown"
                       for r in group[1:]]
    kept.sort(key=lambda r: (r["system"]["label"], r["sampler"]["label"], r["seed"]))
    return Selection(_distinct_labels(kept), outside, duplicates)
