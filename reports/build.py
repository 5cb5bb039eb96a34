"""Build the report's blocks (and its figures) from records.

Reports read records only (DESIGN.md: data flows one way), plus the samples kept beside
them (``.npz``). Statistical rules live in the metric modules and are quoted here:
intervals and speedups in :mod:`boltzbench.metrics.speedup`, ranking in
:mod:`boltzbench.metrics.ranking`, changes in :mod:`boltzbench.reports.compare`.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boltzbench.metrics import ranking as ranking_module
from boltzbench.metrics import speedup as speedup_module
from boltzbench.metrics.ess import family_effective_population
from boltzbench.metrics.ranking import rank_samplers
from boltzbench.metrics.speedup import NO_INTERVAL, Interval, bootstrap_ci, direction, speedup_table
from boltzbench.reports import compare as compare_module
from boltzbench.reports import plots
from boltzbench.reports.compare import ALPHA, DEFAULT_TOLERANCE, Change, compare, final_interval
from boltzbench.reports.document import Block, Heading, Image, Items, Text, fmt, table
from boltzbench.reports.samples import load_samples

#: Metrics tried, in order, for the speedup table when none is asked for.
SPEEDUP_METRICS = ("energy_w1", "mean_energy_error")
ESS_METRICS = ("ess", "ess_geyer")


@dataclass
class ReportOptions:
    """What the command line can change: the speedup metric and its target (a number or a
    rule of :func:`boltzbench.metrics.speedup.choose_target`), the title, and whether the
    records outside the matrix that was run are shown (:mod:`boltzbench.reports.selection`)."""

    speedup_metric: str | None = None
    target: str | float | None = None
    title: str = "boltzbench report"
    all_records: bool = False  # also the records of the folder outside the matrix that was run
    tolerance: float = DEFAULT_TOLERANCE  # regression gate: relative change of the mean (compare.py)
    ignore_metrics: tuple[str, ...] = ()  # metrics left out of the regression gate


def slug(label: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label) or "_"


def interval_text(interval: Interval, digits: int = 4) -> str:
    """'mean [low, high]'; 'mean (one seed: no interval)' with fewer than two values
    (:data:`boltzbench.metrics.speedup.MIN_SEEDS`); 'undefined' when undefined."""
    if interval.value is None:
        return "undefined"
    text = f"{interval.value:.{digits}g}"
    if not interval.has_interval:
        return f"{text} ({NO_INTERVAL})"
    return f"{text} [{interval.low:.{digits}g}, {interval.high:.{digits}g}]"  # one rounding: the mean stays inside


def _summary_interval(values: list[float | None]) -> str:
    finite = [v for v in values if v is not None]
    text = interval_text(bootstrap_ci(finite))
    if finite and len(finite) < len(values):
        text += f" ({len(values) - len(finite)} undefined)"
    return text


def _metrics_of(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(m for r in records for m in (r.get("metrics") or r.get("final", {}).get("metrics", {}))))


def _by(records: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record[key]["label"]].append(record)
    return groups


def _diagnostic_text(diagnostics: dict[str, Any]) -> str:
    parts = []
    for key, value in diagnostics.items():
        if isinstance(value, (list, tuple)):
            parts.append(f"{key}=[{len(value)} values]")
        elif isinstance(value, dict):
            parts.append(f"{key}={{…}}")
        else:
            parts.append(f"{key}={fmt(value)}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- sections


def _names(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(names) or "—"


def _rank_cell(e) -> str:
    """'rank (mean rank [low, high])' of a per-system entry, or without an interval."""
    if e.low is None or e.high is None:
        return f"{e.rank} ({e.mean_rank:.2f}; {NO_INTERVAL})"
    return f"{e.rank} ({e.mean_rank:.2f} [{e.low:.2f}, {e.high:.2f}])"


def _pair_cell(pair) -> str:
    """The row sampler (pair.a) against the column sampler (pair.b)."""
    if not pair.met:
        return "never met"
    n = f"({len(pair.systems)} system{'s' if len(pair.systems) != 1 else ''})"
    if pair.low is None or pair.high is None:
        return f"tie {pair.win_rate:.2f}, {NO_INTERVAL} {n}"
    tag = "win" if pair.winner == pair.a else "loss" if pair.winner == pair.b else "tie"
    return f"{tag} {pair.win_rate:.2f} [{pair.low:.2f}, {pair.high:.2f}] {n}"


def ranking_blocks(records: list[dict[str, Any]], result=None) -> list[Block]:
    """The ranking section; ``result`` is ``rank_samplers(records)`` when already computed."""
    result = result if result is not None else rank_samplers(records)
    if not result.overall:
        return [Heading(2, "Ranking"), Text("No ranked metric has a value: nothing to rank.")]
    blocks: list[Block] = [
        Heading(2, "Ranking"),
        Text("Samplers are compared only on the systems both ran. Overall rank: by score = the number of "
             "samplers a sampler beats with evidence − the number that beat it with evidence (Copeland); "
             "rank = 1 + the number of samplers with a higher score (standard competition ranking, "
             "\"1, 1, 3\"); samplers with equal scores are tied. Full rule: " + result.rule + ". Errors rank "
             "smaller-is-better, ESS larger-is-better; an undefined metric or a failed cell counts as the "
             "worst value.")]
    few = {s: names for s, names in result.few_seeds.items() if names}
    if few:
        blocks.append(Text(f"**{NO_INTERVAL[0].upper() + NO_INTERVAL[1:]}.** With fewer than two seeds there is "
                           "no interval, so ranks are not separated: on " + "; ".join(
                               f"{s} ({_names(n)} with fewer than two seeds)" for s, n in few.items())
                           + " all samplers share rank 1, and no comparison there counts as evidence."))
    never = [(a, b) for (a, b), pair in result.pairs.items() if not pair.met]
    if never:
        blocks.append(Text("Never met (no shared system, not compared): "
                           + "; ".join(f"{a} and {b}" for a, b in never) + "."))
    rows = [[e.rank, e.sampler, e.score, _names(e.wins), _names(e.losses), _names(e.ties), _names(e.never_met),
             e.n_systems, _names(e.tied_with)] for e in result.overall]
    blocks.append(table(["rank", "sampler", "score", "beats", "beaten by", "no evidence either way", "never met",
                         "systems", "tied with"], rows))
    systems = list(result.per_system)
    samplers = [e.sampler for e in result.overall]
    if systems:
        per = {s: {e.sampler: e for e in entries} for s, entries in result.per_system.items()}
        rows = [[sampler] + ["—" if per[system].get(sampler) is None else _rank_cell(per[system][sampler])
                             for system in systems] for sampler in samplers]
        blocks += [Heading(3, "Per system"),
                   Text("Displayed rank (mean rank over metrics [95 % interval]). Intervals that overlap or touch "
                        "are tied, ties chain into groups, and a group's rank is 1 + the number of samplers in "
                        "better groups. Metrics ranked: " +
                        "; ".join(f"{s}: {', '.join(f'`{m}`' for m in result.metrics.get(s, [])) or 'none'}"
                                  for s in systems) + "."),
                   table(["sampler"] + systems, rows)]
    if len(samplers) >= 2:
        rows = [[a] + ["—" if a == b else _pair_cell(result.pair(a, b)) for b in samplers] for a in samplers]
        blocks += [Heading(3, "Pairwise"),
                   Text("Row against column: win rate = mean over the systems both ran of the fraction of ranked "
                        "metrics on which the row's mean over seeds is better (equal: ½) [95 % interval]. "
                        "**win**: the interval lies entirely above ½ (evidence); **loss**: entirely below; "
                        "**tie**: it contains or touches ½, or there is no interval (a sampler with fewer than "
                        "two seeds on a shared system); **never met**: no shared system."),
                   table(["sampler"] + samplers, rows)]
    return blocks


def changes_blocks(changes: list[Change], unchanged: int, baseline: str, problems: list[str],
                   tolerance: float = DEFAULT_TOLERANCE, ignored: tuple[str, ...] | list[str] = ()) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Changes against the baseline"),
        Text(f"Baseline: `{baseline}`. A **regression** is a metric whose mean over seeds got worse by more than "
             f"the tolerance ({100 * tolerance:g} % of the baseline's mean, `--tolerance`) with evidence: a "
             f"one-sided Welch t-test of \"worse by at most the tolerance\" rejects at α = {ALPHA:g} (false-alarm "
             "rate at most α for any change within the tolerance). With fewer than two seeds on either side "
             "there is no test: \"not testable\", never a regression. A pair with no ok cell now is a "
             "regression; a pair whose settings differ is \"not comparable\". Gated metrics: "
             + (f"all but {', '.join(f'`{m}`' for m in ignored)} (`--ignore-metric`)" if ignored else "all")
             + ". Intervals: 95 % bootstrap over seeds; p: one-sided p-value of the test behind the verdict.")]
    if problems:
        blocks += [Text("Unreadable baseline files (skipped):"), Items(tuple(_cell(p) for p in problems))]
    regressions = [c for c in changes if c.is_regression]
    blocks.append(Text(f"{len(regressions)} regressions, {len(changes) - len(regressions)} other changes, "
                       f"{unchanged} metrics without evidence of a change beyond the tolerance."))
    if changes:
        order = {"regression": 0, "worse (not gated)": 1, "not testable": 2, "improvement": 3, "moved": 4,
                 "new": 5, "removed": 6}
        rows = [[c.verdict.upper() if c.is_regression else c.verdict, c.system, c.sampler, c.metric,
                 "—" if c.before is None else interval_text(c.before),
                 "—" if c.after is None else interval_text(c.after),
                 "—" if c.relative is None else f"{100 * c.relative:+.1f} %",
                 "—" if c.p_value is None else f"{c.p_value:.2g}"]
                for c in sorted(changes, key=lambda c: (order.get(c.verdict, 9), c.system, c.sampler, c.metric))]
        blocks.append(table(["verdict", "system", "sampler", "metric", "baseline", "now", "change", "p"], rows))
    return blocks


def rank_order(group: list[dict[str, Any]], ranking=None) -> dict[str, int]:
    """Position of each sampler of one system's records in its per-system ranking
    (:func:`boltzbench.metrics.ranking.rank_samplers` ``.per_system``: by displayed rank, then
    mean rank, then name); ``ranking`` is the whole report's when already computed."""
    system = group[0]["system"]["label"] if group else ""
    if ranking is None or system not in ranking.per_system:
        ranking = rank_samplers(group)
    return {e.sampler: i for i, e in enumerate(ranking.per_system.get(system, []))}


def _ranked(labels, order: dict[str, int] | None) -> list[str]:
    """``labels`` (distinct) by rank position, unranked ones after them by name."""
    order = order or {}
    return sorted(dict.fromkeys(labels), key=lambda s: (order.get(s, len(order)), s))


def _by_rank(group: list[dict[str, Any]], order: dict[str, int] | None) -> dict[str, list[dict[str, Any]]]:
    """:func:`_by` sampler, in rank order."""
    groups = _by(group, "sampler")
    return {s: groups[s] for s in _ranked(groups, order)}


def final_metrics_blocks(group: list[dict[str, Any]], order: dict[str, int] | None = None) -> list[Block]:
    metrics = _metrics_of(group)
    order = rank_order(group) if order is None else order
    rows = []
    for sampler, runs in _by_rank(group, order).items():
        rows.append([sampler, len({r["seed"] for r in runs}), _summary_interval([r["cost"].get("total_evals") for r in runs]),
                     _summary_interval([r["cost"].get("total_wall_s") for r in runs])]
                    + [_summary_interval([r["final"]["metrics"].get(m) for r in runs]) for m in metrics])
    return [Heading(3, "Final metrics over seeds"),
            Text("Mean over seeds [95 % percentile bootstrap interval of the mean]. Rows in the order of the "
                 "per-system rank."),
            table(["sampler", "seeds", "evals", "wall s"] + metrics, rows)]


def speedup_metric(group: list[dict[str, Any]], wanted: str | None) -> str | None:
    metrics = _metrics_of(group)
    defined = [m for m in metrics if any(r["final"]["metrics"].get(m) is not None for r in group)]
    if wanted is not None:
        return wanted if wanted in defined else None
    for name in SPEEDUP_METRICS:
        if name in defined:
            return name
    return next((m for m in defined if direction(m) < 0), None)


def speedup_blocks(group: list[dict[str, Any]], options: ReportOptions,
                   order: dict[str, int] | None = None) -> list[Block]:
    baseline = next((r.get("matrix", {}).get("baseline") for r in group if r.get("matrix", {}).get("baseline")), None)
    metric = speedup_metric(group, options.speedup_metric)
    title = Heading(3, f"Speedup over {baseline or 'the baseline'}")
    if metric is None:
        wanted = options.speedup_metric or "an error metric"
        return [title, Text(f"No speedups: {wanted} has no value on this system.")]
    # rows of one label at several settings carry suffixes (reports.selection): find the baseline's
    rows = sorted({r["sampler"]["label"] for r in group if r["sampler"].get("matrix_label", r["sampler"]["label"])
                   == baseline})
    if not rows:
        return [title, Text(f"No speedups: the baseline sampler {baseline!r} has no ok cell on this system.")]
    if len(rows) > 1:
        return [title, Text(f"No speedups: the baseline sampler {baseline!r} has {len(rows)} settings on this "
                            f"system ({'; '.join(rows)}); report one matrix at a time (without --all-records).")]
    baseline = rows[0]
    result = speedup_table(group, metric, options.target, baseline)
    order = rank_order(group) if order is None else order
    position = {s: i for i, s in enumerate(_ranked([row.sampler for row in result.rows], order))}
    sign = "≥" if direction(metric) > 0 else "≤"
    target = "undefined" if result.target is None else f"{result.target:.4g}"
    rows = [[row.sampler, row.seeds, f"{row.reached}/{row.seeds}", row.cost_evals.text(4),
             row.speedup_evals.text(3, "×"), row.speedup_wall.text(3, "×"),
             row.ess_per_eval.text(3, "×"), row.ess_per_second.text(3, "×")]
            for row in sorted(result.rows, key=lambda row: position[row.sampler])]
    return [title,
            Text(f"Target: `{metric}` {sign} {target} ({result.target_rule}). Cost to target = cost of the first "
                 "snapshot that reaches it, setup included; speedup = mean baseline cost / mean sampler cost. "
                 "≥: lower bound (the baseline missed the target in some seed; its total cost stands in); "
                 "≤: upper bound (the sampler missed it). ESS/cost is relative to the baseline. "
                 "[95 % bootstrap intervals over seeds]"),
            table(["sampler", "seeds", "reached", "evals to target", "speedup (evals)", "speedup (wall s)",
                   "ESS/eval vs baseline", "ESS/s vs baseline"], rows)]


def _state_names(system: str) -> tuple[str, str]:
    """Names of states 0 and 1 from the system's class (code metadata, like a docstring)."""
    from boltzbench.registry import registry

    try:
        states = tuple(registry("systems").load(system).states)
    except Exception:  # noqa: BLE001 - a system not installed here still gets a report
        states = ()
    return (states[0], states[1]) if len(states) >= 2 else ("state 0", "state 1")


def free_energy_blocks(group: list[dict[str, Any]], order: dict[str, int] | None = None) -> list[Block]:
    names = [m for m in ("delta_f", "delta_f_stderr", "delta_f_error") if m in _metrics_of(group)]
    if not names:
        return []
    exact = (group[0].get("reference") or {}).get("exact") or {}
    rows = [[sampler, len(runs)] + [_summary_interval([r["final"]["metrics"].get(m) for r in runs]) for m in names]
            for sampler, runs in _by_rank(group, rank_order(group) if order is None else order).items()]
    reference = f" Reference ΔF = {exact['delta_f']:.4g} kT." if "delta_f" in exact else ""
    a, b = _state_names(group[0]["system"]["name"])
    return [Heading(3, "Free energies"),
            Text(f"ΔF = F({b}) − F({a}) = −ln(P({b})/P({a})) in kT between the system's metastable states "
                 "(weighted populations)." + reference + " `delta_f_stderr` is each run's own standard error "
                 "(delta method with Kish n_eff for weighted samples, bootstrap over chains otherwise)."),
            table(["sampler", "seeds"] + names, rows)]


def _sample_blocks(group: list[dict[str, Any]], records_dir: Path | None, figure_dir: Path,
                   label: str, notes: list[str], colour: dict[str, str] | None = None) -> list[Block]:
    loaded: dict[str, list] = defaultdict(list)
    for record in group:
        if records_dir is None:
            continue
        kept, problem = load_samples(record, records_dir)
        if problem:
            notes.append(problem)
        if kept is not None:
            loaded[record["sampler"]["label"]].append((record, kept))
    if not loaded:
        return [Heading(3, "Sample distributions"),
                Text("Skipped: no samples were kept for this system (set `keep_samples = true` in the matrix "
                     "for energy histograms, Ramachandran plots and g(r)).")]
    blocks: list[Block] = [Heading(3, "Sample distributions"),
                           Text("Final samples kept beside the records, seeds pooled, weighted.")]
    energies = {s: [(k.energies, k.weights) for _, k in parts] for s, parts in loaded.items()}
    path = plots.plot_energy_histograms(energies, group[0].get("reference"), f"{label}: reduced energies",
                                        figure_dir / f"energy-{slug(label)}.png", colour)
    blocks.append(Image(path.name, f"energy histograms, {label}"))
    if not (group[0].get("reference") or {}).get("energy_histogram"):
        blocks.append(Text("The records carry no reference energy histogram; the exact ⟨u⟩ is marked when known."))
    rama = {s: [(k.observables["phi"].ravel(), k.observables["psi"].ravel(), k.weights) for _, k in parts
                if "phi" in k.observables and "psi" in k.observables] for s, parts in loaded.items()}
    rama = {s: v for s, v in rama.items() if v}
    if rama:
        path = plots.plot_ramachandran(rama, label, figure_dir / f"ramachandran-{slug(label)}.png")
        blocks.append(Image(path.name, f"Ramachandran plot, {label}"))
    pairs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    normalization: tuple[float | None, int | None, int | None] = (None, None, None)
    for sampler, parts in loaded.items():
        for record, kept in parts:
            keys = [k for k in kept.observables if k.startswith("pair_distance/")]
            for key in keys:
                values = kept.observables[key]
                n_pairs = values.shape[1]
                weights = np.repeat(kept.weights / n_pairs, n_pairs)
                pairs[sampler][key.split("/", 1)[1]].append((values.ravel(), weights, n_pairs))
            if keys:
                normalization = _rdf_normalization(record, kept, keys)
    if pairs:
        path = plots.plot_rdf(pairs, normalization, label, figure_dir / f"gr-{slug(label)}.png", colour)
        blocks.append(Image(path.name, f"radial distribution functions, {label}"))
    return blocks


def _rdf_normalization(record: dict[str, Any], kept, keys: list[str]) -> tuple[float | None, int | None, int | None]:
    """(ρ, N, d) for g(r): ρ from the system's ``density``/``rho`` parameter, N from its
    ``n_particles``/``N`` parameter or the number of distinct pairs, d = dof/N."""
    params = record["system"].get("params", {})
    density = params.get("density", params.get("rho"))
    n = params.get("n_particles", params.get("N"))
    if n is None:
        species_pairs = [k for k in keys if re.fullmatch(r"pair_distance/[A-Z]{2}", k)]
        total = sum(kept.observables[k].shape[1] for k in species_pairs)
        root = (1 + np.sqrt(1 + 8 * total)) / 2  # N(N−1)/2 = total
        n = int(round(root)) if total and abs(root - round(root)) < 1e-9 else None
    dim = params.get("dim")
    if dim is None and n and kept.dof and kept.dof % n == 0:
        dim = kept.dof // n
    return (float(density) if density else None, int(n) if n else None, int(dim) if dim else None)


def diagnostics_blocks(group: list[dict[str, Any]], figure_dir: Path, label: str,
                       order: dict[str, int] | None = None, colour: dict[str, str] | None = None) -> list[Block]:
    blocks: list[Block] = []
    order = rank_order(group) if order is None else order
    pt = {s: [r["final"]["diagnostics"] for r in runs if r["final"]["diagnostics"].get("pair_acceptance")]
          for s, runs in _by_rank(group, order).items()}
    pt = {s: v for s, v in pt.items() if v}
    if pt:
        path = plots.plot_pt_acceptance(pt, label, figure_dir / f"pt-{slug(label)}.png", colour)
        rows = [[s, len(d), _summary_interval([x.get("round_trips") for x in d]),
                 _summary_interval([min(x["pair_acceptance"]) for x in d])] for s, d in pt.items()]
        blocks += [Heading(3, "Parallel tempering"), Image(path.name, f"parallel-tempering acceptance, {label}"),
                   table(["sampler", "seeds", "round trips", "lowest pair acceptance"], rows)]
    pa = {s: [r["final"]["diagnostics"] for r in runs if r["final"]["diagnostics"].get("schedule")]
          for s, runs in _by_rank(group, order).items()}
    pa = {s: v for s, v in pa.items() if v}
    if pa:
        path = plots.plot_pa_schedule({s: [d["schedule"] for d in v] for s, v in pa.items()}, label,
                                      figure_dir / f"pa-{slug(label)}.png", colour)
        rows = [[s, len(d), _summary_interval([family_effective_population(x) for x in d]),
                 _summary_interval([x["schedule"][-1].get("n_families") for x in d]),
                 _summary_interval([x.get("log_z_ratio") for x in d]),
                 _summary_interval([x.get("log_z_ratio_error") for x in d])] for s, d in pa.items()]
        blocks += [Heading(3, "Population annealing"), Image(path.name, f"population annealing, {label}"),
                   Text("Family-based effective population exp(S_f) at the last step, S_f = −Σ ν_i ln ν_i over "
                        "the fractions ν_i of the population descending from each initial replica "
                        "(Wang, Machta & Katzgraber, PRE 2015)."),
                   table(["sampler", "seeds", "exp(S_f)", "families", "ln Z(1)/Z(β₀)", "its error"], rows)]
    return blocks


def cells_blocks(group: list[dict[str, Any]], order: dict[str, int] | None = None) -> list[Block]:
    metrics = _metrics_of(group)
    order = rank_order(group) if order is None else order
    position = {s: i for i, s in enumerate(_ranked([r["sampler"]["label"] for r in group], order))}
    group = sorted(group, key=lambda r: (position[r["sampler"]["label"]], str(r["seed"])))
    rows = [[r["sampler"]["label"], r["seed"], r["cost"].get("total_evals"), r["cost"].get("total_wall_s")]
            + [r["final"]["metrics"].get(m) for m in metrics]
            + [_cell(_diagnostic_text(r["final"]["diagnostics"])), f"`{r['cell_id']}`"] for r in group]
    return [Heading(3, "Cells"), table(["sampler", "seed", "evals", "wall s"] + metrics + ["diagnostics", "cell"], rows)]


def system_blocks(group: list[dict[str, Any]], figure_dir: Path, records_dir: Path | None,
                  options: ReportOptions, notes: list[str], ranking=None,
                  colour: dict[str, str] | None = None) -> list[Block]:
    """One system's section: figures in the report's sampler colours (``colour``), tables in
    the order of the system's rank in ``ranking`` (the report's :func:`rank_samplers`)."""
    label = group[0]["system"]["label"]
    order = rank_order(group, ranking)
    group = sorted(group, key=lambda r: order.get(r["sampler"]["label"], len(order)))  # legends in rank order
    system = group[0]["system"]
    blocks: list[Block] = [Heading(2, label), Text(f"`{system['name']}` {json.dumps(system.get('params', {}))}")]
    reference = group[0].get("reference") or {}
    if reference.get("missing"):
        blocks.append(Text(f"No reference: {reference['missing']} Metrics that need one are undefined."))
    if reference.get("exact"):
        blocks.append(Text("Reference: " + ", ".join(f"{k} = {fmt(v)}" for k, v in reference["exact"].items())
                           + f" ({(reference.get('provenance') or {}).get('method', '')})"))
    curves = plots.plot_curves(group, figure_dir / f"curves-{slug(label)}.png", colour)
    blocks.append(Image(curves.name, f"accuracy versus cost, {label}"))
    blocks += final_metrics_blocks(group, order)
    blocks += speedup_blocks(group, options, order)
    blocks += free_energy_blocks(group, order)
    ess_metric = next((m for m in ESS_METRICS if m in _metrics_of(group)), None)
    if ess_metric:
        path = plots.plot_ess_per_cost(group, ess_metric, figure_dir / f"ess-{slug(label)}.png", colour)
        if path is not None:
            blocks += [Heading(3, "Effective sample size per cost"), Image(path.name, f"ESS per cost, {label}")]
    blocks += _sample_blocks(group, records_dir, figure_dir, label, notes, colour)
    blocks += diagnostics_blocks(group, figure_dir, label, order, colour)
    blocks += cells_blocks(group, order)
    return blocks


def first_line(error: str) -> str:
    """An error's first line, for a table cell; longer errors (a dead cell's stderr tail,
    :func:`boltzbench.isolation.with_stderr_tail`) are named as being in the record."""
    head, _, rest = str(error).strip().partition("\n")
    return f"{head} (more in the record's error)" if rest.strip() else head


def failed_blocks(failed: list[dict[str, Any]]) -> list[Block]:
    if not failed:
        return []
    rows = [[r["system"]["label"], r["sampler"]["label"], r["seed"], r["status"], _cell(first_line(r.get("error") or "")),
             f"`{r.get('cell_id', '?')}`"] for r in failed]
    return [Heading(2, "Failed cells"), table(["system", "sampler", "seed", "status", "error", "cell"], rows)]


def _docstring(name: str) -> str:
    from boltzbench.registry import get_metric

    try:
        doc = get_metric(name).__doc__ or ""
    except Exception:  # noqa: BLE001 - a metric not installed here is still named
        return "(not installed here: no description)"
    first = doc.strip().split("\n\n")[0].replace("``", "`")  # reST literals → Markdown code
    return " ".join(first.split()) or "(no description)"


def estimator_blocks(records: list[dict[str, Any]]) -> list[Block]:
    metrics = _metrics_of(records)
    items = [f"`{m}` ({'larger' if direction(m) > 0 else 'smaller' if direction(m) < 0 else 'no direction:'}"
             f"{' is better' if direction(m) else ' not ranked'}): {_docstring(m)}" for m in metrics]
    rules = [
        "Intervals: 95 % percentile bootstrap over seeds (2000 seeded resamples). One seed: no interval "
        "(an interval needs at least two values in every resampled group; the value is shown alone and never "
        "separates samplers).",
        "Speedup: " + speedup_module.RULE + ".",
        "Ranking: " + ranking_module.RULE + ".",
        "Changes against a baseline: " + compare_module.RULE + ".",
    ]
    return [Heading(2, "Estimators"), Text("Which estimator each metric used:"), Items(tuple(items)),
            Items(tuple(rules))]


def plugin_origins(records: list[dict[str, Any]]) -> list[str]:
    """'name: distribution version' of every system or sampler not from boltzbench itself
    (a plugin), from the records' ``env.components``; 'name: module M (not installed)' for
    a module found on the path."""
    out = set()
    for record in records:
        components = (record.get("env") or {}).get("components") or {}
        for kind in ("system", "sampler"):
            origin, name = components.get(kind) or {}, (record.get(kind) or {}).get("name")
            dist = origin.get("distribution")
            if dist == "boltzbench" or not origin:
                continue
            out.add(f"{name}: {dist} {origin.get('version')}" if dist
                    else f"{name}: module {origin.get('module')} (not installed)")
    return sorted(out)


def source_text(source: dict[str, Any] | None) -> str:
    """The boltzbench commit of a record's ``env.source``: 'commit 4c7e1df', with
    '+ uncommitted changes' when tracked files differed; 'not recorded' for an installed
    package or a record from before commits were recorded."""
    if not source:
        return "not recorded"
    return f"commit {source['commit'][:7]}" + (" + uncommitted changes" if source.get("modified") else "")


def environment_blocks(records: list[dict[str, Any]]) -> list[Block]:
    envs: dict[str, int] = defaultdict(int)
    for record in records:
        env = record.get("env")
        if isinstance(env, dict):  # where each component came from is listed once, below
            envs[json.dumps({k: v for k, v in env.items() if k != "components"}, sort_keys=True)] += 1
    if not envs:
        return []
    rows = []
    for blob, count in envs.items():
        env = json.loads(blob)
        packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
        rows.append([count, f"Python {env.get('python')} on {env.get('platform')}", env.get("cpu_count"),
                     env.get("torch_threads"), env.get("device"), packages, source_text(env.get("source"))])
    blocks: list[Block] = [Heading(2, "Environment")]
    if len(rows) == 1:
        _, where, cpus, threads, device, packages, source = rows[0]
        blocks.append(Text(f"{where}; {cpus} CPUs, {threads} torch threads, device {device}; {packages}; "
                           f"source {source}."))
    else:
        blocks.append(table(["cells", "python, platform", "CPUs", "torch threads", "device", "packages",
                             "source"], rows))
    plugins = plugin_origins(records)
    if plugins:
        blocks.append(Text("Plugins: " + "; ".join(plugins) + "."))
    return blocks


def sampler_colours(records: list[dict[str, Any]], ranking=None) -> dict[str, str]:
    """The report's one colour per sampler (:func:`boltzbench.reports.plots.colours`), over all
    samplers of the records: in the overall ranking's order, unranked samplers after by name."""
    ranked = [e.sampler for e in (ranking if ranking is not None else rank_samplers(records)).overall]
    return plots.colours(ranked + sorted({r["sampler"]["label"] for r in records} - set(ranked)))


def overview_blocks(ranking, figure_dir: Path, colour: dict[str, str] | None = None) -> list[Block]:
    """The overview figure: samplers (overall rank order) × systems, each cell the per-system
    rank with the mean rank over metrics [95 % interval] (:func:`plots.plot_overview`)."""
    if not ranking.per_system:
        return []
    samplers = [e.sampler for e in ranking.overall]
    samplers += sorted({e.sampler for es in ranking.per_system.values() for e in es} - set(samplers))
    path = plots.plot_overview(ranking.per_system, samplers, figure_dir / "overview.png", colour)
    return [Heading(2, "Overview"),
            Text("Per-system rank of each sampler (rows: overall rank order; darker = better; a dash: not run "
                 "there), with the mean rank over the ranked metrics and its 95 % interval. Sampler colours are "
                 "the same in every figure of this report. Details: the Ranking section below."),
            Image(path.name, "overview: per-system rank of each sampler")]


# ----------------------------------------------------------------------------- whole


def build_report(records: list[dict[str, Any]], figure_dir: Path, *, records_dir: Path | None = None,
                 problems: list[str] | None = None, set_aside: list[str] | None = None,
                 baseline: list[dict[str, Any]] | None = None,
                 baseline_name: str = "", baseline_problems: list[str] | None = None,
                 options: ReportOptions | None = None) -> tuple[list[Block], list[Change]]:
    """The report's blocks (figures written to ``figure_dir``) and the flagged changes."""
    options = options or ReportOptions()
    figure_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    matrices = sorted({str((r.get("matrix") or {}).get("name", "?")) for r in records})
    baselines = sorted({str((r.get("matrix") or {}).get("baseline", "?")) for r in records})
    blocks: list[Block] = [
        Heading(1, options.title),
        Text(f"{len(records)} cells: {len(ok)} ok, {len(failed)} failed · matrix: {', '.join(matrices)}"
             f" · baseline sampler: {', '.join(baselines)}"),
        Text("Costs count energy + force evaluations of single configurations, setup included. "
             "Energies are reduced (u = U/kT). Values are means over seeds with 95 % bootstrap intervals."),
    ]
    notes: list[str] = []
    if problems:
        blocks += [Heading(2, "Unreadable files"),
                   Text(f"{len(problems)} files in the records folder are not boltzbench records and were skipped:"),
                   Items(tuple(_cell(p) for p in problems))]
    if set_aside:
        blocks += [Heading(2, "Records not shown"),
                   Text(f"{len(set_aside)} records in the folder are not shown: duplicates of a shown cell, or "
                        "cells outside the matrix that was run last (`boltzbench report --all-records` shows "
                        "those as rows of their own):"),
                   Items(tuple(_cell(p) for p in set_aside))]
    ranking = rank_samplers(records)
    colour = sampler_colours(records, ranking)
    blocks[3:3] = overview_blocks(ranking, figure_dir, colour)  # at the top, after the title and the intro
    blocks += ranking_blocks(records, ranking)
    changes: list[Change] = []
    if baseline is not None:
        changes, unchanged = compare(records, baseline, tolerance=options.tolerance, ignore=options.ignore_metrics)
        blocks += changes_blocks(changes, unchanged, baseline_name, baseline_problems or [], options.tolerance,
                                 options.ignore_metrics)
    for label, group in _by(ok, "system").items():
        blocks += system_blocks(group, figure_dir, records_dir, options, notes, ranking, colour)
    blocks += failed_blocks(failed)
    if notes:
        blocks += [Heading(2, "Notes"), Items(tuple(_cell(n) for n in notes))]
    blocks += estimator_blocks(records)
    blocks += environment_blocks(records)
    return blocks, changes


__all__ = ["ReportOptions", "build_report", "final_interval", "interval_text", "slug"]
