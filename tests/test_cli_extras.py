"""Issue 17, "Running and reporting": bad report options, --system/--sampler/--seed filters,
report --json against its schema, snapshots due before the first kept sample, small things."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from boltzbench.cli import default_matrix_path, main
from boltzbench.matrix import load_matrix
from test_reports import DW_METRICS, make_record, write

EXACT = {"mean_energy": -10.4, "delta_f": 4.78}


def small_records(folder: Path) -> list[dict]:
    """double_well: md, mc and pt over three seeds; ka2d: md over two."""
    out = [write(folder / "records", make_record("double_well", sampler, seed, DW_METRICS, scale=scale, exact=EXACT))
           for sampler, scale in (("md", 1.0), ("mc", 1.3), ("pt", 0.2)) for seed in (0, 1, 2)]
    out += [write(folder / "records", make_record("ka2d", "md", seed, ["energy_w1", "ess"])) for seed in (0, 1)]
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("extras")
    return folder, small_records(folder)


# ------------------------------------------------------------------ 1. bad report options


def test_fail_on_regression_without_baseline_is_bad_input(small, capsys):
    folder, _ = small
    assert main(["report", str(folder), "--fail-on-regression"]) == 2
    err = capsys.readouterr().err
    assert "--fail-on-regression" in err and "--baseline" in err


def test_unknown_speedup_metric_is_bad_input_naming_the_choices(small, capsys):
    folder, _ = small
    assert main(["report", str(folder), "--speedup-metric", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--speedup-metric" in err and "'nope'" in err and "valid choices" in err and "energy_w1" in err


# ------------------------------------------------------------------ 2. filters


def test_cell_filter_matches_labels_names_globs_and_seeds():
    from boltzbench.matrix import CellFilter

    cells = load_matrix(default_matrix_path()).cells()
    kept = CellFilter(systems=("double_*",), samplers=("p?",), seeds=("1",)).cells(cells)
    assert {(c.system.label, c.sampler.label, c.seed) for c in kept} == {("double_well", "pt", 1),
                                                                           ("double_well", "pa", 1)}
    assert CellFilter().cells(cells) == cells
    assert len(CellFilter(samplers=("md", "flow")).cells(cells)) == sum(c.sampler.label in ("md", "flow") for c in cells)


@pytest.mark.parametrize("option, value", [("--system", "nope*"), ("--sampler", "hmc"), ("--seed", "7")])
def test_a_filter_that_matches_nothing_is_bad_input(option, value, capsys, tmp_path):
    assert main(["run", "--out", str(tmp_path / "out"), "--scheduler", "serial", option, value]) == 2
    err = capsys.readouterr().err
    assert option in err and repr(value) in err and "valid choices" in err
    assert not (tmp_path / "out" / "records").exists()


TINY = """
seeds = [0, 1]
[budget]
max_evals = 3000
n_snapshots = 2
[[systems]]
name = "double_well"
[[samplers]]
name = "md"
params = { n_chains = 8, thin = 2 }
[[samplers]]
name = "mc"
params = { n_chains = 8, thin = 2 }
"""


def test_filtered_run_runs_only_the_matching_cells_and_keeps_the_whole_matrix_in_matrix_json(tmp_path, capsys):
    matrix = tmp_path / "tiny.toml"
    matrix.write_text(TINY)
    out = tmp_path / "out"
    code = main(["run", str(matrix), "--out", str(out), "--scheduler", "serial", "--no-progress", "--no-report",
                 "--no-build-references", "--sampler", "m[c]", "--sampler", "mc", "--seed", "1"])
    assert code == 0
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert [(r["sampler"]["label"], r["seed"]) for r in records] == [("mc", 1)]
    manifest = json.loads((out / "matrix.json").read_text())
    assert sorted(manifest["cell_ids"]) == sorted(c.cell_id for c in load_matrix(matrix).cells())
    assert "running 1 cell of the matrix's 4" in capsys.readouterr().err


def test_report_filters_show_only_the_matching_records(small, tmp_path, capsys):
    folder, _ = small
    path = tmp_path / "r.json"
    assert main(["report", str(folder), "--out", str(tmp_path / "r.md"), "--json", str(path),
                 "--system", "double_well", "--sampler", "m*", "--seed", "0", "--seed", "2"]) == 0
    doc = json.loads(path.read_text())
    assert list(doc["systems"]) == ["double_well"]
    assert set(doc["systems"]["double_well"]["samplers"]) == {"md", "mc"}
    assert all(s["seeds"] == [0, 2] for s in doc["systems"]["double_well"]["samplers"].values())
    assert doc["cells"]["total"] == 4
    assert "| pt |" not in (tmp_path / "r.md").read_text() and "| md |" in (tmp_path / "r.md").read_text()
    assert main(["report", str(folder), "--out", str(tmp_path / "r.md"), "--seed", "9"]) == 2
    assert "--seed '9'" in capsys.readouterr().err
    # the baseline is filtered alike, and may lack what the filter names (pt is new)
    base = tmp_path / "base"
    write(base / "records", make_record("double_well", "md", 0, DW_METRICS, exact=EXACT))
    assert main(["report", str(folder), "--out", str(tmp_path / "r.md"), "--json", str(path),
                 "--sampler", "pt", "--baseline", str(base)]) == 0
    changes = json.loads(path.read_text())["comparison"]["changes"]
    assert [(c["system"], c["sampler"], c["verdict"]) for c in changes] == [("double_well", "pt", "new")]


# ------------------------------------------------------------------ 3. --json and its schema


def conforms(value, node: dict, root: dict, where: str = "$") -> None:
    """A hand-written check of the JSON Schema keywords report.schema.json uses (jsonschema is
    not installed here): $ref, oneOf, type, const, enum, required, properties,
    additionalProperties, items. Raises AssertionError naming the path."""
    if "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return conforms(value, target, root, where)
    if "oneOf" in node:
        passed = 0
        for option in node["oneOf"]:
            try:
                conforms(value, option, root, where)
                passed += 1
            except AssertionError:
                pass
        assert passed == 1, f"{where}: matches {passed} of oneOf"
        return
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
             "integer": int, "number": (int, float)}
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        assert any(isinstance(value, kinds[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                   for t in types), f"{where}: {value!r} is not {types}"
    if "const" in node:
        assert value == node["const"], where
    if "enum" in node:
        assert value in node["enum"], f"{where}: {value!r} not in {node['enum']}"
    if isinstance(value, dict):
        for key in node.get("required", []):
            assert key in value, f"{where}: missing {key}"
        props = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                conforms(item, props[key], root, f"{where}.{key}")
            else:
                assert extra is not False, f"{where}: unexpected key {key}"
                if isinstance(extra, dict):
                    conforms(item, extra, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            conforms(item, node["items"], root, f"{where}[{i}]")


def no_nan(text: str) -> dict:
    def refuse(token):
        raise AssertionError(f"{token} in the JSON")
    return json.loads(text, parse_constant=refuse)


def test_json_report_conforms_to_its_schema_and_holds_the_reports_numbers(small, tmp_path):
    folder, records = small
    path = tmp_path / "report.json"
    assert main(["report", str(folder), "--out", str(tmp_path / "report.md"), "--json", str(path),
                 "--baseline", str(folder)]) == 0
    from boltzbench.reports.json_report import schema

    doc = no_nan(path.read_text())
    spec = schema()
    conforms(doc, spec, spec)
    for broken in ({**doc, "extra": 1}, {**doc, "cells": {**doc["cells"], "ok": "3"}}):  # the check bites
        with pytest.raises(AssertionError):
            conforms(broken, spec, spec)
    try:  # the real validator too, where it is installed
        import jsonschema
    except ImportError:
        pass
    else:
        jsonschema.validate(doc, spec)
    # the final-metric table: the plain mean over seeds of the records' values
    md = [r for r in records if r["system"]["label"] == "double_well" and r["sampler"]["label"] == "md"]
    cell = doc["systems"]["double_well"]["samplers"]["md"]["metrics"]["energy_w1"]
    assert cell["value"] == pytest.approx(np.mean([r["final"]["metrics"]["energy_w1"] for r in md]), rel=1e-12)
    assert cell["low"] <= cell["value"] <= cell["high"]
    # speedups: the baseline is 1 by definition; pt (errors 5x smaller) is faster than md
    rows = {row["sampler"]: row for row in doc["systems"]["double_well"]["speedup"]["rows"]}
    assert rows["md"]["speedup_evals"]["value"] == 1.0
    assert rows["pt"]["speedup_evals"]["value"] > 1.0
    # ranking: pt first on the double well; ka2d has md alone
    overall = {e["sampler"]: e for e in doc["ranking"]["overall"]}
    assert overall["pt"]["rank"] == 1 and set(overall) == {"md", "mc", "pt"}
    assert doc["ranking"]["per_system"]["ka2d"]["samplers"][0]["sampler"] == "md"
    # against itself: compared, nothing changed
    assert doc["comparison"]["baseline"] == str(folder) and doc["comparison"]["regressions"] == 0
    # a sampler with one seed has no interval: null, not NaN
    one = tmp_path / "one"
    write(one / "records", make_record("double_well", "md", 0, DW_METRICS, exact=EXACT))
    assert main(["report", str(one), "--json", str(one / "r.json")]) == 0
    doc = no_nan((one / "r.json").read_text())
    conforms(doc, spec, spec)
    assert doc["systems"]["double_well"]["samplers"]["md"]["metrics"]["energy_w1"]["low"] is None
    assert doc["comparison"] is None


# ------------------------------------------------------------------ 4. snapshots and thinning


def one_cell(tmp_path: Path, max_evals: int):
    from boltzbench.runner import run_cell

    path = tmp_path / "m.toml"
    path.write_text(f"seeds = [0]\n[budget]\nmax_evals = {max_evals}\n[[systems]]\nname = \"double_well\"\n"
                    "[[samplers]]\nname = \"md\"\nparams = { n_chains = 64, thin = 10 }\n")
    return run_cell(load_matrix(path).cells()[0]).record


def test_a_snapshot_due_before_the_first_kept_sample_waits_for_it(tmp_path):
    """The issue's cell: 64 chains, thin = 10, max_evals = 10 000, 20 snapshots. The first mark
    (500 evals) passes at step 7 (64 + 7·64 = 512 evals): the old MD failed there; now its first
    snapshot comes at the first kept sample, step 10 (64 + 10·64 = 704 evals), and the whole
    budget is used."""
    record = one_cell(tmp_path, 10_000)
    assert record["status"] == "ok", record["error"]
    assert record["curve"][0]["cost"] == 64 + 10 * 64
    assert record["cost"]["total_evals"] >= 10_000


def test_a_budget_spent_before_the_first_kept_sample_says_so(tmp_path):
    record = one_cell(tmp_path, 500)  # 64 + 7·64 = 512: exhausted at step 7 < thin
    assert record["status"] == "failed"
    assert "no sample kept after 7 steps (512 evaluations)" in record["error"]
    assert "thin = 10" in record["error"] and "raise it or lower thin" in record["error"]


# ------------------------------------------------------------------ 5. small things


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "boltzbench 0.1.0"


def test_a_folder_as_matrix_says_it_is_a_folder(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "no such file" not in err


def test_counts_are_singular_for_one(tmp_path, capsys):
    path = tmp_path / "one.toml"
    path.write_text("seeds = [0]\n[budget]\nmax_evals = 1000\n[[systems]]\nname = \"double_well\"\n"
                    "[[samplers]]\nname = \"md\"\n")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 cell = 1 system × sampler pair (1 system) × 1 seed;" in out


def test_validate_into_a_closed_pipe_ends_without_a_traceback():
    """`boltzbench validate … | head -0`: the reader is gone before anything is written."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; from boltzbench.cli import main; "
                              "sys.exit(main(['validate', sys.argv[1]]))", str(default_matrix_path())],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_list_systems_prints_each_systems_default_metrics(capsys):
    assert main(["list", "systems"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  double_well  "))
    assert lines[at + 1] == "    default metrics: energy_w1, x1_w1, mean_energy_error, delta_f_error, ess"
