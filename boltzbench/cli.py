"""The ``boltzbench`` command: run, validate, list, report.

Exit codes: 0 all good; 1 some cells of the matrix failed or timed out (in this run or an
earlier one); 2 bad input, a results folder in use by another run, or a Dask scheduler that
cannot be reached or started (no cell run); 130 interrupted (finished cells are kept; run
again to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from importlib.resources import files
from pathlib import Path

from boltzbench import __version__
from boltzbench.matrix import CellFilter, Matrix, MatrixError, budget_warnings, load_matrix
from boltzbench.registry import PluginError, registry

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def default_matrix_path() -> Path:
    return Path(str(files("boltzbench.benchmarks") / "matrices" / "quick.toml"))


def _load(path: str | None) -> Matrix:
    return load_matrix(path if path is not None else default_matrix_path())


def _plural(n: int, word: str) -> str:
    """'1 system', '2 systems'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _filter(args: argparse.Namespace) -> CellFilter:
    """The ``--system``/``--sampler``/``--seed`` patterns of ``args``."""
    return CellFilter(tuple(args.system), tuple(args.sampler), tuple(args.seed))


def _describe(matrix: Matrix) -> str:
    cells = matrix.cells()
    caps = ", ".join(f"{k} = {v:g}" for k, v in (("max_evals", matrix.budget.max_evals),
                                                  ("max_wall_s", matrix.budget.max_wall_s)) if v is not None)
    pairs = len(cells) // len(matrix.seeds)
    overrides = " (some systems override it)" if any(s.budget for s in matrix.systems) else ""
    return (f"matrix {matrix.name!r}: {_plural(len(cells), 'cell')} = {_plural(pairs, 'system × sampler pair')} "
            f"({_plural(len(matrix.systems), 'system')}) × {_plural(len(matrix.seeds), 'seed')}; "
            f"budget {caps} per cell{overrides}; "
            f"baseline {matrix.baseline!r}")


def cmd_validate(args: argparse.Namespace) -> int:
    matrix = _load(args.matrix)
    print(f"ok: {_describe(matrix)}")
    for cell in matrix.cells():
        print(f"  {cell.cell_id}  {cell}")
    _warn_budget(matrix)
    return EXIT_OK


def _warn_budget(matrix: Matrix) -> None:
    """Print the settings the budget will cut short (a warning: the matrix still runs)."""
    for warning in budget_warnings(matrix):
        print(f"warning: {warning}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from boltzbench.reports.markdown import write_report
    from boltzbench.runner import (build_missing_references, check_out, check_run_options, check_scheduler,
                                   run_matrix)

    matrix = _load(args.matrix)
    only = _filter(args)
    selected = only.cells(matrix.cells())  # a pattern that matches nothing: ValueError, exit 2
    check_scheduler(args.scheduler)
    check_run_options(workers=args.workers, timeout_s=args.cell_timeout, threads=args.threads)
    check_out(args.out if args.out is not None else Path("boltzbench-results") / matrix.name)
    out = Path(args.out) if args.out is not None else Path("boltzbench-results") / matrix.name
    print(f"{_describe(matrix)}\nresults: {out}", file=sys.stderr)
    _warn_budget(matrix)
    if only:
        print(f"filter: running {_plural(len(selected), 'cell')} of the matrix's {len(matrix.cells())} "
              "(OUT/matrix.json still lists them all)", file=sys.stderr)
    if not args.no_build_references:
        build_missing_references(matrix, out, retry_failed=args.retry_failed, progress=not args.no_progress,
                                 log=lambda line: print(line, file=sys.stderr), only=only)
    summary = run_matrix(matrix, out, scheduler=args.scheduler, workers=args.workers,
                         timeout_s=args.cell_timeout, progress=not args.no_progress,
                         retry_failed=args.retry_failed, threads=args.threads, only=only)
    finished = f"{summary.skipped} already finished"
    if summary.skipped_failed:
        finished += f" ({summary.skipped_failed} of them failed or timed out; --retry-failed reruns them)"
    print(f"{summary.ok + summary.failed} cells run ({summary.ok} ok, {summary.failed} failed), {finished}")
    if summary.rerun_for_samples:
        print(f"{summary.rerun_for_samples} of the cells run had finished ok without a samples file and were "
              "rerun, because the matrix keeps samples (keep_samples = true)")
    print(f"records: {out / 'records'}")
    if not args.no_report:
        print(f"report:  {write_report(out)}")
    return EXIT_FAILED_CELLS if summary.failures else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Exit 0, or 1 for a regression with --fail-on-regression, or 2 for bad input."""
    from boltzbench.metrics.speedup import parse_target
    from boltzbench.reports.build import ReportOptions
    from boltzbench.reports.compare import parse_tolerance
    from boltzbench.reports.markdown import NoRecords, generate_report

    if args.fail_on_regression and args.baseline is None:
        print("error: --fail-on-regression: needs --baseline DIR (the results folder to compare with)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    for name, folder in (("results", args.results), ("--baseline", args.baseline)):
        if folder is not None and not (Path(folder) / "records").is_dir():
            print(f"error: {name} {folder}: no records/ folder here; give the --out folder of a run",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
    options = ReportOptions(speedup_metric=args.speedup_metric, target=parse_target(args.target),
                            all_records=args.all_records, tolerance=parse_tolerance(args.tolerance),
                            ignore_metrics=tuple(args.ignore_metric))
    try:
        outcome = generate_report(args.results, args.out, baseline=args.baseline, options=options,
                                  only=_filter(args), json_path=args.json)
    except NoRecords as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for problem in outcome.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    if outcome.set_aside:
        print(f"note: {len(outcome.set_aside)} records not shown (duplicates, or outside the matrix that "
              "was run last; see the report's 'Records not shown')", file=sys.stderr)
    print(f"report: {outcome.markdown}\nhtml:   {outcome.html}")
    if outcome.json is not None:
        print(f"json:   {outcome.json}")
    if args.baseline is not None:
        regressions = outcome.regressions
        print(f"against {args.baseline}: {len(regressions)} regressions, "
              f"{len(outcome.changes) - len(regressions)} other changes")
        for change in regressions:
            print(f"  regression: {change.system} × {change.sampler}: {change.metric}")
        if regressions and args.fail_on_regression:
            return EXIT_FAILED_CELLS
    return EXIT_OK


def _parse_params(pairs: list[str]) -> dict[str, typing.Any]:
    """``["temperature=2", "n=43"]`` → ``{"temperature": 2, "n": 43}`` (JSON values, else strings)."""
    import json

    params = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param: expected NAME=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


def cmd_reference(args: argparse.Namespace) -> int:
    from boltzbench.contracts import ParameterError
    from boltzbench.registry import UnknownName, get_system
    from boltzbench.systems.references import ReferenceMissing, build_reference

    try:
        system = get_system(args.system, **_parse_params(args.param))
    except (UnknownName, PluginError) as exc:
        raise ValueError(f"SYSTEM: {exc}") from None
    except ParameterError as exc:
        raise ValueError(f"--param {exc.field}: {exc.message}") from None
    if args.action == "show":
        try:
            reference = system.reference()
        except LookupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED_CELLS
        import json

        print(json.dumps({"exact": reference.exact, "samples": len(reference.energies),
                          "provenance": reference.provenance}, indent=1, default=str))
        return EXIT_OK
    try:
        path = build_reference(system, seed=args.seed, out=args.out, max_evals=args.max_evals,
                               progress=not args.no_progress)
    except ReferenceMissing as exc:
        raise ValueError(f"SYSTEM: {exc}") from None
    print(f"reference: {path}")
    return EXIT_OK


def _param_line(field: dataclasses.Field, hint: typing.Any) -> str:
    kind = getattr(hint, "__name__", str(hint))
    return f"      {field.name} ({kind}, default {field.default!r}): {field.metadata.get('help', '')}"


def _summary(obj: typing.Any) -> str:
    """A component's one-line description: its ``description``, else its docstring's first line."""
    text = getattr(obj, "description", None) or (obj.__doc__ or "").strip()
    return text.splitlines()[0] if text else "(no description)"


def cmd_list(args: argparse.Namespace) -> int:
    kinds = ("systems", "samplers", "metrics")
    for kind in args.kinds:
        if kind not in kinds:
            print(f"error: list: unknown kind {kind!r}; valid choices: {', '.join(kinds)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    for kind in args.kinds or kinds:
        table = registry(kind)
        print(f"{kind}:")
        for name in table.names():
            try:
                obj = table.load(name)
            except PluginError as exc:
                print(f"  {name}  [broken plugin] {exc}")
                continue
            print(f"  {name}  {_summary(obj)}")
            if kind == "metrics":
                continue
            if kind == "systems":
                print(f"    default metrics: {', '.join(getattr(obj, 'default_metrics', ()) or ('none',))}")
            hints = typing.get_type_hints(obj)
            for field in obj.parameters():
                print(_param_line(field, hints[field.name]))
    return EXIT_OK


def _filter_options(command: argparse.ArgumentParser, what: str) -> None:
    for option, kind, example in (("--system", "system label or name", "a name or a glob such as 'ka*'"),
                                  ("--sampler", "sampler label or name", "a name or a glob such as 'pt*'"),
                                  ("--seed", "seed", "a number such as 3, or a glob such as '1*'")):
        command.add_argument(option, action="append", default=[], metavar="PATTERN",
                             help=f"{what} whose {kind} matches PATTERN ({example}; repeatable: any of them)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="boltzbench",
        description="Benchmark samplers of Boltzmann distributions: run a (system × sampler × "
                    "seed) matrix under a cost budget, then rank the methods in a report.")
    top.add_argument("--version", action="version", version=f"boltzbench {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a benchmark matrix (default: the built-in quick matrix)",
                         description="Run every cell of MATRIX not yet finished in --out, write one "
                                     "JSON record per cell, then a Markdown report. Resumable: run it "
                                     "again after an interruption.")
    run.add_argument("matrix", nargs="?", help="matrix TOML file (default: built-in quick.toml)")
    run.add_argument("--out", help="results folder (default: boltzbench-results/<matrix name>)")
    run.add_argument("--scheduler", default="local", metavar="WHERE",
                     help="where cells run: local (default; a Dask LocalCluster of worker processes), "
                          "serial (one cell at a time, each in a child process), or the address of a running "
                          "Dask scheduler such as tcp://host:8786")
    run.add_argument("--workers", type=int, metavar="N",
                     help="workers of the local cluster (default: one per CPU core)")
    run.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                     help="wall-clock limit per cell: the cell stops at its next step and is recorded as "
                          "timeout with its curve so far; one still running max(2 s, 10 %%) later is killed")
    run.add_argument("--threads", type=int, default=1, metavar="N",
                     help="torch threads of each cell, in every scheduler (default: 1); recorded in env")
    _filter_options(run, "run only the cells")
    run.add_argument("--retry-failed", action="store_true", help="run failed and timed-out cells again")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="do not write the report")
    run.add_argument("--no-build-references", action="store_true",
                     help="do not build missing references first (their metrics then come back empty)")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a matrix and list its cells; runs nothing")
    validate.add_argument("matrix", help="matrix TOML file")
    validate.set_defaults(func=cmd_validate)

    lst = sub.add_parser("list", help="list systems, samplers and metrics with their parameters")
    lst.add_argument("kinds", nargs="*", metavar="KIND",
                     help="systems, samplers and/or metrics (default: all)")
    lst.set_defaults(func=cmd_list)

    reference = sub.add_parser("reference", help="build or show the reference data of a system",
                               description="build: run the system's reference recipe (a long run of a "
                                           "registered sampler) and store samples with provenance; "
                                           "show: print the reference that system.reference() finds.")
    reference.add_argument("action", choices=("build", "show"))
    reference.add_argument("system", help="registered system name (see `boltzbench list systems`)")
    reference.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                           help="a system parameter (repeatable), e.g. --param temperature=0.5")
    reference.add_argument("--seed", type=int, default=0, help="seed of the reference run")
    reference.add_argument("--max-evals", type=float, help="override the recipe's budget")
    reference.add_argument("--out", help="folder (default: $BOLTZBENCH_REFERENCES or "
                                         "~/.cache/boltzbench/references)")
    reference.add_argument("--no-progress", action="store_true")
    reference.set_defaults(func=cmd_reference)

    report = sub.add_parser("report", help="write a Markdown and an HTML report of a results folder",
                            description="Write report.md (figures as PNG files beside it) and a "
                                        "self-contained index.html. Exit codes: 0 ok, 1 a regression "
                                        "with --fail-on-regression, 2 bad input (no records).")
    report.add_argument("results", help="the --out folder of a run (holds records/)")
    report.add_argument("--out", help="report path (default: RESULTS/report/report.md); index.html goes beside it")
    report.add_argument("--baseline", metavar="DIR",
                        help="another results folder: add a section on what changed against it")
    report.add_argument("--fail-on-regression", action="store_true",
                        help="exit 1 on a regression (needs --baseline): a metric whose mean got worse by more "
                             "than --tolerance with evidence (one-sided Welch t-test at α = 0.05; needs two "
                             "seeds on each side), or a pair with no ok cell now")
    report.add_argument("--tolerance", metavar="TOL",
                        help="regression gate: relative change of a metric's mean that counts, as 5%% or 0.05 "
                             "(default 10%%, like asv's --factor 1.1)")
    report.add_argument("--ignore-metric", action="append", default=[], metavar="METRIC",
                        help="leave METRIC out of the regression gate (repeatable); its changes are still shown")
    report.add_argument("--speedup-metric", metavar="METRIC",
                        help="metric whose target speedups are measured at (default: energy_w1, else "
                             "mean_energy_error, else the first error metric)")
    report.add_argument("--target", metavar="EPS",
                        help="speedup target: a number, or median_final (default: median over samplers of "
                             "the final value), baseline_final, baseline_initial:F")
    _filter_options(report, "show only the records")
    report.add_argument("--json", metavar="PATH",
                        help="also write the numbers as JSON for CI: ranking, per-system final metrics and "
                             "speedups, changes against --baseline (JSON Schema: reports/report.schema.json in the repository, installed as boltzbench/reports/report.schema.json)")
    report.add_argument("--all-records", action="store_true",
                        help="also show the records in the folder that are not cells of the matrix run "
                             "last (RESULTS/matrix.json), each setting as a row of its own")
    report.set_defaults(func=cmd_report)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except (MatrixError, ValueError) as exc:  # includes SchedulerError
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `boltzbench validate … | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's advice: no second error when stdout is flushed at exit
        return EXIT_OK
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are kept; run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
