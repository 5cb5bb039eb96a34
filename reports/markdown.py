"""The report: ``report.md`` (renders on GitHub, figures as PNG files beside it) and a
self-contained ``index.html`` (figures embedded), both from the same blocks.

Reports read records only (DESIGN.md: data flows one way), plus the samples kept beside
them. Bad input never stops a report: unreadable or foreign files in the records folder
are named and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from boltzbench.matrix import CellFilter
from boltzbench.reports.build import ReportOptions, build_report
from boltzbench.reports.compare import Change
from boltzbench.reports.document import Block, Heading, Image, Items, Table, Text
from boltzbench.reports.html import render_html
from boltzbench.reports.selection import Selection, read_manifest, select_records
from boltzbench.store import Store


class NoRecords(FileNotFoundError):
    """A results folder without a single readable record."""


def render_markdown(blocks: list[Block]) -> str:
    """GitHub-flavoured Markdown of the report's blocks."""
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Items):
            lines += [f"* {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in block.rows] + [""]
        elif isinstance(block, Image):
            lines += [f"![{block.alt}]({block.file})", ""]
    return "\n".join(lines)


@dataclass
class ReportOutcome:
    """What ``generate_report`` wrote and found."""

    markdown: Path
    html: Path
    json: Path | None = None
    problems: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)  # readable records not shown, and why

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.is_regression]


def records_folder(results: str | Path) -> Path:
    """``RESULTS/records`` when it exists, else ``RESULTS`` itself (a bare records folder)."""
    results = Path(results)
    return results / "records" if (results / "records").is_dir() else results


def _load(results: str | Path, all_records: bool = False) -> tuple[Selection, list[str], Path]:
    """The records to show (:mod:`boltzbench.reports.selection`), the unreadable files, the folder."""
    folder = records_folder(results)
    store = Store(folder.parent)
    store.records_dir = folder
    problems: list[str] = []
    records = store.records(problems)
    return select_records(records, read_manifest(folder.parent), all_records), problems, folder


def check_speedup_metric(metric: str | None, records: list[dict]) -> None:
    """``--speedup-metric`` must be a metric some record has: ValueError naming the valid choices."""
    if metric is None:
        return
    known = list(dict.fromkeys(m for r in records for m in ((r.get("final") or {}).get("metrics") or {})))
    if metric not in known:
        raise ValueError(f"--speedup-metric: unknown metric {metric!r}; valid choices (the records' metrics): "
                         f"{', '.join(known) or '(none)'}")


def generate_report(results: str | Path, out: str | Path | None = None, *, baseline: str | Path | None = None,
                    options: ReportOptions | None = None, only: CellFilter | None = None,
                    json_path: str | Path | None = None) -> ReportOutcome:
    """Write ``report.md`` and ``index.html`` for the records in ``results``.

    ``out`` is the Markdown file (default ``RESULTS/report/report.md``); figures and
    ``index.html`` go beside it. ``baseline`` is another results folder to compare with.
    ``only`` keeps the records matching ``--system``/``--sampler``/``--seed`` (in the
    baseline too); ``json_path`` also writes the numbers as JSON
    (:mod:`boltzbench.reports.json_report`). Raises :class:`NoRecords` when ``results`` (or
    ``baseline``) has no readable record, ValueError for a filter that matches nothing or an
    unknown ``--speedup-metric``.
    """
    options = options or ReportOptions()
    selection, problems, folder = _load(results, options.all_records)
    if only and selection.records:
        selection.records = only.records(selection.records)
    if not selection.records:
        detail = f" ({len(problems)} unreadable: {'; '.join(problems)})" if problems else ""
        raise NoRecords(f"no records in {folder}{detail}: run a matrix first")
    check_speedup_metric(options.speedup_metric, selection.records)
    baseline_records, baseline_problems = None, []
    if baseline is not None:
        base, baseline_problems, base_folder = _load(baseline, options.all_records)
        if not base.records:
            raise NoRecords(f"no records in the baseline {base_folder}")
        # filtered alike; it may lack what the filter names (then those pairs are "new")
        baseline_records = only.records(base.records, strict=False) if only else base.records
    path = Path(out) if out is not None else Path(results) / "report" / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks, changes = build_report(selection.records, path.parent, records_dir=folder, problems=problems,
                                   set_aside=selection.outside + selection.duplicates,
                                   baseline=baseline_records, baseline_name=str(baseline or ""),
                                   baseline_problems=baseline_problems, options=options)
    path.write_text(render_markdown(blocks), encoding="utf-8")
    html = path.parent / "index.html"
    html.write_text(render_html(blocks, path.parent, options.title), encoding="utf-8")
    written = None
    if json_path is not None:
        from boltzbench.reports.json_report import report_json, write_json_report

        written = write_json_report(json_path, report_json(
            selection.records, changes=changes, baseline=None if baseline is None else str(baseline),
            speedup_metric=options.speedup_metric, target=options.target))
    return ReportOutcome(path, html, written, problems, changes, selection.outside + selection.duplicates)


def write_report(results: str | Path, out: str | Path | None = None) -> Path:
    """Write the report for the records in ``results``; returns the path of ``report.md``."""
    return generate_report(results, out).markdown
