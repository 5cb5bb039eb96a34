"""The matrix format, its validation, and the CLI's answers to bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from boltzbench.cli import EXIT_BAD_INPUT, default_matrix_path, main
from boltzbench.matrix import MatrixError, budget_warnings, load_matrix, parse_matrix
from boltzbench.registry import BUILTIN, registry

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "benchmarks" / "matrices" / "quick.toml"


def base(**overrides) -> dict:
    """A small valid matrix as a dict; keyword arguments replace top-level entries."""
    data = {
        "seeds": [0, 1],
        "budget": {"max_evals": 1000},
        "systems": [{"name": "double_well"}],
        "samplers": [{"name": "md"}, {"name": "mc"}],
    }
    data.update(overrides)
    return data


def ids(matrix) -> list[str]:
    return [cell.cell_id for cell in matrix.cells()]


# ---------------------------------------------------------------------------- good input


@pytest.mark.parametrize("path", [QUICK, default_matrix_path()], ids=["repo", "installed"])
def test_quick_matrix_validates_and_expands(path):
    """The default matrix runs every built-in sampler at least once, each where it applies."""
    matrix = load_matrix(path)
    assert matrix.name == "quick"
    assert matrix.baseline == "md"
    assert [s.name for s in matrix.systems] == ["double_well", "ternary2d"]
    assert matrix.seeds == (0, 1)
    assert matrix.budget.max_evals == 2_000_000 and matrix.budget.n_snapshots == 20
    cells = matrix.cells()
    assert {c.sampler.name for c in cells} == set(BUILTIN["samplers"])
    pairs = {(c.system.label, c.sampler.label) for c in cells}
    assert pairs == {("double_well", s) for s in ("md", "mc", "pt", "pa", "flow")} | {
        ("ternary2d", "md"), ("ternary2d", "swap_mc"), ("ternary2d", "flow_swap")}
    assert len(cells) == 2 * len(pairs) and len(set(ids(matrix))) == len(cells)
    assert {c.budget.max_evals for c in cells if c.system.label == "ternary2d"} == {500_000}
    # no metrics named: each system's defaults
    for c in cells:
        assert c.metrics == tuple(registry("systems").load(c.system.name).default_metrics)


def test_parameters_are_normalized_with_defaults():
    matrix = parse_matrix(base(samplers=[{"name": "md", "params": {"dt": 0.02}}]))
    sampler, system = matrix.samplers[0], matrix.systems[0]
    assert sampler.params == {"dt": 0.02, "friction": 1.0, "mass": 1.0, "backend": "torch", "n_chains": 64, "thin": 10}
    assert system.params == {"a": 1.0, "b": 6.0, "c": 1.0, "d": 1.0, "temperature": 1.0}
    # an integer given for a float parameter is stored as a float
    coerced = parse_matrix(base(systems=[{"name": "double_well", "params": {"temperature": 2}}]))
    value = coerced.systems[0].params["temperature"]
    assert value == 2.0 and isinstance(value, float)


def test_defaults_and_top_level_fields():
    matrix = parse_matrix(base(samplers=[{"name": "mc"}, {"name": "md", "label": "langevin"}]),
                          default_name="mine")
    assert matrix.name == "mine" and matrix.description == ""
    assert matrix.baseline == "mc"  # no "md" label: the first sampler
    assert matrix.metrics is None and matrix.keep_samples is False
    matrix = parse_matrix(base(metrics=["ess", "energy_w1"], keep_samples=True, name="n"))
    assert matrix.name == "n" and matrix.baseline == "md" and matrix.keep_samples is True
    assert all(c.metrics == ("ess", "energy_w1") for c in matrix.cells())


def test_cell_ids_are_stable():
    first, second = parse_matrix(base()), parse_matrix(base())
    assert ids(first) == ids(second)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids(first))
    # the order of parameters in the file does not matter
    a = parse_matrix(base(samplers=[{"name": "md", "params": {"dt": 0.02, "thin": 5}}]))
    b = parse_matrix(base(samplers=[{"name": "md", "params": {"thin": 5, "dt": 0.02}}]))
    assert ids(a) == ids(b)


def test_cell_ids_stable_across_processes(tmp_path):
    # ids name records on disk, so a resumed run in a new process must find the same ids
    code = ("import sys; from boltzbench.matrix import load_matrix; "
            "print(' '.join(c.cell_id for c in load_matrix(sys.argv[1]).cells()))")
    out = subprocess.run([sys.executable, "-c", code, str(QUICK)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.split() == ids(load_matrix(QUICK))


def test_cell_ids_differ_by_seed_and_sampler():
    cells = parse_matrix(base(seeds=[0, 1, 2])).cells()
    assert len({c.cell_id for c in cells}) == len(cells) == 6
    by_seed = {c.seed: c.cell_id for c in cells if c.sampler.label == "md"}
    assert len(set(by_seed.values())) == 3


def test_cell_ids_normalized_defaults_give_same_id():
    omitted = parse_matrix(base(samplers=[{"name": "md"}]))
    explicit = parse_matrix(base(samplers=[{"name": "md", "params": {"dt": 0.01, "friction": 1.0}}]))
    as_int = parse_matrix(base(samplers=[{"name": "md", "params": {"friction": 1}}]))
    assert ids(omitted) == ids(explicit) == ids(as_int)


@pytest.mark.parametrize("change", [
    {"samplers": [{"name": "md", "params": {"dt": 0.02}}]},
    {"samplers": [{"name": "md", "params": {"n_chains": 32}}]},
    {"samplers": [{"name": "md", "label": "md2"}]},
    {"systems": [{"name": "double_well", "params": {"temperature": 2.0}}]},
    {"budget": {"max_evals": 2000}},
    {"budget": {"max_evals": 1000, "n_snapshots": 5}},
    {"metrics": ["ess"]},
], ids=["dt", "n_chains", "label", "temperature", "max_evals", "n_snapshots", "metrics"])
def test_cell_ids_change_with_the_spec(change):
    reference = parse_matrix(base(samplers=[{"name": "md"}]))
    changed = parse_matrix({**base(samplers=[{"name": "md"}]), **change})
    assert len(ids(reference)) == len(ids(changed)) == 2
    assert set(ids(reference)).isdisjoint(ids(changed))


# ----------------------------------------------------------------------------- bad input

VALID_BODY = """\
seeds = [0, 1]

[budget]
max_evals = 1000

[[systems]]
name = "double_well"

[[samplers]]
name = "md"

[[samplers]]
name = "mc"
"""

# id -> (TOML text, field path, words the message must contain)
BAD = {
    "unknown_system": (VALID_BODY.replace('"double_well"', '"triple_well"'),
                       "systems[0].name", ["triple_well", "double_well"]),
    "unknown_sampler": (VALID_BODY.replace('name = "md"', 'name = "hmc"'),
                        "samplers[0].name", ["hmc", "md", "mc"]),
    "unknown_param": (VALID_BODY.replace('name = "md"', 'name = "md"\nparams = { dtt = 0.1 }'),
                      "samplers[0].params.dtt", ["dt", "friction", "n_chains", "thin"]),
    "wrong_type": (VALID_BODY.replace('name = "md"', 'name = "md"\nparams = { dt = "small" }'),
                   "samplers[0].params.dt", ["float", "small"]),
    "negative_temperature": (VALID_BODY.replace('name = "double_well"',
                                                'name = "double_well"\nparams = { temperature = -1.0 }'),
                             "systems[0].params.temperature", ["> 0"]),
    "zero_budget": (VALID_BODY.replace("max_evals = 1000", "max_evals = 0"),
                    "budget.max_evals", ["> 0"]),
    "negative_budget": (VALID_BODY.replace("max_evals = 1000", "max_evals = -5"),
                        "budget.max_evals", ["> 0"]),
    "negative_wall": (VALID_BODY.replace("max_evals = 1000", "max_wall_s = -1.5"),
                      "budget.max_wall_s", ["> 0"]),
    "missing_caps": (VALID_BODY.replace("max_evals = 1000", "n_snapshots = 5"),
                     "budget", ["max_evals", "max_wall_s"]),
    "missing_budget": (VALID_BODY.replace("[budget]\nmax_evals = 1000\n", ""),
                       "budget", ["missing"]),
    "string_budget": (VALID_BODY.replace("max_evals = 1000", 'max_evals = "lots"'),
                      "budget.max_evals", ["number"]),
    "unknown_top_key": ("sedes = [3]\n" + VALID_BODY, "sedes", ["seeds", "budget", "samplers"]),
    "unknown_budget_key": (VALID_BODY.replace("max_evals = 1000", "max_evals = 1000\nmax_evalz = 5"),
                           "budget.max_evalz", ["max_evals", "n_snapshots"]),
    "duplicate_seeds": (VALID_BODY.replace("seeds = [0, 1]", "seeds = [0, 1, 1]"),
                        "seeds", ["repeated"]),
    "negative_seed": (VALID_BODY.replace("seeds = [0, 1]", "seeds = [-1]"), "seeds", ["non-negative"]),
    "baseline_not_a_sampler": ('baseline = "hmc"\n' + VALID_BODY, "baseline", ["hmc", "md", "mc"]),
    "unknown_metric": ('metrics = ["ess", "energy_w9"]\n' + VALID_BODY, "metrics[1]",
                       ["energy_w9", "energy_w1", "ess", "x1_w1", "delta_f_error"]),
    "duplicate_labels": (VALID_BODY.replace('name = "mc"', 'name = "md"'),
                         "samplers[1].label", ["'md'", "twice"]),
    "malformed_toml": (VALID_BODY.replace("seeds = [0, 1]", "seeds = [0, 1"), "toml", ["TOML"]),
}


def write_bad(tmp_path: Path, case: str) -> tuple[Path, str, list[str]]:
    text, where, words = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path, where, words


def test_valid_body_is_valid(tmp_path):
    # guards the bad cases: each differs from this valid file in one place only
    path = tmp_path / "good.toml"
    path.write_text(VALID_BODY)
    assert len(load_matrix(path).cells()) == 4


@pytest.mark.parametrize("case", sorted(BAD))
def test_load_matrix_rejects(tmp_path, case):
    path, where, words = write_bad(tmp_path, case)
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    assert info.value.field == where
    assert info.value.source == str(path)
    message = str(info.value)
    assert f"{where}: " in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_rejects_bad_matrix_and_writes_nothing(tmp_path, monkeypatch, capsys, case, command):
    monkeypatch.chdir(tmp_path)  # the run's default --out would land here
    path, where, words = write_bad(tmp_path, case)
    out = tmp_path / "results"
    argv = [command, str(path)] + (["--out", str(out), "--no-progress"] if command == "run" else [])
    assert main(argv) == EXIT_BAD_INPUT == 2
    captured = capsys.readouterr()
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, captured.err
    assert f"{where}: " in error_lines[0]
    for word in words:
        assert word in error_lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_cli_missing_matrix_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert "error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_real_exit_code_in_a_subprocess(tmp_path):
    path, where, _ = write_bad(tmp_path, "unknown_param")
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "boltzbench.cli", "run", str(path), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {path}: {where}: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_cli_validate_good_matrix(capsys):
    assert main(["validate", str(QUICK)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("ok: matrix 'quick': 16 cells = 8 system × sampler pairs (2 systems) × 2 seeds")
    for cell_id in ids(load_matrix(QUICK)):
        assert cell_id in stdout


# --------------------------------------------------------------------- list and report


def test_cli_list_shows_everything_with_defaults(capsys):
    assert main(["list"]) == 0
    stdout = capsys.readouterr().out
    for kind in ("systems", "samplers", "metrics"):
        assert f"{kind}:" in stdout
        for name in BUILTIN[kind]:
            assert f"  {name}  " in stdout, name
    for line in ("dt (float, default 0.01)", "friction (float, default 1.0)",
                 "n_chains (int, default 64)", "thin (int, default 10)", "step (float, default 0.1)",
                 "temperature (float, default 1.0)", "b (float, default 6.0)"):
        assert line in stdout, line
    # every parameter of every system and sampler has its line
    for kind in ("systems", "samplers"):
        for name in BUILTIN[kind]:
            for field in registry(kind).load(name).parameters():
                assert f"      {field.name} (" in stdout and f"default {field.default!r})" in stdout


def test_cli_list_one_kind(capsys):
    assert main(["list", "samplers"]) == 0
    stdout = capsys.readouterr().out
    assert "samplers:" in stdout and "  md  " in stdout and "  mc  " in stdout
    assert "systems:" not in stdout and "double_well" not in stdout and "metrics:" not in stdout


def test_cli_list_bogus_kind(capsys):
    assert main(["list", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "bogus" in err
    for kind in ("systems", "samplers", "metrics"):
        assert kind in err


def test_cli_report_without_records(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    assert main(["report", str(results)]) == 2
    assert capsys.readouterr().err.startswith("error:")
    assert list(results.iterdir()) == []
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------------ found by review
# Bad input that once crashed or was accepted.


def test_non_utf8_matrix_is_bad_input(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe seeds = [0]\n")
    assert main(["validate", str(path)]) == 2
    assert "toml" in capsys.readouterr().err


def test_fractional_n_snapshots_is_rejected():
    with pytest.raises(MatrixError) as info:
        parse_matrix(base(budget={"max_evals": 1000, "n_snapshots": 2.5}))
    assert info.value.field == "budget.n_snapshots"


def test_infinite_budget_is_rejected():
    with pytest.raises(MatrixError) as info:
        parse_matrix(base(budget={"max_evals": float("inf")}))
    assert info.value.field == "budget.max_evals"


def test_infinite_sampler_parameter_is_rejected():
    with pytest.raises(MatrixError) as info:
        parse_matrix(base(samplers=[{"name": "md", "params": {"dt": float("inf")}}]))
    assert info.value.field == "samplers[0].params.dt" and "finite" in info.value.message


def test_single_well_parameters_are_rejected():
    with pytest.raises(MatrixError) as info:
        parse_matrix(base(systems=[{"name": "double_well", "params": {"b": -6.0}}]))
    assert info.value.field == "systems[0].params.b"


def test_list_survives_a_metric_without_docstring(tmp_path, monkeypatch, capsys):
    (tmp_path / "nodoc_metric_plugin.py").write_text(
        textwrap.dedent("""\
            def nodoc(samples, reference):
                return 0.0
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(BUILTIN["metrics"], "nodoc", "nodoc_metric_plugin:nodoc")
    assert main(["list", "metrics"]) == 0
    assert "  nodoc" in capsys.readouterr().out


def test_sampler_systems_filter_and_per_system_budget():
    """A sampler runs only on its `systems`; a label tuned per system is one sampler; a
    system's budget overrides the matrix's keys and leaves the others."""
    data = base(systems=[{"name": "double_well"},
                         {"name": "double_well", "label": "dw_hot", "params": {"temperature": 3.0},
                          "budget": {"max_evals": 5000}}],
                samplers=[{"name": "md", "params": {"dt": 0.01}, "systems": ["double_well"]},
                          {"name": "md", "params": {"dt": 0.02}, "systems": ["dw_hot"]},
                          {"name": "mc", "systems": ["dw_hot"]}])
    matrix = parse_matrix(data)
    combos = sorted((c.system.label, c.sampler.label, c.sampler.params["dt"] if c.sampler.name == "md" else None)
                    for c in matrix.cells() if c.seed == 0)
    assert combos == [("double_well", "md", 0.01), ("dw_hot", "mc", None), ("dw_hot", "md", 0.02)]
    budgets = {c.system.label: c.budget for c in matrix.cells()}
    assert budgets["double_well"].max_evals == 1000 and budgets["dw_hot"].max_evals == 5000
    assert budgets["dw_hot"].n_snapshots == matrix.budget.n_snapshots
    # the filter and the system budget do not enter the cell id of an unfiltered matrix
    plain = parse_matrix(base(samplers=[{"name": "md", "params": {"dt": 0.01}}]))
    assert ids(plain)[0] in ids(matrix)


@pytest.mark.parametrize("samplers, field, words", [
    ([{"name": "md", "systems": ["triple_well"]}], "samplers[0].systems[0]", ["triple_well", "double_well"]),
    ([{"name": "md", "systems": "double_well"}], "samplers[0].systems", ["list"]),
    ([{"name": "md"}, {"name": "md", "params": {"dt": 0.02}, "systems": ["double_well"]}],
     "samplers[1].label", ["used twice", "disjoint"]),
])
def test_bad_sampler_systems(samplers, field, words):
    with pytest.raises(MatrixError) as info:
        parse_matrix(base(samplers=samplers))
    assert info.value.field == field and all(w in info.value.message for w in words)


def test_bad_system_budget():
    with pytest.raises(MatrixError) as info:
        parse_matrix(base(systems=[{"name": "double_well", "budget": {"max_evals": -1}}]))
    assert info.value.field == "systems[0].budget.max_evals"
    with pytest.raises(MatrixError) as info:
        parse_matrix(base(systems=[{"name": "double_well", "budget": {"max_evalz": 1}}]))
    assert info.value.field == "systems[0].budget.max_evalz"


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "matrices").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_matrix_loads_and_validates_its_cells(path):
    """Every published matrix parses and its parameters pass validation (a typo fails here, not
    an hour into a run), and no sampler's settings are cut short by its budget."""
    matrix = load_matrix(path)
    assert matrix.cells() and budget_warnings(matrix) == []


def test_validate_warns_of_flow_data_the_budget_will_cut(tmp_path, capsys):
    """The flow's data may use half of its setup share: 64 × 100000 steps do not fit in
    0.5 × 0.8 × 1e7 evaluations (the 20-minute alanine flow's data were once cut that way)."""
    path = tmp_path / "m.toml"
    path.write_text("seeds = [0, 1]\n[budget]\nmax_evals = 10_000_000\n[[systems]]\nname = \"double_well\"\n"
                    "[[samplers]]\nname = \"flow\"\nlabel = \"bg\"\n"
                    "params = { data_chains = 64, data_steps = 100_000, train_fraction = 0.8 }\n"
                    "[[samplers]]\nname = \"md\"\n")
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: double_well × bg: the flow's training data")
    assert "6.4e+06" in err[0] and "4e+06" in err[0] and "62%" in err[0]
