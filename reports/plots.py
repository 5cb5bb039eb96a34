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
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

DPI = 90

#: Sampler colours: matplotlib's ten "tab10" colours, then the lighter shades of "tab20";
#: repeated after 20 samplers.
PALETTE = (tuple(matplotlib.colormaps["tab10"].colors)
           + tuple(matplotlib.colormaps["tab20"].colors[1::2]))


def colours(labels: list[str]) -> dict[str, str]:
    """One colour per sampler label for a whole report: the i-th distinct label of ``labels``
    (in the order given: the report passes the overall ranking) gets ``PALETTE[i]`` as a hex
    string, so a sampler keeps its colour in every figure that is handed this map."""
    unique = list(dict.fromkeys(labels))
    return {label: matplotlib.colors.to_hex(PALETTE[i % len(PALETTE)]) for i, label in enumerate(unique)}


def _colour_map(labels: list[str], colour: dict[str, str] | None) -> dict[str, str]:
    """``colour`` (the report's map) extended by the labels it lacks, in new colours; the
    labels' own :func:`colours` when no map is given."""
    if colour is None:
        return colours(labels)
    extra = [label for label in dict.fromkeys(labels) if label not in colour]
    spare = colours(list(colour) + extra)
    return {**colour, **{label: spare[label] for label in extra}}


def _tick_label(value: float, _pos=None) -> str:
    """'10⁵', '2×10⁵', '10⁻²' (plain '0.5', '20', '500' between 0.1 and 1000)."""
    if value <= 0:
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10.0**exponent
    m = f"{mantissa:.0f}" if abs(mantissa - round(mantissa)) < 0.05 else f"{mantissa:.1f}"
    if -1 <= exponent <= 2:
        return f"{value:g}"
    sup = str(exponent).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return f"10{sup}" if m == "1" else f"{m}×10{sup}"


def _n_ticks(lo: float, hi: float, subs: tuple[float, ...]) -> int:
    """How many m·10^k with m in ``subs`` lie in [lo, hi] (0 < lo ≤ hi)."""
    decades = range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    return sum(lo <= m * 10.0**k <= hi for k in decades for m in subs)


def log_ticks(axis) -> None:
    """Readable ticks on a log axis (``ax.xaxis`` or ``ax.yaxis``) over its current limits:
    labels at every decade when the axis spans more than 2.5 decades, at 1-2-5 of each decade
    down to one decade; below that at the integer multiples of a decade, thinned to 1-2-3-5-7
    and then 1-2-5 while more than 4 would be labelled ('4×10⁶' … '9×10⁶' overlapped in a
    small panel); unlabelled minor ticks."""
    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > 0 else 10.0
    subs = (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0)
    if decades < 1.0:
        subs = next(s for s in (tuple(np.arange(1.0, 10.0)), (1.0, 2.0, 3.0, 5.0, 7.0), subs)
                    if _n_ticks(lo, hi, s) <= 4 or s == subs)
    axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(_tick_label))
    axis.set_minor_locator(LogLocator(base=10.0, subs=tuple(np.arange(2.0, 10.0)), numticks=30))
    axis.set_minor_formatter(NullFormatter())


def labelled_ticks(axis) -> list[str]:
    """The non-empty major tick labels inside the axis's view (what a reader sees)."""
    lo, hi = sorted(axis.get_view_interval())
    formatter = axis.get_major_formatter()
    locs = [v for v in axis.get_majorticklocs() if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    formatter.set_locs(locs)
    return [t for t in (formatter(v) for v in locs) if t]


def mean_band(curves: list[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds with the min–max band, on a common cost grid.

    ``curves`` holds one (cost, value) pair of sequences per seed. The grid is the union of
    the seeds' costs inside the range every seed covers (the overlap of their cost ranges);
    each seed is interpolated there linearly in log cost. Returns (cost, mean, low, high)
    with mean = (1/n) Σ_s v_s(c), low = min_s v_s(c), high = max_s v_s(c). Without an
    overlap, the seeds' points are pooled by cost (nan-mean of the seeds defined there)."""
    parts = []
    for cost, value in curves:
        c, v = np.asarray(cost, float), np.asarray(value, float)
        keep = np.isfinite(c) & np.isfinite(v) & (c > 0)
        order = np.argsort(c[keep], kind="stable")
        if keep.any():
            parts.append((c[keep][order], v[keep][order]))
    if not parts:
        empty = np.empty(0)
        return empty, empty, empty, empty
    lo, hi = max(c[0] for c, _ in parts), min(c[-1] for c, _ in parts)
    grid = np.unique(np.concatenate([c for c, _ in parts]))
    if lo <= hi:
        grid = grid[(grid >= lo) & (grid <= hi)]
    stack = np.array([np.where((grid >= c[0]) & (grid <= c[-1]), np.interp(np.log(grid), np.log(c), v), np.nan)
                      for c, v in parts])
    with warnings.catch_warnings():  # a cost no seed covers: nan, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return grid, np.nanmean(stack, axis=0), np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


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


def _seed_curves(records: list[dict[str, Any]], metric: str, per_cost: bool = False) -> dict[str, list]:
    """Per sampler label: one (cost, value) pair per seed from the records' curves (value/cost
    with ``per_cost``, positive values only), in the records' order."""
    out: dict[str, list] = defaultdict(list)
    for record in records:
        points = [(p["cost"], p["metrics"].get(metric)) for p in record.get("curve", [])]
        points = [(c, v) for c, v in points if v is not None and c]
        if per_cost:
            points = [(c, v / c) for c, v in points if v > 0]
        if points:
            out[record["sampler"]["label"]].append(tuple(zip(*points)))
    return out


def _draw_mean_band(ax, curves: dict[str, list], colour: dict[str, str]) -> list[float]:
    """One mean line per sampler and its min–max band over seeds; returns the values drawn."""
    seen: list[float] = []
    for sampler, parts in curves.items():
        cost, mean, low, high = mean_band(parts)
        if cost.size == 0:
            continue
        n = len(parts)
        label = f"{sampler} ({n} seed{'s' if n != 1 else ''})"
        if n > 1:
            ax.fill_between(cost, low, high, color=colour[sampler], alpha=0.2, lw=0)
        ax.plot(cost, mean, color=colour[sampler], lw=1.6, marker="o" if cost.size == 1 else None, label=label)
        seen += [v for v in np.concatenate([low, high]) if np.isfinite(v)]
    return seen


def curves_figure(records: list[dict[str, Any]], colour: dict[str, str] | None = None):
    """The accuracy-versus-cost figure (not saved): one panel per metric, value against cost
    (energy+force evaluations, setup included) on log axes; per sampler, the mean over seeds
    (line) and the min–max over seeds (band), in the sampler's colour from ``colour`` (the
    report's map). Log y where the values span more than a decade."""
    metrics = list(dict.fromkeys(m for r in records for m in r.get("metrics") or r["final"]["metrics"]))
    colour = _colour_map([r["sampler"]["label"] for r in records], colour)
    fig, axes = _grid(max(len(metrics), 1))
    for ax, metric in zip(axes, metrics):
        values_seen = _draw_mean_band(ax, _seed_curves(records, metric), colour)
        ax.set_xscale("log")
        if values_seen and min(values_seen) > 0 and max(values_seen) > 10 * min(values_seen):
            ax.set_yscale("log")
            log_ticks(ax.yaxis)
        log_ticks(ax.xaxis)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("cost (evaluations)")
        ax.grid(alpha=0.3, which="major")
        ax.grid(alpha=0.12, which="minor")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        spare = fig.axes[len(metrics)] if len(fig.axes) > len(metrics) else None
        if spare is not None:  # an empty panel of the grid: the legend goes there, off the data
            spare.set_visible(True)
            spare.axis("off")
            spare.legend(handles, labels, loc="center", fontsize=9, title="line: mean over seeds\nband: min–max over seeds",
                         title_fontsize=8)
        else:
            axes[0].legend(fontsize=8, title="mean; band: min–max over seeds", title_fontsize=7)
    fig.suptitle(records[0]["system"]["label"], fontsize=11)
    return fig


def plot_curves(records: list[dict[str, Any]], path: str | Path, colour: dict[str, str] | None = None) -> Path:
    """:func:`curves_figure` written to ``path``."""
    return _save(curves_figure(records, colour), path)


def ess_figure(records: list[dict[str, Any]], metric: str, colour: dict[str, str] | None = None):
    """ESS per evaluation (``metric`` over the curve's cost) against cost, log-log, mean over
    seeds with the min–max band; None when no record has the metric."""
    colour = _colour_map([r["sampler"]["label"] for r in records], colour)
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    if not _draw_mean_band(ax, _seed_curves(records, metric, per_cost=True), colour):
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis)
    log_ticks(ax.yaxis)
    ax.set_xlabel("cost (evaluations, setup included)")
    ax.set_ylabel(f"{metric} per evaluation")
    ax.grid(alpha=0.3, which="major")
    ax.grid(alpha=0.12, which="minor")
    ax.legend(fontsize=8)
    ax.set_title(f"{records[0]['system']['label']}: {metric} per cost", fontsize=10)
    return fig


def plot_ess_per_cost(records: list[dict[str, Any]], metric: str, path: str | Path,
                      colour: dict[str, str] | None = None) -> Path | None:
    """:func:`ess_figure` written to ``path``; None when no record has the metric."""
    fig = ess_figure(records, metric, colour)
    return None if fig is None else _save(fig, path)


def _weighted_hist(values: np.ndarray, weights: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """A weighted histogram normalized to a density over ``bins``."""
    hist, _ = np.histogram(values, bins=bins, weights=weights)
    total = hist.sum()
    return hist / total / np.diff(bins) if total > 0 else hist


def plot_energy_histograms(samples: dict[str, list[tuple[np.ndarray, np.ndarray]]],
                           reference: dict[str, Any] | None, title: str, path: str | Path,
                           colour: dict[str, str] | None = None) -> Path:
    """Weighted histograms of reduced energies, one line per sampler (seeds pooled), the
    reference's histogram (``reference["energy_histogram"]`` = {edges, density}) when the
    record has one, and the exact ⟨u⟩ as a vertical line when known."""
    colour = _colour_map(list(samples), colour)
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
             normalization: tuple[float | None, int | None, int | None], title: str, path: str | Path,
             colour: dict[str, str] | None = None) -> Path:
    """g(r) per species pair (one panel each), one line per sampler, seeds pooled."""
    pairs = sorted({p for by_pair in samples.values() for p in by_pair})
    colour = _colour_map(list(samples), colour)
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


def plot_pt_acceptance(runs: dict[str, list[dict[str, Any]]], title: str, path: str | Path,
                       colour: dict[str, str] | None = None) -> Path:
    """Exchange acceptance of each neighbour pair (β_i, β_{i+1}) against the pair's mean β,
    one line per seed, one colour per sampler (from final diagnostics)."""
    colour = _colour_map(list(runs), colour)
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


def plot_pa_schedule(runs: dict[str, list[list[dict[str, Any]]]], title: str, path: str | Path,
                     colour: dict[str, str] | None = None) -> Path:
    """Population annealing per step: the weights' ESS fraction and the family entropy S_f
    against β, one line per seed, one colour per sampler (from final diagnostics)."""
    colour = _colour_map(list(runs), colour)
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


def overview_figure(per_system: dict[str, list[Any]], samplers: list[str], colour: dict[str, str] | None = None):
    """Samplers (rows, in the order given: the overall ranking) × systems (columns): each cell
    coloured by the sampler's displayed rank on that system, scaled by the number of samplers
    there (rank 1: dark green, last: light yellow), and annotated with the rank and the mean
    rank over metrics [95 % interval]; "—" where the sampler did not run. ``per_system`` is
    :attr:`boltzbench.metrics.ranking.Ranking.per_system` (entries with ``sampler``, ``rank``,
    ``mean_rank``, ``low``, ``high``). Sampler names are written in their report colours."""
    systems = list(per_system)
    colour = _colour_map(samplers, colour)
    grid = np.full((len(samplers), len(systems)), np.nan)
    text = [["—"] * len(systems) for _ in samplers]
    for j, system in enumerate(systems):
        entries = {e.sampler: e for e in per_system[system]}
        n = len(entries)
        for i, sampler in enumerate(samplers):
            e = entries.get(sampler)
            if e is None:
                continue
            grid[i, j] = (e.rank - 1) / (n - 1) if n > 1 else 0.0
            interval = "no interval" if e.low is None or e.high is None else f"[{e.low:.2g}, {e.high:.2g}]"
            text[i][j] = f"{e.rank} of {n}\n{e.mean_rank:.2f} {interval}"
    width = 1.6 + 1.7 * max(len(systems), 2)
    height = 0.9 + 0.5 * max(len(samplers), 1)
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = matplotlib.colormaps["YlGn_r"].with_extremes(bad="#eeeeee")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.25, aspect="auto")
    for i in range(len(samplers)):
        for j in range(len(systems)):
            dark = np.isfinite(grid[i, j]) and grid[i, j] < 0.45
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7.5, color="white" if dark else "black")
    ax.set_xticks(range(len(systems)), systems, fontsize=8, rotation=15 if len(systems) > 4 else 0)
    ax.set_yticks(range(len(samplers)), samplers, fontsize=9)
    for label in ax.get_yticklabels():
        label.set_color(colour[label.get_text()])
        label.set_fontweight("bold")
    ax.xaxis.tick_top()
    ax.tick_params(which="both", length=0)
    ax.set_xticks(np.arange(-0.5, len(systems)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(samplers)), minor=True)
    ax.grid(which="minor", color="white", lw=2)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("rank of n (1 = best)\nmean rank over metrics [95 % interval]", fontsize=8)
    return fig, grid


def plot_overview(per_system: dict[str, list[Any]], samplers: list[str], path: str | Path,
                  colour: dict[str, str] | None = None) -> Path:
    """:func:`overview_figure` written to ``path`` (fixed margins for the sampler names)."""
    fig, _ = overview_figure(per_system, samplers, colour)
    path = Path(path)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=1.4 / width, right=1 - 0.15 / width, bottom=0.45 / height, top=1 - 0.45 / height)
    fig.savefig(path, dpi=1.4 * DPI)  # the figure a reader sees first: drawn larger
    plt.close(fig)
    return path
