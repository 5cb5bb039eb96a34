"""The Markdown report: final metrics per cell and per (system, sampler) over seeds.

Reports read records only (DESIGN.md: data flows one way).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from boltzbench.reports.plots import plot_curves
from boltzbench.store import Store


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _mean_std(values: list[float | None]) -> str:
    """'mean ± std (n)' over seeds; cells where the metric is undefined are counted apart."""
    finite = [v for v in values if v is not None]
    if not finite:
        return "—"
    text = f"{np.mean(finite):.4g}"
    if len(finite) > 1:
        text += f" ± {np.std(finite, ddof=1):.2g}"
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)} undefined)"
    return text


def render_markdown(records: list[dict[str, Any]], title: str = "boltzbench report",
                    figures: dict[str, str] | None = None) -> str:
    """The report's Markdown; ``figures`` maps a system label to its curve image's path."""
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    matrices = sorted({r.get("matrix", {}).get("name", "?") for r in records})
    baselines = sorted({r.get("matrix", {}).get("baseline", "?") for r in records})
    lines = [f"# {title}", "",
             f"{len(records)} cells: {len(ok)} ok, {len(failed)} failed · matrix: {', '.join(matrices)}"
             f" · baseline sampler: {', '.join(baselines)}", "",
             "Costs count energy + force evaluations of single configurations, setup included. "
             "Energies are reduced (u = U/kT). Mean ± standard deviation over seeds.", ""]

    by_system: dict[str, list[dict]] = defaultdict(list)
    for record in ok:
        by_system[record["system"]["label"]].append(record)
    for label, group in by_system.items():
        system = group[0]["system"]
        metrics = list(dict.fromkeys(m for r in group for m in r["metrics"]))
        lines += [f"## {label}", "", f"`{system['name']}` {json.dumps(system['params'])}", ""]
        exact = group[0].get("reference") or {}
        if exact.get("exact"):
            lines += ["Reference: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in exact["exact"].items())
                      + f" ({exact['provenance'].get('method', '')})", ""]
        by_sampler: dict[str, list[dict]] = defaultdict(list)
        for record in group:
            by_sampler[record["sampler"]["label"]].append(record)
        rows = []
        for sampler, runs in by_sampler.items():
            rows.append([sampler, len(runs), _mean_std([r["cost"]["total_evals"] for r in runs]),
                         _mean_std([r["cost"]["total_wall_s"] for r in runs])]
                        + [_mean_std([r["final"]["metrics"].get(m) for r in runs]) for m in metrics])
        if figures and label in figures:
            lines += [f"![accuracy versus cost, {label}]({figures[label]})", ""]
        lines += ["### Final metrics over seeds", ""]
        lines += _table(["sampler", "seeds", "evals", "wall s"] + metrics, rows) + [""]
        rows = [[r["sampler"]["label"], r["seed"], r["cost"]["total_evals"], r["cost"]["total_wall_s"]]
                + [r["final"]["metrics"].get(m) for m in metrics]
                + [", ".join(f"{k}={_fmt(v)}" for k, v in r["final"]["diagnostics"].items()), f"`{r['cell_id']}`"]
                for r in group]
        lines += ["### Cells", ""]
        lines += _table(["sampler", "seed", "evals", "wall s"] + metrics + ["diagnostics", "cell"], rows) + [""]

    if failed:
        lines += ["## Failed cells", ""]
        lines += _table(["system", "sampler", "seed", "status", "error", "cell"],
                        [[r["system"]["label"], r["sampler"]["label"], r["seed"], r["status"],
                          (r["error"] or "").replace("|", "\\|"), f"`{r['cell_id']}`"] for r in failed]) + [""]

    if records:
        env = records[-1]["env"]
        packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        lines += ["## Environment", "",
                  f"Python {env['python']} on {env['platform']}; {env['cpu_count']} CPUs, "
                  f"{env['torch_threads']} torch threads, device {env['device']}; {packages}.", ""]
    return "\n".join(lines)


def write_report(results: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` for the records in ``results`` (default ``results/report/``)."""
    records = Store(results).records()
    if not records:
        raise FileNotFoundError(f"no records in {Path(results) / 'records'}: run a matrix first")
    path = Path(out) if out is not None else Path(results) / "report" / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    by_system: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record["status"] == "ok":
            by_system[record["system"]["label"]].append(record)
    figures = {label: plot_curves(group, path.parent / f"curves-{label}.png").name
               for label, group in by_system.items()}
    path.write_text(render_markdown(records, figures=figures))
    return path
