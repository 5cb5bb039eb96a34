"""Reference data built by long runs: storage, lookup with provenance, and building.

A reference for a system *with given physical parameters* is two files, ``<key>.npz``
(positions as float32, reduced energies as float64) and ``<key>.json`` (provenance: system,
params of the run, generator sampler and its params, seed, budget, cost, package versions,
sample count, SHA-256 of the arrays). ``key = <system name>-<first 12 hex of sha256(identity)>``,
the identity being the parameters that change the distribution (declared with
``param(..., physical=True)``, the default) plus the class's ``model_id`` where it declares one
(``ternary2d``, whose model changed under its name). Numerical parameters (``precision``,
``device``, ``verlet_skin``, alanine's OpenMM ``platform``) are not part of it: one reference
serves a float32 or a cuda system, or another skin. For a system whose parameters are all
physical the key is the one of the earlier all-parameter keys. References shipped with those were
re-keyed (renamed, contents unchanged); a user reference stored under the old key (sha256 of
all parameters) is still found when it was built at the default numerical settings.

Lookup order: ``$BOLTZBENCH_REFERENCES`` (default ``~/.cache/boltzbench/references``),
then the references shipped in the package (``boltzbench/systems/references/``, small
files for the default parameters). A reference whose recorded physical parameters,
``model_id`` or checksum do not match is refused; a missing one raises
:class:`ReferenceMissing` with the command that builds it.

Building (``boltzbench reference build SYSTEM``) runs the system's ``reference_recipe``
(a registered sampler, its parameters and a budget), discards the first ``burn_in``
fraction of each chain, resamples weighted samples to unweighted ones (systematic
resampling), thins to at most ``n_samples``, evaluates the stored energies with the system at
its default numerical settings (float64 on the CPU, whatever the run used) and writes both
files atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boltzbench.contracts import Budget, Reference, System, cell_generator
from boltzbench.store import to_jsonable, write_json_atomic, write_npz_atomic

PACKAGED = Path(__file__).parent / "references"
MAX_POSITION_BYTES = 4_000_000  # keep shipped references to a few MB


class ReferenceMissing(LookupError):
    """No reference for these parameters; the message says how to build one."""


def user_reference_dir() -> Path:
    return Path(os.environ.get("BOLTZBENCH_REFERENCES", Path.home() / ".cache" / "boltzbench" / "references"))


def params_digest(params: dict[str, Any]) -> str:
    blob = json.dumps(to_jsonable(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def is_physical(field: dataclasses.Field) -> bool:
    """Whether a parameter changes the distribution (``param(..., physical=...)``, default True)."""
    return bool(field.metadata.get("physical", True))


def physical_params(system: System) -> dict[str, Any]:
    """The parameters that change the distribution: all but the numerical ones."""
    return {f.name: getattr(system, f.name) for f in system.parameters() if is_physical(f)}


def reference_identity(system: System) -> dict[str, Any]:
    """What a reference is a reference for: the physical parameters, plus ``model_id`` when
    the system's class declares one (a model that changed under the same name)."""
    model_id = getattr(system, "model_id", None)
    identity = physical_params(system)
    return identity if model_id is None else {**identity, "model_id": model_id}


def reference_key(system: System) -> str:
    """``<name>-<digest of the identity>``: the same for every precision, device and skin."""
    return f"{system.name}-{params_digest(reference_identity(system))}"


#: numerical parameters added after the legacy key was retired (it never hashed them)
NEWER_THAN_LEGACY_KEY = ("kernel",)


def legacy_reference_key(system: System) -> str | None:
    """The earlier key (digest of all parameters) of this system at its default
    numerical settings; None where it equals :func:`reference_key` or the class declares a
    ``model_id`` (its old references are of another model)."""
    if getattr(system, "model_id", None) is not None:
        return None
    params = {f.name: getattr(system, f.name) if is_physical(f) else f.default for f in system.parameters()
              if f.name not in NEWER_THAN_LEGACY_KEY}
    key = f"{system.name}-{params_digest(params)}"
    return None if key == reference_key(system) else key


def canonical_system(system: System) -> System:
    """The same physics at the default numerical settings (float64, cpu, default skin, ...)."""
    numerical = {f.name: f.default for f in system.parameters()
                 if not is_physical(f) and f.default is not dataclasses.MISSING}
    return dataclasses.replace(system, **numerical) if numerical else system


def build_command(system: System) -> str:
    """The command that builds this system's reference (physical parameters off their defaults)."""
    defaults = {f.name: f.default for f in system.parameters()}
    args = " ".join(f"--param {k}={v}" for k, v in physical_params(system).items() if v != defaults.get(k))
    return f"boltzbench reference build {system.name} {args}".strip()


def _matches(provenance: dict[str, Any], system: System) -> bool:
    """The stored reference is for this system's identity (numerical settings may differ)."""
    recorded = provenance.get("params") or {}
    identity = to_jsonable(physical_params(system))
    return (provenance.get("system") == system.name
            and all(k in recorded and recorded[k] == v for k, v in identity.items())
            and provenance.get("model_id") == getattr(system, "model_id", None))


def _checksum(positions: np.ndarray, energies: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(positions).tobytes())
    digest.update(np.ascontiguousarray(energies).tobytes())
    return digest.hexdigest()


def load_reference(system: System, folders: list[Path] | None = None) -> Reference:
    """The stored reference for ``system``'s physical parameters (whatever its precision,
    device or skin), checked, with observables; the current key first, then the legacy one."""
    keys = [k for k in (reference_key(system), legacy_reference_key(system)) if k is not None]
    folders = folders if folders is not None else [user_reference_dir(), PACKAGED]
    for meta_path in [folder / f"{key}.json" for folder in folders for key in keys]:
        data_path = meta_path.with_suffix(".npz")
        if not (meta_path.is_file() and data_path.is_file()):
            continue
        provenance = json.loads(meta_path.read_text())
        if not _matches(provenance, system):
            raise ReferenceMissing(f"{meta_path} was built for {provenance.get('system')} with params "
                                   f"{provenance.get('params')} (model_id {provenance.get('model_id')}), not "
                                   f"{to_jsonable(reference_identity(system))}; "
                                   f"build the right one with: {build_command(system)}")
        with np.load(data_path, allow_pickle=False) as data:
            positions, energies = data["positions"], data["energies"]
        if _checksum(positions, energies) != provenance.get("checksum"):
            raise ReferenceMissing(f"{data_path} does not match the checksum in {meta_path.name}: "
                                   f"rebuild it with: {build_command(system)}")
        x = torch.as_tensor(positions, dtype=system.dtype)
        observables = {k: v.detach().cpu().numpy().reshape(-1) for k, v in system.observables(x).items()}
        return Reference(energies=energies, observables=observables, exact=_sample_estimates(system, x), cdfs={},
                         provenance={**provenance, "path": str(meta_path)})
    others = sorted(p.name for folder in folders if folder.is_dir() for p in folder.glob(f"{system.name}-*.json"))
    found = f" (found only {', '.join(others)}, built for other parameters)" if others else ""
    raise ReferenceMissing(f"no reference for {system.name} with params {to_jsonable(reference_identity(system))}"
                           f"{found}; build it with: {build_command(system)}")


def _sample_estimates(system: System, x: torch.Tensor) -> dict[str, float]:
    """What the reference samples estimate that metrics compare against: ΔF = F_1 − F_0 =
    −ln(P(1)/P(0)) between the system's metastable states (when it has two that both occur).
    Not exact, but the best value available; the report names the reference's generator."""
    if len(system.states) < 2:
        return {}
    from boltzbench.metrics.free_energy import free_energy_difference

    labels = system.state_of(x).cpu().numpy()
    delta_f = free_energy_difference(labels, np.ones(len(labels)))
    return {} if delta_f is None else {"delta_f": delta_f}


def _final_samples(snapshot, burn_in: float, n_samples: int, generator: np.random.Generator):
    """Burn-in, weights resampled away, then thinned to at most n_samples (positions, energies)."""
    positions, energies = snapshot.positions, snapshot.energies
    if snapshot.log_weights is None:
        keep = int(burn_in * positions.shape[0])
        positions, energies = positions[keep:], energies[keep:]
    positions = positions.reshape(-1, positions.shape[-1]).double().numpy()
    energies = energies.reshape(-1).double().numpy()
    if snapshot.log_weights is not None:
        log_w = snapshot.log_weights.reshape(-1).double().numpy()
        w = np.exp(log_w - log_w.max())
        cumulative = np.cumsum(w / w.sum())
        picks = np.searchsorted(cumulative, (generator.random() + np.arange(len(w))) / len(w))
        positions, energies = positions[np.minimum(picks, len(w) - 1)], energies[np.minimum(picks, len(w) - 1)]
    stride = max(1, int(np.ceil(len(energies) / n_samples)))
    return positions[::stride], energies[::stride]


def build_reference(system: System, seed: int = 0, out: Path | None = None,
                    max_evals: float | None = None, progress: bool = True) -> Path:
    """Run ``system.reference_recipe`` and store the result; returns the JSON path."""
    from boltzbench import __version__
    from boltzbench.registry import get_sampler
    from boltzbench.runner import environment

    recipe = dict(system.reference_recipe or {})
    if not recipe:
        raise ReferenceMissing(f"{system.name} has no reference recipe (its reference is exact or built in)")
    sampler = get_sampler(recipe["sampler"], **recipe.get("params", {}))
    budget = Budget(max_evals=max_evals or recipe["max_evals"], n_snapshots=20)
    from tqdm.auto import tqdm

    snapshot = None
    with tqdm(total=1.0, disable=not progress, desc=f"reference {system.name}",
              bar_format="{l_bar}{bar}| {n:.0%} [{elapsed}<{remaining}]") as bar:
        system.ledger.start()
        for snapshot in sampler.run(system, budget, cell_generator(system, seed)):
            bar.update(min(budget.used(system.ledger), 1.0) - bar.n)
        system.ledger.stop()
    if snapshot is None or not torch.isfinite(snapshot.energies).all():
        raise RuntimeError(f"the reference run of {system.name} produced no finite samples")
    n_samples = recipe.get("n_samples", 20_000)
    n_samples = min(n_samples, max(100, MAX_POSITION_BYTES // (4 * system.dof)))
    positions, energies = _final_samples(snapshot, recipe.get("burn_in", 0.2), n_samples,
                                         np.random.default_rng(seed))
    positions = positions.astype(np.float32)
    exact = canonical_system(system)
    energies = exact._energy(torch.as_tensor(positions, dtype=exact.dtype)).double().cpu().numpy()
    folder = Path(out) if out is not None else user_reference_dir()
    key = reference_key(system)
    write_npz_atomic(folder / f"{key}.npz", {"positions": positions, "energies": energies})
    provenance = {
        "system": system.name, "params": system.params(),
        **({"model_id": system.model_id} if getattr(system, "model_id", None) is not None else {}),
        "boltzbench": __version__,
        "generator": {"sampler": recipe["sampler"], "params": sampler.params(), "seed": seed,
                      "budget": budget.as_dict(), "burn_in": recipe.get("burn_in", 0.2)},
        "cost": system.ledger.as_dict(), "diagnostics": snapshot.diagnostics,
        "samples": int(len(energies)), "env": environment(),
        "checksum": _checksum(positions, energies),
    }
    write_json_atomic(folder / f"{key}.json", provenance)
    return folder / f"{key}.json"
