"""Cell identity and record hygiene (issue 13, items 5, 6 and 8): one setting is one cell id,
rows of a report are settings (never labels pooled across settings), duplicates count once,
and odd records are named, skipped by the report and rerun by ``run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_reports import DW_METRICS, make_record, write

from boltzbench import parse_matrix, run_matrix
from boltzbench.cli import main
from boltzbench.store import Store, cell_id_of


def matrix(budget=None, samplers=None, seeds=(0,)):
    return {"name": "ids", "seeds": list(seeds), "budget": budget or {"max_evals": 20_000, "n_snapshots": 2},
            "systems": [{"name": "double_well"}],
            "samplers": samplers or [{"name": "mc", "params": {"n_chains": 16}}]}


def ids(data):
    return [cell.cell_id for cell in parse_matrix(data).cells()]


# ------------------------------------------------------------------ 5: one setting, one id


@pytest.mark.parametrize("one, other", [
    (matrix(budget={"max_evals": 20_000}), matrix(budget={"max_evals": 2e4})),
    (matrix(budget={"max_evals": 1000, "max_wall_s": 60}), matrix(budget={"max_evals": 1e3, "max_wall_s": 60.0})),
    (matrix(samplers=[{"name": "flow", "params": {"max_train_s": 120}}]),       # float | None
     matrix(samplers=[{"name": "flow", "params": {"max_train_s": 120.0}}])),
    (matrix(samplers=[{"name": "pt", "params": {"betas": [1, 0.5]}}]),          # list[float] | None
     matrix(samplers=[{"name": "pt", "params": {"betas": [1.0, 0.5]}}])),
], ids=["max_evals", "max_wall_s", "optional float", "list of floats"])
def test_spellings_of_one_setting_give_one_cell_id(one, other):
    assert ids(one) == ids(other)


def test_a_respelled_budget_reruns_nothing(tmp_path):
    first = run_matrix(parse_matrix(matrix(budget={"max_evals": 3200, "n_snapshots": 2})), tmp_path, progress=False)
    again = run_matrix(parse_matrix(matrix(budget={"max_evals": 3.2e3, "n_snapshots": 2})), tmp_path, progress=False)
    assert (first.ok, again.skipped, again.ok + again.failed) == (1, 1, 0)
    assert len(list((tmp_path / "records").glob("*.json"))) == 1


def _with_id(record: dict) -> dict:
    return {**record, "cell_id": cell_id_of(record)}


def _report(folder: Path, *extra: str) -> str:
    assert main(["report", str(folder), *extra]) == 0
    return (folder / "report" / "report.md").read_text()


def _seeds_column(report: str, sampler: str) -> int:
    """The 'seeds' cell of a sampler's row in the first final-metrics table."""
    table = report.split("### Final metrics over seeds", 1)[1]
    row = next(line for line in table.splitlines() if line.startswith(f"| {sampler} |"))
    return int(row.split("|")[2])


def test_a_duplicate_record_counts_once_and_is_named(tmp_path):
    records = [_with_id(make_record("double_well", s, seed, DW_METRICS)) for s in ("md", "mc") for seed in (0, 1)]
    for record in records:
        write(tmp_path / "records", record)
    # the same cell as md seed 0, written by a version that hashed max_evals = 6000.0
    old = _with_id({**records[0], "budget": {**records[0]["budget"], "max_evals": 6000.0}})
    assert old["cell_id"] != records[0]["cell_id"]
    write(tmp_path / "records", old)
    report = _report(tmp_path)
    assert _seeds_column(report, "md") == 2
    assert "Records not shown" in report and f"{old['cell_id']}.json" in report


# --------------------------------------------------------- 6: rows are settings, not labels


def _md(seed: int, dt: float, max_evals: int = 6000) -> dict:
    record = make_record("double_well", "md", seed, DW_METRICS)
    record["sampler"]["params"] = {"n_chains": 8, "dt": dt}
    record["budget"] = {**record["budget"], "max_evals": max_evals}
    return _with_id(record)


def test_the_report_shows_the_matrix_that_was_run_and_names_the_rest(tmp_path):
    old = [_md(seed, 0.01) for seed in range(3)]
    new = [_md(seed, 0.005) for seed in range(3)]
    for record in old + new:
        write(tmp_path / "records", record)
    (tmp_path / "matrix.json").write_text(json.dumps({"name": "ids", "cell_ids": [r["cell_id"] for r in new]}))

    report = _report(tmp_path)
    assert "6 cells" not in report and "3 cells" in report
    assert _seeds_column(report, "md") == 3
    assert all(f"{r['cell_id']}.json" in report for r in old)   # named, not pooled

    everything = _report(tmp_path, "--all-records")
    assert _seeds_column(everything, "md (dt=0.005)") == 3
    assert _seeds_column(everything, "md (dt=0.01)") == 3


def test_budgets_are_rows_of_their_own(tmp_path):
    for seed in (0, 1):
        write(tmp_path / "records", _md(seed, 0.01, max_evals=20_000))
        write(tmp_path / "records", _md(seed, 0.01, max_evals=200_000))
    report = _report(tmp_path)
    assert _seeds_column(report, "md (max_evals=20000)") == 2
    assert _seeds_column(report, "md (max_evals=200000)") == 2


# ------------------------------------------------------------ 8: odd records


def _odd(kind: str, good: dict) -> tuple[dict | str, str]:
    """An odd record and the file stem it is written under."""
    record = json.loads(json.dumps(good))
    if kind == "no diagnostics":
        del record["final"]["diagnostics"]
    elif kind == "no cell_id":
        del record["cell_id"]
    elif kind == "matrix null":
        record["matrix"] = None
    elif kind == "text metric":
        record["final"]["metrics"]["energy_w1"] = "0.1"
    elif kind == "newer schema":
        record["schema"] = "boltzbench.record/2"
    elif kind == "another cell's content":
        return record, cell_id_of({**good, "seed": 99})
    elif kind == "edited settings":
        record["sampler"]["params"]["n_chains"] = 9        # cell_id and file name kept
    return record, good["cell_id"]


ODD = ["no diagnostics", "no cell_id", "matrix null", "text metric", "newer schema", "another cell's content",
       "edited settings"]


@pytest.mark.parametrize("kind", ODD)
def test_an_odd_record_is_named_skipped_and_rerun(tmp_path, kind, capsys):
    good = [_with_id(make_record("double_well", s, seed, DW_METRICS)) for s in ("md", "mc") for seed in (0, 1)]
    for record in good[1:]:
        write(tmp_path / "records", record)
    odd, stem = _odd(kind, good[0])
    (tmp_path / "records" / f"{stem}.json").write_text(json.dumps(odd))

    report = _report(tmp_path)
    assert f"{stem}.json" in capsys.readouterr().err and f"{stem}.json" in report
    assert "3 cells" in report
    assert not Store(tmp_path).is_done(stem)          # `run` computes the cell again
    assert all(Store(tmp_path).is_done(r["cell_id"]) for r in good[1:])


def test_a_nan_metric_is_undefined_not_a_nan_ranking(tmp_path):
    good = [_with_id(make_record("double_well", s, seed, DW_METRICS, scale=scale))
            for s, scale in (("md", 1.0), ("pt", 0.2)) for seed in (0, 1, 2)]
    for record in good:
        write(tmp_path / "records", record)
    nan = good[0]
    nan["final"]["metrics"]["energy_w1"] = float("nan")
    (tmp_path / "records" / f"{nan['cell_id']}.json").write_text(json.dumps(nan))  # writes NaN
    report = _report(tmp_path)
    ranking = report.split("## Ranking", 1)[1].split("\n## ", 1)[0]
    assert "nan" not in ranking.lower()
    assert Store(tmp_path).load(nan["cell_id"])["final"]["metrics"]["energy_w1"] is None


def test_a_baseline_with_other_settings_is_not_compared(tmp_path):
    """Same labels, another dt: the runs do not measure the same thing, and the report says
    so instead of comparing (or gating) their metrics."""
    for seed in range(3):
        write(tmp_path / "now" / "records", _md(seed, 0.005))
        write(tmp_path / "old" / "records", _md(seed, 0.01))
    assert main(["report", str(tmp_path / "now"), "--baseline", str(tmp_path / "old"), "--fail-on-regression"]) == 0
    report = (tmp_path / "now" / "report" / "report.md").read_text()
    assert "not comparable" in report and "(settings differ: dt)" in report


def test_speedups_find_the_baseline_under_its_matrix_label(tmp_path):
    """With --all-records the baseline's row is labelled with its settings; the speedup table
    still finds it, and says so when the baseline has several settings."""
    for seed in range(2):
        write(tmp_path / "records", _md(seed, 0.01))
        write(tmp_path / "records", make_record("double_well", "pt", seed, DW_METRICS, scale=0.2))
    one = _report(tmp_path, "--all-records")
    assert "has no ok cell on this system" not in one and "| pt | 2 | " in one.split("### Speedup over md", 1)[1]
    for seed in range(2):
        write(tmp_path / "records", _md(seed, 0.005))
    both = _report(tmp_path, "--all-records")
    assert "the baseline sampler 'md' has 2 settings on this system" in both


def test_seeds_beyond_a_64_bit_generator_seed_are_bad_input():
    with pytest.raises(Exception, match=r"seeds: must be a non-empty list of non-negative integers below 2\*\*63"):
        parse_matrix(matrix(seeds=(2 ** 64,)))
    assert parse_matrix(matrix(seeds=(2 ** 63 - 1,))).cells()
