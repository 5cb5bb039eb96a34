"""Figures for reports: accuracy versus cost, the curve every speedup is read from."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per metric: metric value against cost (energy+force evaluations, setup
    included), one colour per sampler, one line per seed. Log y where the values span more than a decade."""
    metrics = list(dict.fromkeys(m for r in records for m in r["metrics"]))
    samplers = list(dict.fromkeys(r["sampler"]["label"] for r in records))
    colours = dict(zip(samplers, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10))
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    labelled: dict[str, bool] = defaultdict(bool)
    for ax, metric in zip(axes.flat, metrics):
        values_seen: list[float] = []
        for record in records:
            points = [(p["cost"], p["metrics"].get(metric)) for p in record["curve"]]
            points = [(c, v) for c, v in points if v is not None]
            if not points:
                continue
            cost, value = zip(*points)
            values_seen += value
            sampler = record["sampler"]["label"]
            label = None if labelled[(metric, sampler)] else sampler
            labelled[(metric, sampler)] = True
            ax.plot(cost, value, color=colours[sampler], alpha=0.8, lw=1.2, label=label)
        ax.set_xscale("log")
        if values_seen and min(values_seen) > 0 and max(values_seen) > 10 * min(values_seen):
            ax.set_yscale("log")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("cost (evaluations)")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(records[0]["system"]["label"], fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
