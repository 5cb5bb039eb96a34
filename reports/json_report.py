"""``boltzbench report --json PATH``: the report's numbers for CI, as one JSON document.

The schema is ``report.schema.json`` beside this module (JSON Schema draft 2020-12), named in
the document's ``schema`` field (``boltzbench.report/1``). Undefined values (a metric with no
value, an interval with fewer than two seeds, a speedup with no target) are ``null``: the
document never holds NaN or infinity. The numbers are those of the Markdown report: ranks from
:func:`boltzbench.metrics.ranking.rank_samplers`, final metrics as mean over seeds with a 95 %
percentile bootstrap interval (:func:`boltzbench.reports.compare.final_interval`), speedups
from :func:`boltzbench.metrics.speedup.speedup_table`, changes from
:func:`boltzbench.reports.compare.compare`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from importlib.resources import files
from pathlib import Path
from typing import Any

from boltzbench.metrics.ranking import rank_samplers
from boltzbench.metrics.speedup import Interval, speedup_table
from boltzbench.reports.build import speedup_metric as choose_speedup_metric
from boltzbench.reports.compare import Change, final_interval

SCHEMA_ID = "boltzbench.report/1"


def schema() -> dict[str, Any]:
    """The JSON Schema of the document (``reports/report.schema.json``)."""
    return json.loads((files("boltzbench.reports") / "report.schema.json").read_text(encoding="utf-8"))


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def interval_json(interval: Interval | None) -> dict[str, Any]:
    """``{"value", "low", "high", "bound"}``; null where undefined (bound: "", lower, upper, undefined)."""
    if interval is None or interval.value is None:
        return {"value": None, "low": None, "high": None, "bound": "undefined"}
    return {"value": _num(interval.value), "low": _num(interval.low), "high": _num(interval.high),
            "bound": interval.bound}


def ranking_json(records: list[dict[str, Any]]) -> dict[str, Any]:
    result = rank_samplers(records)
    return {
        "rule": result.rule,
        "overall": [{"sampler": e.sampler, "rank": e.rank, "score": e.score, "wins": list(e.wins),
                     "losses": list(e.losses), "ties": list(e.ties), "never_met": list(e.never_met),
                     "n_systems": e.n_systems, "tied_with": list(e.tied_with)} for e in result.overall],
        "per_system": {system: {"metrics": list(result.metrics.get(system, [])),
                                "samplers": [{"sampler": e.sampler, "rank": e.rank, "mean_rank": _num(e.mean_rank),
                                              "low": _num(e.low), "high": _num(e.high), "seeds": e.seeds,
                                              "tied_with": list(e.tied_with)} for e in entries]}
                       for system, entries in result.per_system.items()},
        "pairwise": [{"a": p.a, "b": p.b, "systems": list(p.systems), "win_rate": _num(p.win_rate),
                      "low": _num(p.low), "high": _num(p.high), "winner": p.winner}
                     for p in result.pairs.values()],
    }


def _groups(records: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record[key]["label"]].append(record)
    return groups


def systems_json(records: list[dict[str, Any]], speedup_metric: str | None,
                 target: str | float | None) -> dict[str, Any]:
    """Per system: final metrics per sampler (mean and interval over the ok seeds) and speedups."""
    out: dict[str, Any] = {}
    for system, group in _groups(records, "system").items():
        ok = [r for r in group if r.get("status") == "ok"]
        metrics = list(dict.fromkeys(m for r in ok for m in (r.get("final") or {}).get("metrics", {})))
        samplers = {}
        for sampler, runs in _groups(group, "sampler").items():
            good = [r for r in runs if r.get("status") == "ok"]
            samplers[sampler] = {"seeds": sorted({int(r["seed"]) for r in good}),
                                 "failed_seeds": sorted({int(r["seed"]) for r in runs if r.get("status") != "ok"}),
                                 "metrics": {m: interval_json(final_interval(good, m)) for m in metrics}}
        entry: dict[str, Any] = {"metrics": metrics, "samplers": samplers, "speedup": None}
        metric = choose_speedup_metric(ok, speedup_metric) if ok else None
        if metric is not None:
            table = speedup_table(ok, metric, target)
            entry["speedup"] = {
                "metric": table.metric, "target": _num(table.target), "target_rule": table.target_rule,
                "baseline": table.baseline,
                "rows": [{"sampler": row.sampler, "seeds": row.seeds, "reached": row.reached,
                          "cost_evals": interval_json(row.cost_evals),
                          "speedup_evals": interval_json(row.speedup_evals),
                          "speedup_wall": interval_json(row.speedup_wall),
                          "ess_per_eval": interval_json(row.ess_per_eval),
                          "ess_per_second": interval_json(row.ess_per_second)} for row in table.rows]}
        out[system] = entry
    return out


def changes_json(changes: list[Change] | None, baseline: str | None) -> dict[str, Any] | None:
    if baseline is None:
        return None
    changes = changes or []
    return {"baseline": baseline, "regressions": sum(c.is_regression for c in changes),
            "changes": [{"system": c.system, "sampler": c.sampler, "metric": c.metric, "verdict": c.verdict,
                         "regression": c.is_regression,
                         "before": None if c.before is None else interval_json(c.before),
                         "after": None if c.after is None else interval_json(c.after),
                         "relative": _num(c.relative), "p_value": _num(c.p_value)} for c in changes]}


def report_json(records: list[dict[str, Any]], *, changes: list[Change] | None = None, baseline: str | None = None,
                speedup_metric: str | None = None, target: str | float | None = None) -> dict[str, Any]:
    """The whole document (see ``report.schema.json``)."""
    return {
        "schema": SCHEMA_ID,
        "cells": {"total": len(records), "ok": sum(r.get("status") == "ok" for r in records),
                  "failed": sum(r.get("status") != "ok" for r in records)},
        "matrices": sorted({str((r.get("matrix") or {}).get("name", "?")) for r in records}),
        "ranking": ranking_json(records),
        "systems": systems_json(records, speedup_metric, target),
        "comparison": changes_json(changes, baseline),
    }


def write_json_report(path: str | Path, document: dict[str, Any]) -> Path:
    """Write the document; ``allow_nan=False`` makes a stray NaN an error, not invalid JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path
