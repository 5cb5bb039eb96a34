"""Report figures and table order: one colour per sampler for the whole report, the mean over
seeds with a band, readable log ticks, tables sorted by rank, the overview figure (issue 17)."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

from boltzbench.metrics.ranking import rank_samplers
from boltzbench.reports import build, plots
from boltzbench.reports.html import render_html
from boltzbench.reports.markdown import render_markdown
from test_reports import make_record

METRICS = ["energy_w1", "ess"]


def two_systems() -> list[dict]:
    """System 'a' runs md, mc; system 'b' runs pt, md, mc (first seen in another order).
    Scales (smaller errors): on 'a' md before mc, on 'b' pt, md, mc: not alphabetical."""
    records = []
    for seed in (0, 1, 2):
        records += [make_record("a", "md", seed, METRICS, scale=1.0), make_record("a", "mc", seed, METRICS, scale=3.0)]
        records += [make_record("b", "pt", seed, METRICS, scale=0.1), make_record("b", "mc", seed, METRICS, scale=3.0),
                    make_record("b", "md", seed, METRICS, scale=1.0)]
    return records


def _line_colours(fig) -> dict[str, str]:
    """Legend label (sampler, before ' (') → hex colour of its mean line, first panel."""
    ax = fig.axes[0]
    return {line.get_label().split(" (")[0]: matplotlib.colors.to_hex(line.get_color()) for line in ax.get_lines()}


def test_colours_are_one_map_in_the_given_order():
    a = plots.colours(["pt", "md", "mc", "md"])
    assert list(a) == ["pt", "md", "mc"]
    assert len(set(a.values())) == 3
    assert plots.colours(["pt", "md", "mc"])["md"] == a["md"]  # depends on position only
    assert len(set(plots.colours([f"s{i}" for i in range(20)]).values())) == 20


def test_a_sampler_has_the_same_colour_in_every_system_figure():
    records = two_systems()
    colour = build.sampler_colours(records)
    ranked = [e.sampler for e in rank_samplers(records).overall]
    assert list(colour) == ranked + sorted(set(colour) - set(ranked))
    by_system = {s: [r for r in records if r["system"]["label"] == s] for s in ("a", "b")}
    seen = {s: _line_colours(plots.curves_figure(g, colour)) for s, g in by_system.items()}
    assert seen["a"]["md"] == seen["b"]["md"] == colour["md"]
    assert seen["a"]["mc"] == seen["b"]["mc"] == colour["mc"]
    # without the report's map each system would colour by its own order: the bug of issue 17
    own = {s: _line_colours(plots.curves_figure(g)) for s, g in by_system.items()}
    assert own["a"]["md"] != own["b"]["md"]


def test_every_report_figure_gets_the_report_colour_map(tmp_path, monkeypatch):
    records = two_systems()
    calls = []
    for name in ("plot_curves", "plot_ess_per_cost", "plot_pt_acceptance", "plot_pa_schedule",
                 "plot_energy_histograms", "plot_rdf", "plot_overview"):
        original = getattr(plots, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, args[-1] if not kwargs else kwargs.get("colour")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(plots, name, spy)
    build.build_report(records, tmp_path / "fig")
    assert {n for n, _ in calls} >= {"plot_curves", "plot_ess_per_cost", "plot_overview"}
    maps = [c for _, c in calls]
    assert all(isinstance(c, dict) for c in maps)
    assert all(c == build.sampler_colours(records) for c in maps)


def test_mean_band_is_the_mean_and_range_over_seeds():
    cost = [10.0, 100.0, 1000.0]
    seeds = [(cost, [3.0, 2.0, 1.0]), (cost, [5.0, 2.5, 0.5]), (cost, [4.0, 1.5, 0.9])]
    grid, mean, low, high = plots.mean_band(seeds)
    values = np.array([v for _, v in seeds])
    np.testing.assert_allclose(grid, cost)
    np.testing.assert_allclose(mean, values.mean(axis=0))
    np.testing.assert_allclose(low, values.min(axis=0))
    np.testing.assert_allclose(high, values.max(axis=0))
    # shifted costs: the grid is the overlap, each seed interpolated linearly in log cost
    grid, mean, _, _ = plots.mean_band([([10.0, 1000.0], [2.0, 0.0]), ([100.0, 10000.0], [1.0, 1.0])])
    np.testing.assert_allclose(grid, [100.0, 1000.0])
    np.testing.assert_allclose(mean, [(1.0 + 1.0) / 2, (0.0 + 1.0) / 2])


def test_curves_draw_one_mean_line_and_one_band_per_sampler():
    records = [r for r in two_systems() if r["system"]["label"] == "b"]  # 3 samplers × 3 seeds
    fig = plots.curves_figure(records)
    for ax, metric in zip(fig.axes[:2], METRICS):
        assert len(ax.get_lines()) == 3, metric
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 3, metric
        md = [r for r in records if r["sampler"]["label"] == "md"]
        line = next(line for line in ax.get_lines() if line.get_label().startswith("md"))
        expected = np.mean([[p["metrics"][metric] for p in r["curve"]] for r in md], axis=0)
        np.testing.assert_allclose(line.get_ydata(), expected)
    assert fig.axes[0].get_lines()[0].get_label().endswith("(3 seeds)")


def _decade_fig(lo: float, hi: float):
    records = [make_record("a", "md", 0, METRICS)]
    for k, point in enumerate(records[0]["curve"]):
        point["cost"] = lo * (hi / lo) ** (k / (len(records[0]["curve"]) - 1))
    return plots.curves_figure(records)


@pytest.mark.parametrize("lo, hi", [(1.2e5, 4.5e5), (2e4, 2e5), (1e3, 1e5), (50.0, 5e6)])
def test_log_cost_axes_have_at_least_two_labelled_ticks(lo, hi):
    fig = _decade_fig(lo, hi)
    for ax in fig.axes[:2]:
        fig.canvas.draw()
        labels = plots.labelled_ticks(ax.xaxis)
        assert len(labels) >= 2, (lo, hi, labels)
        assert len(labels) <= 12, labels


@pytest.mark.parametrize("lo, hi", [(4.2e6, 1.7e7), (1.5e6, 1.4e7), (2e6, 3.5e6), (1.2e5, 4.5e5), (50.0, 5e6)])
def test_log_cost_tick_labels_do_not_overlap(lo, hi):
    """Below a decade every integer multiple was labelled: '4×10⁶5×10⁶6×10⁶…' ran together in
    the alanine-flow report's panels (4.2·10⁶ to 1.7·10⁷)."""
    fig = _decade_fig(lo, hi)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:2]:
        lo_v, hi_v = sorted(ax.get_xlim())
        shown = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels()
                        if t.get_text() and lo_v * (1 - 1e-9) <= t.get_position()[0] <= hi_v * (1 + 1e-9)),
                       key=lambda box: box.x0)
        assert len(shown) >= 2, (lo, hi)
        assert all(a.x1 < b.x0 for a, b in zip(shown, shown[1:])), (lo, hi, [t.get_text() for t in ax.get_xticklabels()])


def test_old_log_ticks_showed_a_single_label_on_this_range():
    """The old axes: matplotlib's default log locator and formatter, minor labels off."""
    fig = _decade_fig(1.2e5, 4.5e5)
    ax = fig.axes[0]
    ax.xaxis.set_major_locator(LogLocator(base=10.0))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation())
    ax.xaxis.set_minor_formatter(NullFormatter())
    fig.canvas.draw()
    assert len(plots.labelled_ticks(ax.xaxis)) < 2


def test_tick_labels_read_as_numbers():
    assert plots._tick_label(1e5) == "10⁵"
    assert plots._tick_label(2e5) == "2×10⁵"
    assert plots._tick_label(5e-3) == "5×10⁻³"
    assert plots._tick_label(20.0) == "20"


def _table_after(md: str, heading: str, system: str) -> list[str]:
    """First column of the first table after ``heading`` in the section of ``system``."""
    section = md.split(f"\n## {system}\n", 1)[1].split("\n## ", 1)[0]
    part = section.split(heading, 1)[1]
    lines = part.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [re.split(r"\s*\|\s*", row)[1] for row in lines[start + 2:end]]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots")
    records = two_systems()
    blocks, _ = build.build_report(records, folder)
    return records, render_markdown(blocks), render_html(blocks, folder), folder


def test_tables_are_sorted_by_the_per_system_rank(built):
    records, md, _, _ = built
    per_system = rank_samplers(records).per_system
    for system in ("a", "b"):
        ranked = [e.sampler for e in per_system[system]]
        assert ranked != sorted(ranked)  # the order differs from the alphabetical one
        assert _table_after(md, "### Final metrics over seeds", system) == ranked
        assert _table_after(md, "### Speedup over md", system) == ranked
        cells = _table_after(md, "### Cells", system)
        assert list(dict.fromkeys(cells)) == ranked and len(cells) == 3 * len(ranked)


def test_overview_figure_is_at_the_top_in_markdown_and_html(built):
    records, md, html, folder = built
    assert "## Overview" in md and "](overview.png)" in md
    assert md.index("## Overview") < md.index("## Ranking") < md.index("\n## a\n")
    assert (folder / "overview.png").is_file()
    assert 'alt="overview: per-system rank of each sampler" src="data:image/png;base64,' in html


def test_overview_grid_holds_the_per_system_ranks():
    records = two_systems()
    ranking = rank_samplers(records)
    samplers = [e.sampler for e in ranking.overall]
    fig, grid = plots.overview_figure(ranking.per_system, samplers)
    assert grid.shape == (len(samplers), 2)
    for j, system in enumerate(ranking.per_system):
        entries = {e.sampler: e for e in ranking.per_system[system]}
        for i, sampler in enumerate(samplers):
            if sampler in entries:
                n = len(entries)
                assert grid[i, j] == pytest.approx((entries[sampler].rank - 1) / (n - 1))
            else:
                assert np.isnan(grid[i, j])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "—" in texts and any(t.startswith("1 of 3") for t in texts)
