"""Reports built from synthetic records in the runner's format (JSON files in tmp_path,
samples as .npz beside them): every section and every cell, bad input, baselines."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from boltzbench.cli import main
from boltzbench.metrics.observables import energy_histogram
from boltzbench.reports.compare import compare, verdict
from boltzbench.reports.plots import radial_distribution
from boltzbench.store import cell_id_of

ENV = {"python": "3.11.7", "platform": "Linux-test", "cpu_count": 2, "torch_threads": 2, "device": "cpu",
       "packages": {"boltzbench": "0.1.0", "torch": "2.13.0+cpu", "numpy": "2", "scipy": "1", "pot": "0.9",
                    "openmm": "8"}}
DW_METRICS = ["energy_w1", "x1_w1", "mean_energy_error", "delta_f_error", "ess", "delta_f", "delta_f_stderr"]


def curve(metrics: list[str], scale: float, seed: int, n: int = 6, setup: float = 0.0):
    rng = np.random.default_rng(seed)
    points = []
    for k in range(1, n + 1):
        cost = setup + 1000.0 * k
        values = {}
        for m in metrics:
            if m.startswith("ess"):
                values[m] = 5.0 * k * scale * (1 + 0.05 * rng.standard_normal())
            elif m in ("delta_f", "delta_f_stderr"):
                values[m] = 4.0 + 0.1 * rng.standard_normal() if m == "delta_f" else 0.3
            else:
                values[m] = scale * 3.0 / k * (1 + 0.05 * rng.standard_normal())
        points.append({"cost": cost, "wall_s": cost / 1e4, "metrics": values})
    return points


def make_record(system: str, sampler: str, seed: int, metrics: list[str], *, scale: float = 1.0,
                status: str = "ok", diagnostics: dict | None = None, params: dict | None = None,
                setup: float = 0.0, exact: dict | None = None) -> dict:
    points = curve(metrics, scale, seed + 17 * len(sampler)) if status == "ok" else []
    total = points[-1]["cost"] if points else 0.0
    record = {
        "schema": "boltzbench.record/1", "status": status,
        "error": None if status == "ok" else ("NonFiniteEnergy: non-finite | energies (at md.py:1)"
                                               if status == "failed" else "per-cell timeout of 5 s reached"),
        "system": {"label": system, "name": system, "params": params or {}},
        "sampler": {"label": sampler, "name": sampler, "params": {"n_chains": 8}},
        "seed": seed, "budget": {"max_evals": 6000, "max_wall_s": None, "n_snapshots": 6},
        "metrics": metrics, "matrix": {"name": "synthetic", "baseline": "md", "source": "test"},
        "cost": {"energy_evals": 0.0, "force_evals": total, "wall_s": total / 1e4,
                 "setup": {"energy_evals": setup, "force_evals": 0.0, "wall_s": 0.0},
                 "total_evals": total, "total_wall_s": total / 1e4},
        "curve": points,
        "final": {"metrics": points[-1]["metrics"] if points else {}, "diagnostics": diagnostics or {"steps": 600}},
        "reference": {"exact": exact or {}, "provenance": {"method": "synthetic"},
                      **({"energy_histogram": energy_histogram(np.random.default_rng(5).normal(-10.4, 1.0, 5000))}
                         if exact else {})},
        "env": ENV, "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00",
    }
    return {**record, "cell_id": cell_id_of(record)}


def write(records_dir: Path, record: dict, arrays: dict | None = None) -> dict:
    records_dir.mkdir(parents=True, exist_ok=True)
    if arrays is not None:
        name = f"{record['cell_id']}.npz"
        np.savez_compressed(records_dir / name, **arrays)
        record = {**record, "samples_file": name}
    (records_dir / f"{record['cell_id']}.json").write_text(json.dumps(record))
    return record


def pair_distances(rng, n_configs: int, counts: dict[str, int]) -> dict[str, np.ndarray]:
    return {f"observables/pair_distance/{k}": rng.uniform(0.8, 3.0, size=(n_configs, 1, n)) for k, n in counts.items()}


def synthetic_results(folder: Path) -> list[dict]:
    """Three systems, several samplers with their diagnostics, kept samples, failures."""
    rng = np.random.default_rng(0)
    records_dir = folder / "records"
    out = []
    exact = {"mean_energy": -10.4, "delta_f": 4.78}
    for seed in (0, 1):
        out.append(write(records_dir, make_record("double_well", "md", seed, DW_METRICS, exact=exact),
                         {"energies": rng.normal(-10, 1, (50, 8)), "positions": rng.normal(size=(50, 8, 2))}))
        out.append(write(records_dir, make_record("double_well", "mc", seed, DW_METRICS, scale=1.3, exact=exact)))
        out.append(write(records_dir, make_record(
            "double_well", "pt", seed, DW_METRICS, scale=0.2, exact=exact,
            diagnostics={"betas": [1.0, 0.6, 0.35, 0.2], "pair_acceptance": [0.5, 0.4, 0.3], "round_trips": 12 + seed,
                         "round_trips_per_replica": [3, 3, 3, 3], "acceptance": [0.5, 0.6, 0.7, 0.8]})))
        schedule = [{"beta": b, "ess_fraction": 0.9, "family_entropy": math.log(60 - 40 * b), "n_families": int(60 - 40 * b)}
                    for b in np.linspace(0.1, 1.0, 8)]
        out.append(write(records_dir, make_record(
            "double_well", "pa", seed, DW_METRICS, scale=0.5, exact=exact,
            diagnostics={"schedule": schedule, "log_z_ratio": -3.2, "log_z_ratio_error": 0.05}),
            {"energies": rng.normal(-10.4, 1, (1, 400)), "log_weights": rng.normal(size=(1, 400)),
             "positions": rng.normal(size=(1, 400, 2))}))
        for sampler, scale in (("md", 1.0), ("flow", 0.4)):
            arrays = {"energies": rng.normal(size=(30, 4)), "positions": rng.normal(size=(30, 4, 66)),
                      "observables/phi": rng.uniform(-math.pi, math.pi, (30, 4)),
                      "observables/psi": rng.uniform(-math.pi, math.pi, (30, 4))}
            if sampler == "flow":
                arrays["log_weights"] = rng.normal(size=(30, 4))
            out.append(write(records_dir, make_record("alanine_dipeptide", sampler, seed,
                                                      ["energy_w1", "dihedral_w2", "ess"], scale=scale,
                                                      setup=5000.0 if sampler == "flow" else 0.0), arrays))
        for sampler, scale in (("md", 1.0), ("swap", 0.3)):
            arrays = {"energies": rng.normal(size=(20, 1)), "positions": rng.normal(size=(20, 1, 86)),
                      **pair_distances(rng, 20, {"AA": 378, "AB": 420, "BB": 105})}
            out.append(write(records_dir, make_record("ka2d", sampler, seed, ["energy_w1", "pair_distance_w1", "ess"],
                                                      scale=scale, params={"n_particles": 43, "density": 1.2}),
                             arrays))
    out.append(write(records_dir, make_record("double_well", "flow", 0, DW_METRICS, status="failed")))
    out.append(write(records_dir, make_record("ka2d", "swap", 7, ["energy_w1", "pair_distance_w1", "ess"],
                                              status="timeout", params={"n_particles": 43, "density": 1.2})))
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("results")
    return folder, synthetic_results(folder)


def small_results(folder: Path) -> list[dict]:
    """The double well with two samplers and three seeds: quick to report on."""
    exact = {"mean_energy": -10.4, "delta_f": 4.78}
    return [write(folder / "records", make_record("double_well", sampler, seed, DW_METRICS, scale=scale, exact=exact))
            for sampler, scale in (("md", 1.0), ("mc", 1.3)) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("small")
    return folder, small_results(folder)


@pytest.fixture(scope="module")
def report(results) -> tuple[str, str, Path]:
    folder, _ = results
    assert main(["report", str(folder)]) == 0
    md = (folder / "report" / "report.md").read_text()
    html = (folder / "report" / "index.html").read_text()
    return md, html, folder / "report"


SECTIONS = ["# boltzbench report", "## Ranking", "### Per system", "## double_well", "## alanine_dipeptide",
            "## ka2d", "### Final metrics over seeds", "### Speedup over md", "### Free energies",
            "### Effective sample size per cost", "### Sample distributions", "### Parallel tempering",
            "### Population annealing", "### Cells", "## Failed cells", "## Estimators", "## Environment"]
FIGURES = ["curves-double_well.png", "ess-double_well.png", "energy-double_well.png", "pt-double_well.png",
           "pa-double_well.png", "ramachandran-alanine_dipeptide.png", "gr-ka2d.png", "curves-ka2d.png"]


def test_report_has_every_section(report):
    md, html, _ = report
    for heading in SECTIONS:
        assert re.search(rf"^{re.escape(heading)}$", md, re.MULTILINE), heading
        assert f">{heading.lstrip('#').strip()}</h" in html, heading


def test_report_has_every_cell_and_the_failed_ones_with_their_errors(report, results):
    md, html, _ = report
    _, records = results
    for record in records:
        assert f"`{record['cell_id']}`" in md
        assert f"<code>{record['cell_id']}</code>" in html
    failed = md.split("## Failed cells", 1)[1].split("\n## ", 1)[0]
    assert "non-finite \\| energies" in failed and "timeout" in failed
    assert "non-finite | energies" in html


def test_report_figures_exist_and_html_embeds_them(report):
    md, html, folder = report
    for name in FIGURES:
        assert f"]({name})" in md, name
        assert (folder / name).stat().st_size > 5_000, name
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert html.count('src="data:image/png;base64,') == len(images)
    assert "<script" not in html and "<link" not in html and 'src="http' not in html


def test_report_tables_state_intervals_speedups_and_estimators(report):
    md, _, _ = report
    assert "| md | 2 |" in md and "| pt | 2 |" in md
    dw = md.split("## double_well", 1)[1].split("\n## ", 1)[0]
    assert "Target: `energy_w1` ≤" in dw and "median over samplers" in dw
    assert re.search(r"\| pt \| 2 \| 2/2 \|", dw)
    assert "Reference ΔF = 4.78 kT" in dw
    estimators = md.split("## Estimators", 1)[1]
    for metric in DW_METRICS + ["dihedral_w2", "pair_distance_w1"]:
        assert f"`{metric}`" in estimators, metric
    assert "torus" in estimators and "Kish" in estimators and "Geyer" not in estimators.split("`ess`")[0]
    assert "2 CPUs, 2 torch threads, device cpu" in md
    # the double well's records carry a reference energy histogram, the others do not
    assert "no reference energy histogram" not in dw
    assert "no reference energy histogram" in md.split("## alanine_dipeptide", 1)[1].split("\n## ", 1)[0]


def test_report_without_kept_samples_says_so(tmp_path):
    write(tmp_path / "records", make_record("double_well", "md", 0, ["energy_w1"]))
    missing = make_record("double_well", "mc", 0, ["energy_w1"])
    write(tmp_path / "records", {**missing, "samples_file": "gone.npz"})
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "gone.npz: unreadable samples" in md


def test_radial_distribution_of_an_ideal_gas_is_one():
    rng = np.random.default_rng(1)
    n, box, configs = 60, 10.0, 200
    x = rng.uniform(0, box, size=(configs, n, 2))
    i, j = np.triu_indices(n, 1)
    d = x[:, i] - x[:, j]
    d -= box * np.round(d / box)
    r = np.sqrt((d * d).sum(-1)).ravel()
    bins = np.linspace(0.5, 4.5, 9)
    g = radial_distribution(r, np.full(r.size, 1.0 / r.size), i.size, bins, n / box**2, n, 2)
    np.testing.assert_allclose(g, 1.0, atol=0.05)


# ------------------------------------------------------------------------ bad input


def test_corrupt_and_foreign_json_files_are_named_and_skipped(tmp_path, capsys):
    small_results(tmp_path)
    records = tmp_path / "records"
    (records / "broken.json").write_text('{"schema": "boltzbench.record/1", "status": ')
    (records / "foreign.json").write_text(json.dumps({"name": "some other tool", "version": 3}))
    (records / "list.json").write_text("[1, 2, 3]")
    (records / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    label = {"label": "x", "name": "x", "params": {}}
    (records / "no_seed.json").write_text(json.dumps({"schema": "boltzbench.record/1", "system": label,
                                                      "sampler": label, "status": "ok"}))
    ok_without_curve = {**make_record("double_well", "md", 9, ["energy_w1"]), "cell_id": "no_curve"}
    del ok_without_curve["curve"]
    (records / "no_curve.json").write_text(json.dumps(ok_without_curve))
    assert main(["report", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    md = (tmp_path / "report" / "report.md").read_text()
    for name in ("broken.json", "foreign.json", "list.json", "latin1.json", "no_seed.json", "no_curve.json"):
        assert name in err and name in md
    assert "## Unreadable files" in md and "## double_well" in md


def test_empty_results_folder_is_bad_input(tmp_path, capsys):
    (tmp_path / "records").mkdir()
    assert main(["report", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err
    (tmp_path / "records" / "junk.json").write_text("not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "junk.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def test_bad_target_is_bad_input(small, tmp_path, capsys):
    folder, _ = small
    assert main(["report", str(folder), "--out", str(tmp_path / "r.md"), "--target", "soon"]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["report", str(folder), "--out", str(tmp_path / "r.md"),
                 "--speedup-metric", "mean_energy_error", "--target", "0.5"]) == 0
    assert "Target: `mean_energy_error` ≤ 0.5 (given" in (tmp_path / "r.md").read_text()


# ------------------------------------------------------------------------- baseline


def test_verdicts_by_welch_test_and_tolerance():
    # was: verdicts by intervals (one-seed points: any change beyond 1e-6 was a regression)
    old = [1.0, 0.98, 1.02]
    assert verdict("energy_w1", old, [1.01, 0.99, 1.03]) == (None, None)
    result, p = verdict("energy_w1", old, [2.0, 1.96, 2.04])
    assert result == "regression" and p < 0.05
    assert verdict("energy_w1", old, [0.5, 0.49, 0.51])[0] == "improvement"
    assert verdict("ess", old, [2.0, 1.96, 2.04])[0] == "improvement"
    assert verdict("ess", old, [0.5, 0.49, 0.51])[0] == "regression"
    assert verdict("delta_f", old, [2.0, 1.96, 2.04])[0] == "moved"
    # single seeds: no test, never a regression; "not testable" beyond the tolerance
    assert verdict("energy_w1", [1.0], [1.0]) == (None, None)
    assert verdict("energy_w1", [1.0], [1.05]) == (None, None)
    assert verdict("energy_w1", [1.0], [1.5]) == ("not testable", None)
    assert verdict("energy_w1", [1.0, 1.1], [3.0]) == ("not testable", None)


def _copy_with(results_folder: Path, dest: Path, sampler: str, metric: str, factor: float) -> Path:
    shutil.copytree(results_folder / "records", dest / "records")
    for path in (dest / "records").glob("*.json"):
        record = json.loads(path.read_text())
        if record["sampler"]["label"] == sampler and record["system"]["label"] == "double_well" \
                and record["status"] == "ok":
            record["final"]["metrics"][metric] *= factor
            path.write_text(json.dumps(record))
    return dest


def test_baseline_flags_a_regression_and_fail_on_regression_exits_1(small, tmp_path, capsys):
    folder, _ = small
    worse = _copy_with(folder, tmp_path / "worse", "mc", "energy_w1", 3.0)
    args = ["report", str(worse), "--baseline", str(folder)]
    assert main(args) == 0
    md = (worse / "report" / "report.md").read_text()
    section = md.split("## Changes against the baseline", 1)[1].split("\n## ", 1)[0]
    assert "1 regressions" in section
    assert re.search(r"\| REGRESSION \| double_well \| mc \| energy_w1 \|", section)
    assert "REGRESSION" in (worse / "report" / "index.html").read_text()
    assert main(args + ["--fail-on-regression"]) == 1
    assert "regression: double_well × mc: energy_w1" in capsys.readouterr().out


def test_baseline_improvement_and_no_change_pass(small, tmp_path):
    folder, _ = small
    better = _copy_with(folder, tmp_path / "better", "mc", "energy_w1", 0.2)
    assert main(["report", str(better), "--baseline", str(folder), "--fail-on-regression"]) == 0
    md = (better / "report" / "report.md").read_text()
    assert re.search(r"\| improvement \| double_well \| mc \| energy_w1 \|", md)
    same = _copy_with(folder, tmp_path / "same", "mc", "energy_w1", 1.0)
    assert main(["report", str(same), "--baseline", str(folder), "--fail-on-regression"]) == 0
    assert "0 regressions, 0 other changes" in (same / "report" / "report.md").read_text()


def test_a_pair_that_fails_everywhere_now_is_a_regression(results):
    _, records = results
    now = [dict(r, status="failed") if (r["sampler"]["label"], r["system"]["label"]) == ("pt", "double_well") else r
           for r in records]
    changes, _ = compare(now, records)
    assert [(c.system, c.sampler, c.verdict) for c in changes] == [("double_well", "pt", "regression")]
    removed, _ = compare([r for r in records if r["sampler"]["label"] != "pa"], records)
    assert {c.verdict for c in removed} == {"removed"}


def test_environment_is_one_line_per_machine_and_names_each_plugin_once():
    """Records that differ only in where their sampler came from are one environment; the
    plugins are listed with their distribution and version (the table used to repeat a row
    per component origin, with the origin not shown)."""
    from boltzbench.reports.build import environment_blocks
    env = {"python": "3.11", "platform": "linux", "packages": {"boltzbench": "0.1.0"}, "cpu_count": 2,
           "torch_threads": 1, "device": "cpu"}
    ours = {"module": "boltzbench.samplers.md", "distribution": "boltzbench", "version": "0.1.0"}
    plugin = {"module": "boltzbench_mtm", "distribution": "boltzbench-mtm", "version": "0.2.0"}
    records = [{"system": {"name": "dw4"}, "sampler": {"name": name},
                "env": {**env, "components": {"system": ours, "sampler": origin}}}
               for name, origin in (("md", ours), ("mtm", plugin), ("mtm", plugin))]
    blocks = environment_blocks(records)
    texts = [getattr(b, "text", "") for b in blocks]
    assert any(t.startswith("Python 3.11 on linux; 2 CPUs") for t in texts), texts
    assert "Plugins: mtm: boltzbench-mtm 0.2.0." in texts


def test_environment_says_which_commit_ran_and_splits_records_of_different_commits():
    """A report of records from two commits (one with uncommitted changes) shows both, so an
    old record mixed into a new run is visible; records without a commit say so."""
    from boltzbench.reports.build import environment_blocks
    env = {"python": "3.11", "platform": "linux", "packages": {}, "cpu_count": 2, "torch_threads": 1,
           "device": "cpu"}
    one = [{"env": {**env, "source": {"commit": "4c7e1df85038c138", "modified": False}}}]
    assert "source commit 4c7e1df." in str(environment_blocks(one)[1])
    mixed = one + [{"env": {**env, "source": {"commit": "831273e0000", "modified": True}}}, {"env": env}]
    text = str(environment_blocks(mixed)[1])
    for expected in ("commit 4c7e1df", "commit 831273e + uncommitted changes", "not recorded"):
        assert expected in text, text


def test_a_failed_cells_table_shows_an_errors_first_line_and_points_to_the_rest():
    """A dead cell's error ends with up to 20 lines of its stderr: the table keeps one line."""
    from boltzbench.reports.build import failed_blocks, first_line

    error = "the cell's process was killed by SIGSEGV\nlast lines the cell's process wrote to stderr:\nFatal Python error"
    assert first_line(error) == "the cell's process was killed by SIGSEGV (more in the record's error)"
    assert first_line("one line only\n  \n") == "one line only"
    record = {"system": {"label": "dw4"}, "sampler": {"label": "md"}, "seed": 0, "status": "failed",
              "error": error, "cell_id": "abc"}
    text = str(failed_blocks([record])[1])
    assert "killed by SIGSEGV" in text and "Fatal Python error" not in text
