"""Reference data: build by a recipe run, store with provenance, refuse mismatches."""

import json
from pathlib import Path

import numpy as np
import pytest

from boltzbench import Budget, get_system, make_cell, run_cell
from boltzbench.cli import main
from boltzbench.systems.references import ReferenceMissing, load_reference, reference_key

PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture
def refs(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZBENCH_REFERENCES", str(tmp_path / "refs"))
    monkeypatch.syspath_prepend(PLUGINS)
    return tmp_path / "refs"


@pytest.fixture
def built(refs):
    """A kT = 3 reference built once through the CLI, as a user would."""
    assert main(["reference", "build", "recipe_well:RecipeWell", "--param", "temperature=3", "--no-progress"]) == 0
    return refs


def test_built_reference_has_provenance_and_the_exact_distribution(built):
    system = get_system("recipe_well:RecipeWell", temperature=3.0)
    ref = load_reference(system)
    meta = json.loads((built / f"{reference_key(system)}.json").read_text())
    assert meta["params"]["temperature"] == 3.0 and meta["generator"]["sampler"] == "mc"
    assert meta["cost"]["total_evals"] >= 64 * 20_000 and meta["env"]["packages"]["torch"]
    assert len(ref.energies) == meta["samples"] <= 5_000
    exact = get_system("double_well", temperature=3.0).reference().exact
    # The stored samples are thinned chain states, still correlated, so no i.i.d. error bar
    # applies; the tolerances allow ~5 SE with a τ of ~10 and still catch a run at another
    # temperature (kT = 2 gives <u> lower by ≈ 0.52 and P(right) lower by ≈ 0.095).
    assert abs(ref.energies.mean() - exact["mean_energy"]) < 0.25
    assert abs(np.mean(ref.observables["x1"] > 0) - exact["p_right"]) < 0.05


def test_a_reference_for_other_parameters_is_refused_with_the_build_command(built):
    with pytest.raises(ReferenceMissing) as info:
        get_system("recipe_well:RecipeWell", temperature=2.0).reference()
    message = str(info.value)
    assert "built for other parameters" in message
    assert "boltzbench reference build recipe_well --param temperature=2.0" in message


def test_tampered_reference_files_are_refused(built):
    system = get_system("recipe_well:RecipeWell", temperature=3.0)
    meta_path = built / f"{reference_key(system)}.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "checksum": "0" * 64}))
    with pytest.raises(ReferenceMissing, match="checksum"):
        load_reference(system)
    meta_path.write_text(json.dumps({**meta, "params": {**meta["params"], "temperature": 9.0}}))
    with pytest.raises(ReferenceMissing, match="was built for"):
        load_reference(system)


def test_a_cell_without_a_reference_runs_and_says_so(refs):
    cell = make_cell("recipe_well:RecipeWell", "mc", budget=Budget(max_evals=16 * 200, n_snapshots=2),
                     sampler_params={"n_chains": 16})
    record = run_cell(cell).record
    assert record["status"] == "ok"
    assert "boltzbench reference build recipe_well" in record["reference"]["missing"]
    assert record["final"]["metrics"]["energy_w1"] is None


def test_reference_cli_errors(refs, capsys):
    assert main(["reference", "build", "nope"]) == 2
    assert "SYSTEM: unknown system 'nope'" in capsys.readouterr().err
    assert main(["reference", "build", "double_well", "--param", "temperature=-1"]) == 2
    assert "--param temperature: must be > 0" in capsys.readouterr().err
    assert main(["reference", "build", "double_well"]) == 2  # exact by quadrature: nothing to build
    assert main(["reference", "show", "double_well"]) == 0
    assert '"delta_f"' in capsys.readouterr().out


def test_sample_references_carry_the_free_energy_of_their_states():
    """A stored reference of a system with two states gives ΔF = −ln(P(1)/P(0)) from its
    samples, which delta_f_error then compares against; none when a state never occurs."""
    import torch

    from boltzbench.systems.references import _sample_estimates

    system = get_system("double_well")
    three_left_one_right = torch.tensor([[-1.7, 0.0], [-1.8, 0.2], [-1.6, -0.1], [1.7, 0.0]], dtype=system.dtype)
    assert _sample_estimates(system, three_left_one_right)["delta_f"] == pytest.approx(np.log(3.0), abs=1e-12)
    assert _sample_estimates(system, three_left_one_right[:3]) == {}
    assert _sample_estimates(get_system("dw4"), torch.zeros(2, 8, dtype=torch.float64)) == {}


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "systems" / "references"
SHIPPED = sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))


def shipped_system(key: str):
    """The system a shipped reference was built for: its recorded parameters that differ
    from the defaults (JSON lists back to tuples)."""
    meta = json.loads((SHIPPED_DIR / f"{key}.json").read_text())
    defaults = get_system(meta["system"]).params()
    changed = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()
               if json.loads(json.dumps(defaults.get(k))) != v}
    return get_system(meta["system"], **changed)


@pytest.mark.parametrize("key", SHIPPED)
def test_shipped_references_match_their_systems(key, monkeypatch, tmp_path):
    """Every reference in the package loads for the parameters it was built for (checksum
    and params checked), its stored energies are the system's energies of its positions,
    and its provenance names a real run that kept its budget."""
    import torch

    monkeypatch.setenv("BOLTZBENCH_REFERENCES", str(tmp_path))  # only the package
    system = shipped_system(key)
    ref = system.reference()
    meta = ref.provenance
    assert Path(meta["path"]).stem == key
    assert meta["system"] == system.name and meta["samples"] == len(ref.energies) >= 1000
    assert meta["cost"]["total_evals"] <= meta["generator"]["budget"]["max_evals"] * 1.01
    picks = np.random.default_rng(0).choice(len(ref.energies), 16, replace=False)
    with np.load(Path(meta["path"]).with_suffix(".npz")) as data:
        x = torch.as_tensor(data["positions"][picks], dtype=system.dtype)
    np.testing.assert_allclose(system.energy(x).double().numpy(), ref.energies[picks], rtol=1e-9, atol=1e-9)
    assert np.isfinite(ref.energies).all() and np.std(ref.energies) > 0


# ------------------------------------------- a reference's identity: the physical parameters

NUMERICAL = {  # every built-in system's parameters that do not change the distribution
    "double_well": set(), "harmonic": set(), "alanine_dipeptide": {"platform"},
    "dw4": {"precision", "device", "kernel"}, "lj13": {"precision", "device", "kernel"},
    **{name: {"verlet_skin", "precision", "device", "kernel"} for name in ("ka3d", "ka2d", "ternary2d", "soft_spheres")},
}
MD_RECIPE = {"sampler": "md", "params": {"n_chains": 4, "thin": 1, "dt": 0.002}, "max_evals": 2000,
             "n_samples": 200, "burn_in": 0.2}


def test_every_system_declares_which_of_its_parameters_are_numerical():
    from boltzbench.registry import BUILTIN
    from boltzbench.systems.references import is_physical

    assert set(NUMERICAL) == set(BUILTIN["systems"])
    for name, numerical in NUMERICAL.items():
        assert {f.name for f in get_system(name).parameters() if not is_physical(f)} == numerical, name


def test_the_key_ignores_precision_device_and_skin_but_not_the_physics(monkeypatch):
    import torch

    from boltzbench.systems.references import params_digest

    key = reference_key(get_system("ternary2d"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # a cuda system, built but never run
    for numerical in ({"precision": "float32"}, {"device": "cuda"}, {"device": "cuda:1", "precision": "float32"},
                      {"verlet_skin": 0.0}, {"verlet_skin": 0.7}):
        assert reference_key(get_system("ternary2d", **numerical)) == key, numerical
    physical = [{"temperature": 0.31}, {"n_particles": 44}, {"density": 1.2}, {"composition": [0.5, 0.25, 0.25]}]
    assert len({key} | {reference_key(get_system("ternary2d", **p)) for p in physical}) == 1 + len(physical)
    assert reference_key(get_system("alanine_dipeptide", platform="CPU")) == \
        reference_key(get_system("alanine_dipeptide"))
    # all parameters physical: the digest of all of them, as before issue 14
    dw = get_system("double_well", temperature=2.0)
    assert reference_key(dw) == f"double_well-{params_digest(dw.params())}"


@pytest.fixture
def ternary_ref(refs, monkeypatch):
    """A small ternary2d reference built (by short MD) in float32 with another skin."""
    from boltzbench.systems.liquids import Ternary2D
    from boltzbench.systems.references import build_reference

    monkeypatch.setattr(Ternary2D, "reference_recipe", MD_RECIPE)
    return build_reference(get_system("ternary2d", precision="float32", verlet_skin=0.5), out=refs, progress=False)


def test_one_reference_serves_every_precision_and_skin_and_refuses_other_physics(ternary_ref):
    import torch

    meta = json.loads(ternary_ref.read_text())
    assert meta["params"]["precision"] == "float32" and meta["params"]["verlet_skin"] == 0.5
    assert meta["model_id"] == "JBB-KA2-2D"
    for numerical in ({}, {"precision": "float32"}, {"verlet_skin": 0.0}, {"verlet_skin": 0.5, "precision": "float32"}):
        ref = get_system("ternary2d", **numerical).reference()
        assert ref.provenance["path"] == str(ternary_ref) and len(ref.energies) == meta["samples"]
    # the stored energies are float64 ones of the stored positions, whatever precision the run used
    system = get_system("ternary2d")
    with np.load(ternary_ref.with_suffix(".npz")) as data:
        x = torch.as_tensor(data["positions"][:8], dtype=torch.float64)
    np.testing.assert_allclose(system.energy(x).numpy(), ref.energies[:8], rtol=1e-12)
    for physical in ({"temperature": 0.31}, {"n_particles": 44}, {"density": 1.2}):
        with pytest.raises(ReferenceMissing, match="built for other parameters"):
            get_system("ternary2d", **physical).reference()


def test_a_reference_without_the_model_id_is_refused(ternary_ref):
    """The stand-in that carried the name ternary2d before issue 14 had no model_id: a file of
    it under the new key (same physical parameters) is not taken for the published model."""
    meta = json.loads(ternary_ref.read_text())
    ternary_ref.write_text(json.dumps({k: v for k, v in meta.items() if k != "model_id"}))
    with pytest.raises(ReferenceMissing, match="was built for"):
        get_system("ternary2d").reference()


def test_run_does_not_rebuild_a_reference_it_has_for_other_numerics(ternary_ref, tmp_path, monkeypatch):
    import boltzbench.systems.references as references
    from boltzbench.matrix import parse_matrix
    from boltzbench.runner import build_missing_references

    monkeypatch.setattr(references, "build_reference", lambda *a, **k: pytest.fail("rebuilt a reference"))
    matrix = parse_matrix({"seeds": [0], "budget": {"max_evals": 100}, "samplers": [{"name": "mc"}],
                           "systems": [{"name": "ternary2d", "params": {"precision": "float32", "verlet_skin": 0.0}}]})
    assert build_missing_references(matrix, tmp_path / "out", progress=False, log=print) == []


def test_a_reference_stored_under_the_old_key_is_still_found(tmp_path):
    """Before issue 14 the key hashed every parameter; a reference stored so (at the default
    numerical settings) still loads, for any precision."""
    import shutil

    from boltzbench.systems.references import PACKAGED, legacy_reference_key

    system = get_system("dw4")
    old = legacy_reference_key(system)
    assert old == "dw4-66bc7ce5f0fe"                       # the shipped file's name until issue 14
    for suffix in (".json", ".npz"):
        shutil.copy(PACKAGED / f"{reference_key(system)}{suffix}", tmp_path / f"{old}{suffix}")
    for numerical in ({}, {"precision": "float32"}):
        ref = load_reference(get_system("dw4", **numerical), folders=[tmp_path])
        assert ref.provenance["path"] == str(tmp_path / f"{old}.json")
    assert legacy_reference_key(get_system("ternary2d")) is None      # the old name held another model
    assert legacy_reference_key(get_system("double_well")) is None    # same key as before


# ----------------------------------------- the glass matrix's ladder: shipped swap-MC references

LADDER = (0.32, 0.26)  # benchmarks/matrices/glass.toml (T = 0.2 not converged, not shipped)


def test_the_ternary_ladder_references_are_shipped_swap_mc_runs_and_plausible(monkeypatch, tmp_path):
    """The glass ladder's ternary2d references load from the package alone, come from swap
    MC at their own temperature, and are physically ordered: U/N falls as T falls, the heat
    capacity per particle Var(βU)/N is of order one (the potential part of a 2D harmonic
    solid gives d/2 = 1; a run stuck near one configuration at another temperature would not)."""
    monkeypatch.setenv("BOLTZBENCH_REFERENCES", str(tmp_path))  # only the package
    u, heat = [], []
    for temperature in LADDER:
        system = get_system("ternary2d", temperature=temperature)
        ref = system.reference()
        meta = ref.provenance
        assert meta["generator"]["sampler"] == "swap_mc" and meta["params"]["temperature"] == temperature
        assert meta["diagnostics"]["acceptance_swap"] > 0
        u.append(ref.energies.mean() * temperature / system.n_particles)
        heat.append(ref.energies.var() / system.n_particles)
    assert u == sorted(u, reverse=True) and len(set(u)) == len(u)
    assert all(0.3 < c < 3.0 for c in heat)


@pytest.mark.slow
def test_an_independent_swap_mc_run_agrees_with_the_shipped_reference_at_t_0_26():
    """At the coldest temperature of the ladder, a fresh swap-MC run from other random starts
    (another seed, 8 chains × 6·10⁴ sweeps, first half discarded) finds the shipped reference's
    ⟨U⟩/N within 4 combined standard errors (errors over independent chains; the reference's
    from its 8 chains, benchmarks/reference_convergence.run_statistics). ~1 min."""
    import math

    import torch

    from boltzbench.benchmarks.reference_convergence import run_statistics
    from boltzbench.registry import get_sampler

    system = get_system("ternary2d", temperature=0.26)
    shipped = run_statistics(system, load_reference(system, folders=[SHIPPED_DIR]))
    sampler = get_sampler("swap_mc", n_chains=8, thin=10)
    system.ledger.start()
    for snapshot in sampler.run(system, Budget(max_evals=5e5, n_snapshots=1), torch.Generator().manual_seed(12345)):
        pass
    system.ledger.stop()
    e = snapshot.energies.double().numpy()
    u = e[e.shape[0] // 2:] * 0.26 / system.n_particles               # (frames, chains)
    mean, se = u.mean(), u.mean(axis=0).std(ddof=1) / math.sqrt(u.shape[1])
    assert abs(mean - shipped["u"]) < 4 * math.hypot(se, shipped["u_se"])
