"""Benchmark matrices: a TOML file → validated (system × sampler × seed) cells.

Format (see ``benchmarks/matrices/quick.toml``)::

    name = "quick"                     # default: the file's stem
    description = "..."
    seeds = [0, 1]
    baseline = "md"                    # label of the sampler speedups are measured against
    metrics = ["energy_w1", "ess"]     # optional; default: each system's default metrics
    keep_samples = false               # write the final samples beside each record (.npz)

    [budget]                           # max_evals and/or max_wall_s; n_snapshots
    max_evals = 1_000_000

    [[systems]]
    name = "double_well"
    params = { temperature = 1.0 }
    budget = { max_evals = 2_000_000 } # optional; overrides the matrix budget for this system

    [[samplers]]
    name = "md"
    label = "md"                       # optional; needed when a sampler appears twice
    params = { dt = 0.01 }
    systems = ["double_well"]          # optional; the system labels it runs on (default: all)

A label may appear on several sampler entries whose ``systems`` are disjoint: the same
method, tuned per system (MD's time step differs between a double well and a peptide),
ranked as one sampler.

Every error names the offending field and, where there is a closed set, the valid choices.
"""

from __future__ import annotations

import fnmatch
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boltzbench.contracts import Budget, ParameterError
from boltzbench.registry import PluginError, UnknownName, build, registry
from boltzbench.store import cell_id_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = ("name", "description", "seeds", "baseline", "metrics", "keep_samples", "budget",
            "systems", "samplers")
SYSTEM_KEYS = ("name", "label", "params", "budget")
SAMPLER_KEYS = ("name", "label", "params", "systems")
BUDGET_KEYS = ("max_evals", "max_wall_s", "n_snapshots")
MAX_SEED = 2 ** 63  # torch.Generator.manual_seed takes a signed 64-bit integer


class MatrixError(ValueError):
    """An invalid matrix; ``field`` is the dotted path of the offending entry."""

    def __init__(self, field: str, message: str, source: str = "matrix"):
        self.field, self.message, self.source = field, message, source
        super().__init__(f"{source}: {field}: {message}")


@dataclass(frozen=True)
class Component:
    """A system or sampler of a matrix: label, registered name, normalized parameters."""

    label: str
    name: str
    params: dict[str, Any]
    budget: Budget | None = None             # systems: overrides the matrix budget
    systems: tuple[str, ...] | None = None   # samplers: the system labels it runs on (None: all)

    def applies_to(self, system: "Component") -> bool:
        return self.systems is None or system.label in self.systems

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "name": self.name, "params": self.params}


@dataclass(frozen=True)
class Cell:
    """One (system, sampler, seed) run under a budget, with the metrics to compute."""

    system: Component
    sampler: Component
    seed: int
    budget: Budget
    metrics: tuple[str, ...]

    def spec(self) -> dict[str, Any]:
        """The normalized cell: what the cell id hashes and the record repeats."""
        return {
            "system": self.system.as_dict(),
            "sampler": self.sampler.as_dict(),
            "seed": self.seed,
            "budget": self.budget.as_dict(),
            "metrics": list(self.metrics),
        }

    @property
    def cell_id(self) -> str:
        return cell_id_of(self.spec())

    def __str__(self) -> str:
        return f"{self.system.label} × {self.sampler.label} × seed {self.seed}"


@dataclass(frozen=True)
class Matrix:
    name: str
    description: str
    systems: tuple[Component, ...]
    samplers: tuple[Component, ...]
    seeds: tuple[int, ...]
    budget: Budget
    baseline: str
    metrics: tuple[str, ...] | None = None
    keep_samples: bool = False
    source: str = field(default="matrix", compare=False)

    def cells(self) -> list[Cell]:
        cells = []
        for system, sampler, seed in itertools.product(self.systems, self.samplers, self.seeds):
            if not sampler.applies_to(system):
                continue
            metrics = self.metrics or registry("systems").load(system.name).default_metrics
            cells.append(Cell(system, sampler, seed, system.budget or self.budget, tuple(metrics)))
        return cells


def budget_warnings(matrix: Matrix) -> list[str]:
    """Each sampler's :meth:`~boltzbench.contracts.Sampler.budget_warnings` under the budget
    of every system it runs on, as "system label × sampler label: warning" (seeds share them)."""
    warnings, seen = [], set()
    for cell in matrix.cells():
        key = (cell.system.label, cell.sampler.label)
        if key in seen:
            continue
        seen.add(key)
        sampler = build(registry("samplers").load(cell.sampler.name), cell.sampler.params)
        warnings += [f"{cell.system.label} × {cell.sampler.label}: {w}" for w in sampler.budget_warnings(cell.budget)]
    return warnings


def match_patterns(option: str, patterns: list[str] | tuple[str, ...] | None,
                   choices: list[str], strict: bool = True) -> set[str] | None:
    """The ``choices`` that match any of ``patterns`` (shell globs, as :func:`fnmatch.fnmatchcase`).

    None when no pattern is given (no filter). A pattern that matches no choice is bad input
    when ``strict``: ValueError naming ``option`` and the valid choices (benchopt's
    ``-s``/``-d`` filters likewise accept names or patterns).
    """
    if not patterns:
        return None
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {c for c in choices if fnmatch.fnmatchcase(c, pattern)}
        if not hits and strict:
            raise ValueError(f"{option} {pattern!r}: matches nothing; valid choices: {', '.join(choices) or '(none)'}")
        chosen |= hits
    return chosen


@dataclass(frozen=True)
class CellFilter:
    """``--system``, ``--sampler``, ``--seed``: names or globs, repeatable; empty = no filter.

    A system or sampler pattern matches its label or its registered name; a seed pattern
    matches the seed written in decimal (``"1*"`` matches 1, 10, 11, …).
    """

    systems: tuple[str, ...] = ()
    samplers: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.systems or self.samplers or self.seeds)

    def select(self, items: list[tuple[str, str, str, str, int]], strict: bool = True) -> list[int]:
        """Indices of the ``(system label, system name, sampler label, sampler name, seed)`` items kept.

        Raises ValueError for a pattern that matches none of the items' values, if ``strict``."""
        def names(i: int, j: int) -> list[str]:
            return list(dict.fromkeys(v for item in items for v in (item[i], item[j])))
        systems = match_patterns("--system", self.systems, names(0, 1), strict)
        samplers = match_patterns("--sampler", self.samplers, names(2, 3), strict)
        seeds = match_patterns("--seed", self.seeds, sorted({str(item[4]) for item in items}, key=int), strict)
        return [k for k, (sl, sn, al, an, seed) in enumerate(items)
                if (systems is None or sl in systems or sn in systems)
                and (samplers is None or al in samplers or an in samplers)
                and (seeds is None or str(seed) in seeds)]

    def cells(self, cells: list[Cell]) -> list[Cell]:
        """The cells kept (all of them when there is no filter)."""
        items = [(c.system.label, c.system.name, c.sampler.label, c.sampler.name, c.seed) for c in cells]
        return [cells[k] for k in self.select(items)]

    def records(self, records: list[dict[str, Any]], strict: bool = True) -> list[dict[str, Any]]:
        """The records kept, matched on their system and sampler label or name, and seed
        (``strict=False`` for a baseline, which may lack what the filter names)."""
        items = [(r["system"]["label"], r["system"].get("name", r["system"]["label"]), r["sampler"]["label"],
                  r["sampler"].get("name", r["sampler"]["label"]), int(r["seed"])) for r in records]
        return [records[k] for k in self.select(items, strict)]


def load_matrix(path: str | Path) -> Matrix:
    """Read and validate a matrix file. Raises :class:`MatrixError`."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise MatrixError("path", "is a folder, not a matrix file; give a TOML file such as "
                          f"{path / 'matrix.toml'}", source)
    if not path.is_file():
        raise MatrixError("path", "no such file", source)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MatrixError("toml", f"not valid TOML (UTF-8): {exc}", source) from None
    return parse_matrix(data, source=source, default_name=path.stem)


def parse_matrix(data: dict[str, Any], source: str = "matrix", default_name: str = "matrix") -> Matrix:
    """Validate a matrix given as a dict (parsed TOML). Raises :class:`MatrixError`."""

    def fail(where: str, message: str) -> MatrixError:
        return MatrixError(where, message, source)

    _check_keys(data, TOP_KEYS, "", fail)
    for key in ("systems", "samplers", "seeds", "budget"):
        if key not in data:
            raise fail(key, "missing (required)")

    budget = _budget(data["budget"], "budget", fail)
    systems = _components(data["systems"], "systems", fail, budget_table=data["budget"])
    samplers = _components(data["samplers"], "samplers", fail, system_labels=[s.label for s in systems])

    seeds = data["seeds"]
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool)
                                                      and 0 <= s < MAX_SEED for s in seeds)):
        raise fail("seeds", f"must be a non-empty list of non-negative integers below 2**63, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise fail("seeds", f"repeated seeds in {seeds!r}")

    labels = list(dict.fromkeys(s.label for s in samplers))
    baseline = data.get("baseline", "md" if "md" in labels else labels[0])
    if baseline not in labels:
        raise fail("baseline", f"{baseline!r} is not a sampler of this matrix; valid choices: {', '.join(labels)}")

    metrics = data.get("metrics")
    if metrics is not None:
        if not (isinstance(metrics, list) and metrics and all(isinstance(m, str) for m in metrics)):
            raise fail("metrics", f"must be a non-empty list of metric names, got {metrics!r}")
        known = registry("metrics")
        for i, metric in enumerate(metrics):
            if metric not in known.names():
                raise fail(f"metrics[{i}]", f"unknown metric {metric!r}; valid choices: {', '.join(known.names())}")
        metrics = tuple(metrics)

    keep = data.get("keep_samples", False)
    if not isinstance(keep, bool):
        raise fail("keep_samples", f"must be true or false, got {keep!r}")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise fail(key, f"must be a string, got {data[key]!r}")

    return Matrix(
        name=data.get("name", default_name), description=data.get("description", ""),
        systems=systems, samplers=samplers, seeds=tuple(seeds), budget=budget,
        baseline=baseline, metrics=metrics, keep_samples=keep, source=source,
    )


def _budget(table: Any, where: str, fail) -> Budget:
    if not isinstance(table, dict):
        raise fail(where, "must be a table with max_evals and/or max_wall_s")
    _check_keys(table, BUDGET_KEYS, f"{where}.", fail)
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"{where}.{key}", f"must be a number, got {value!r}")
    try:
        return Budget(**table)
    except ParameterError as exc:
        raise fail(where + exc.field.removeprefix("budget"), exc.message) from None


def _check_keys(table: dict, valid: tuple[str, ...], prefix: str, fail) -> None:
    for key in table:
        if key not in valid:
            raise fail(f"{prefix}{key}", f"unknown key; valid keys: {', '.join(valid)}")


def _components(entries: Any, kind: str, fail, system_labels: tuple[str, ...] = (),
                budget_table: dict | None = None) -> tuple[Component, ...]:
    """Validate ``[[systems]]`` or ``[[samplers]]`` entries by building each one.

    A system entry's ``budget`` table overrides keys of the matrix's ``budget_table``; a
    sampler entry's ``systems`` must name labels in ``system_labels``."""
    if not isinstance(entries, list) or not entries:
        raise fail(kind, f"must be a non-empty array of tables ([[{kind}]])")
    table = registry(kind)
    components = []
    for i, entry in enumerate(entries):
        where = f"{kind}[{i}]"
        if not isinstance(entry, dict):
            raise fail(where, "must be a table with a name")
        _check_keys(entry, SYSTEM_KEYS if kind == "systems" else SAMPLER_KEYS, f"{where}.", fail)
        name = entry.get("name")
        if not isinstance(name, str):
            raise fail(f"{where}.name", f"missing; valid choices: {', '.join(table.names())}")
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise fail(f"{where}.params", "must be a table of parameter values")
        try:
            instance = build(table.load(name), params)
        except UnknownName as exc:
            raise fail(f"{where}.name", str(exc)) from None
        except PluginError as exc:
            raise fail(f"{where}.name", str(exc)) from None
        except ParameterError as exc:
            raise fail(f"{where}.params.{exc.field}", exc.message) from None
        label = entry.get("label", name)
        if not isinstance(label, str) or not label:
            raise fail(f"{where}.label", f"must be a non-empty string, got {label!r}")
        budget = entry.get("budget")
        if budget is not None:
            if not isinstance(budget, dict):
                raise fail(f"{where}.budget", "must be a table with max_evals and/or max_wall_s")
            budget = _budget({**budget_table, **budget}, f"{where}.budget", fail)
        systems = entry.get("systems")
        if systems is not None:
            if not (isinstance(systems, list) and systems and all(isinstance(s, str) for s in systems)):
                raise fail(f"{where}.systems", f"must be a non-empty list of system labels, got {systems!r}")
            for j, s in enumerate(systems):
                if s not in system_labels:
                    raise fail(f"{where}.systems[{j}]", f"unknown system label {s!r}; valid choices: {', '.join(system_labels)}")
            systems = tuple(systems)
        components.append(Component(label, name, instance.params(), budget=budget, systems=systems))
    for i, component in enumerate(components):
        for other in components[:i]:
            if other.label == component.label and (
                    other.systems is None or component.systems is None or set(other.systems) & set(component.systems)):
                raise fail(f"{kind}[{i}].label", f"label {component.label!r} is used twice on the same system; "
                           "give each entry its own label, or disjoint `systems`")
    return tuple(components)
