"""Figures for reports, each written as a PNG file and returned as its path.

* accuracy versus cost (the curve every speedup is read from), ESS per cost;
* from kept samples: energy histograms against the reference, Ramachandran (φ, ψ)
  histograms, radial distribution functions g(r) from pair distances;
* from final diagnostics: parallel-tempering exchange acceptance per temperature pair,
  population-annealing ESS fraction and family entropy per annealing step.

Inputs are plain records (dicts) and NumPy arrays: reports read records only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

DPI = 90


def colours(labels: list[str]) -> dict[str, str]:
    """A stable colour per sampler label."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def _save(fig, path: str | Path) -> Path:
    """Fixed margins in inches (tight_layout costs as much as drawing the figure)."""
    path = Path(path)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.6 / height,
                        top=1 - 0.55 / height, wspace=0.4, hspace=0.6)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _grid(n: int, width: float = 4.2, height: float = 3.2, max_columns: int = 3):
    columns = max(1, min(max_columns, n))
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per metric: metric value against cost (energy+force evaluations, setup
    included), one colour per sampler, one line per seed. Log y where the values span more than a decade."""
    metrics = list(dict.fromkeys(m for r in records for m in r.get("metrics") or r["final"]["metrics"]))
    samplers = list(dict.fromkeys(r["sampler"]["label"] for r in records))
    colour = colours(samplers)
    fig, axes = _grid(max(len(metrics), 1))
    labelled: dict[tuple, bool] = defaultdict(bool)
    for ax, metric in zip(axes, metrics):
        values_seen: list[float] = []
        for record in records:
            points = [(p["cost"], p["metrics"].get(metric)) for p in record.get("curve", [])]
            points = [(c, v) for c, v in points if v is not None]
            if not points:
                continue
            cost, value = zip(*points)
            values_seen += value
            sampler = record["sampler"]["label"]
            label = None if labelled[(metric, sampler)] else sampler
            labelled[(metric, sampler)] = True
            ax.plot(cost, value, color=colour[sampler], alpha=0.8, lw=1.2, label=label)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        if values_seen and min(values_seen) > 0 and max(values_seen) > 10 * min(values_seen):
            ax.set_yscale("log")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("cost (evaluations)")
        ax.grid(alpha=0.3, which="both")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.suptitle(records[0]["system"]["label"], fontsize=11)
    return _save(fig, path)


def plot_ess_per_cost(records: list[dict[str, Any]], metric: str, path: str | Path) -> Path | None:
    """ESS per evaluation (``metric`` over the curve's cost) against cost, log-log; None
    when no record has the metric."""
    samplers = list(dict.fromkeys(r["sampler"]["label"] for r in records))
    colour = colours(samplers)
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    labelled: set[str] = set()
    drawn = False
    for record in records:
        points = [(p["cost"], p["metrics"].get(metric)) for p in record.get("curve", [])]
        points = [(c, v / c) for c, v in points if v is not None and c and v > 0]
        if not points:
            continue
        cost, rate = zip(*points)
        sampler = record["sampler"]["label"]
        ax.plot(cost, rate, color=colour[sampler], alpha=0.8, lw=1.2,
                label=None if sampler in labelled else sampler)
        labelled.add(sampler)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("cost (evaluations, setup included)")
    ax.set_ylabel(f"{metric} per evaluation")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"{records[0]['system']['label']}: {metric} per cost", fontsize=10)
    return _save(fig, path)


def _weighted_hist(values: np.ndarray, weights: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """A weighted histogram normalized to a density over ``bins``."""
    hist, _ = np.histogram(values, bins=bins, weights=weights)
    total = hist.sum()
    return hist / total / np.diff(bins) if total > 0 else hist


def plot_energy_histograms(samples: dict[str, list[tuple[np.ndarray, np.ndarray]]],
                           reference: dict[str, Any] | None, title: str, path: str | Path) -> Path:
    """Weighted histograms of reduced energies, one line per sampler (seeds pooled), the
    reference's histogram (``reference["energy_histogram"]`` = {edges, density}) when the
    record has one, and the exact ⟨u⟩ as a vertical line when known."""
    colour = colours(list(samples))
    pooled = {s: (np.concatenate([e for e, _ in parts]), np.concatenate([w / len(parts) for _, w in parts]))
              for s, parts in samples.items()}
    everything = np.concatenate([e for e, _ in pooled.values()])
    lo, hi = np.quantile(everything, [0.001, 0.999])
    hist_ref = (reference or {}).get("energy_histogram")
    if hist_ref:
        lo, hi = min(lo, hist_ref["edges"][0]), max(hi, hist_ref["edges"][-1])
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 61)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for sampler, (energies, weights) in pooled.items():
        ax.stairs(_weighted_hist(energies, weights, bins), bins, color=colour[sampler], lw=1.3, label=sampler)
    if hist_ref:
        ax.stairs(hist_ref["density"], hist_ref["edges"], color="black", lw=1.0, ls="--", label="reference")
    mean = ((reference or {}).get("exact") or {}).get("mean_energy")
    if mean is not None:
        ax.axvline(mean, color="black", lw=0.8, ls=":", label="exact ⟨u⟩")
    ax.set_xlabel("reduced energy u")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_ramachandran(samples: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
                      title: str, path: str | Path) -> Path:
    """Weighted 2D histograms of (φ, ψ) in radians on [−π, π)², one panel per sampler."""
    fig, axes = _grid(len(samples), width=3.6, height=3.3, max_columns=4)
    edges = np.linspace(-math.pi, math.pi, 61)
    for ax, (sampler, parts) in zip(axes, samples.items()):
        phi = np.concatenate([p for p, _, _ in parts])
        psi = np.concatenate([q for _, q, _ in parts])
        w = np.concatenate([w / len(parts) for _, _, w in parts])
        wrap = lambda a: (a + math.pi) % (2 * math.pi) - math.pi  # noqa: E731
        hist, _, _ = np.histogram2d(wrap(phi), wrap(psi), bins=[edges, edges], weights=w)
        with np.errstate(divide="ignore"):
            free = -np.log(hist / hist.max())
        ax.pcolormesh(edges, edges, free.T, cmap="viridis_r", vmin=0, vmax=8, shading="flat")
        ax.set_title(sampler, fontsize=9)
        ax.set_xlabel("φ (rad)")
        ax.set_ylabel("ψ (rad)")
    fig.suptitle(f"{title}: −ln p(φ, ψ) (kT)", fontsize=10)
    return _save(fig, path)


def radial_distribution(distances: np.ndarray, weights: np.ndarray, n_pairs: int, bins: np.ndarray,
                        density: float | None, n_particles: int | None, dim: int | None) -> np.ndarray:
    """g(r) from pooled pair distances: the weighted pair count per configuration in each
    shell divided by its ideal-gas value n_pairs·V_shell/V, V = N/ρ, V_shell = 4πr²dr (3D)
    or 2πr dr (2D). Without ρ, N or d the normalized pair-distance density p(r) is returned."""
    # ``weights`` are normalized over all pooled distances, so hist·n_pairs is the pair
    # count per configuration in each shell
    hist, _ = np.histogram(distances, bins=bins, weights=weights)
    if not (density and n_particles and dim in (2, 3)):
        return hist / max(hist.sum(), 1e-300) / np.diff(bins)
    per_config = hist * n_pairs  # pair count per configuration in each shell
    r_lo, r_hi = bins[:-1], bins[1:]
    shell = (4.0 / 3.0 * math.pi * (r_hi**3 - r_lo**3)) if dim == 3 else math.pi * (r_hi**2 - r_lo**2)
    volume = n_particles / density
    return per_config / (n_pairs * shell / volume)


def plot_rdf(samples: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray, int]]]],
             normalization: tuple[float | None, int | None, int | None], title: str, path: str | Path) -> Path:
    """g(r) per species pair (one panel each), one line per sampler, seeds pooled."""
    pairs = sorted({p for by_pair in samples.values() for p in by_pair})
    colour = colours(list(samples))
    fig, axes = _grid(len(pairs), width=3.8, height=3.0, max_columns=3)
    density, n_particles, dim = normalization
    is_gr = bool(density and n_particles and dim in (2, 3))
    for ax, pair in zip(axes, pairs):
        parts_all = [part for by_pair in samples.values() for part in by_pair.get(pair, [])]
        r_max = max(float(np.quantile(d, 0.999)) for d, _, _ in parts_all)
        bins = np.linspace(0.0, r_max, 101)
        for sampler, by_pair in samples.items():
            parts = by_pair.get(pair, [])
            if not parts:
                continue
            g = np.mean([radial_distribution(d, w, n, bins, density, n_particles, dim) for d, w, n in parts], axis=0)
            ax.plot(0.5 * (bins[1:] + bins[:-1]), g, color=colour[sampler], lw=1.2, label=sampler)
        ax.set_title(pair, fontsize=9)
        ax.set_xlabel("r")
        ax.set_ylabel("g(r)" if is_gr else "p(r)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: {'radial distribution g(r)' if is_gr else 'pair-distance density (no ρ in the record)'}",
                 fontsize=10)
    return _save(fig, path)


def plot_pt_acceptance(runs: dict[str, list[dict[str, Any]]], title: str, path: str | Path) -> Path:
    """Exchange acceptance of each neighbour pair (β_i, β_{i+1}) against the pair's mean β,
    one line per seed, one colour per sampler (from final diagnostics)."""
    colour = colours(list(runs))
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for sampler, diagnostics in runs.items():
        for i, diag in enumerate(diagnostics):
            acc = np.asarray(diag["pair_acceptance"], float)
            betas = np.asarray(diag.get("betas") or np.arange(acc.size + 1), float)
            x = 0.5 * (betas[1:] + betas[:-1]) if betas.size == acc.size + 1 else np.arange(acc.size)
            ax.plot(x, acc, "o-", ms=3, color=colour[sampler], alpha=0.8, label=sampler if i == 0 else None)
    ax.set_xlabel("mean β of the pair (β = 1: target)")
    ax.set_ylabel("exchange acceptance")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: parallel-tempering exchanges", fontsize=10)
    return _save(fig, path)


def plot_pa_schedule(runs: dict[str, list[list[dict[str, Any]]]], title: str, path: str | Path) -> Path:
    """Population annealing per step: the weights' ESS fraction and the family entropy S_f
    against β, one line per seed, one colour per sampler (from final diagnostics)."""
    colour = colours(list(runs))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for sampler, schedules in runs.items():
        for i, schedule in enumerate(schedules):
            beta = [s.get("beta") for s in schedule]
            label = sampler if i == 0 else None
            left.plot(beta, [s.get("ess_fraction") for s in schedule], color=colour[sampler], lw=1.1,
                      alpha=0.8, label=label)
            right.plot(beta, [s.get("family_entropy") for s in schedule], color=colour[sampler], lw=1.1,
                       alpha=0.8, label=label)
    left.set_ylabel("ESS fraction of the weights")
    right.set_ylabel("family entropy S_f")
    for ax in (left, right):
        ax.set_xlabel("β")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(f"{title}: population annealing", fontsize=10)
    return _save(fig, path)
