"""The conformance kit: checks that a sampler honours the boltzbench contract.

A plugin author calls these from their own tests (emcee-style: one shared statistical
test run against every sampler)::

    from boltzbench.testing import check_sampler
    def test_my_sampler_conforms():
        check_sampler(MySampler(step=0.5))

:func:`check_sampler` runs all four checks; each is also a function of its own:

* :func:`check_snapshot_contract` — snapshot shapes, dtypes, monotone costs, the budget
  respected, a final snapshot at the end;
* :func:`check_every_evaluation_charged` — every configuration whose energy the sampler
  computed went through ``System.energy``/``energy_and_forces`` and was charged;
* :func:`check_seed_reproducibility` — same seed, same samples; other seed, other samples;
* :func:`check_double_well_exact` — ⟨u⟩ and the right-well population of Noé's double well
  at kT = 3 (where the barrier is crossed often) within statistical error of quadrature.

Each raises ``AssertionError`` with a message saying what is wrong.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from boltzbench.contracts import Budget, Sampler, Snapshot, System
from boltzbench.systems.double_well import DoubleWell

COST_KEYS = ("energy_evals", "force_evals", "wall_s", "setup", "total_evals", "total_wall_s")


@dataclass
class CountingDoubleWell(DoubleWell):
    """The double well, counting every configuration its private kernels evaluate."""

    name: ClassVar[str] = "counting_double_well"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.evaluated = 0

    def _energy(self, x: torch.Tensor) -> torch.Tensor:  # the forces path calls it too
        self.evaluated += x.shape[0]
        return super()._energy(x)


def _run(sampler: Sampler, system: System, budget: Budget, seed: int) -> list[Snapshot]:
    snapshots = list(copy.deepcopy(sampler).run(system, budget, torch.Generator().manual_seed(seed)))
    assert snapshots, f"{sampler.name}: run() yielded no snapshot"
    return snapshots


def check_snapshot_contract(sampler: Sampler, max_evals: float = 20_000) -> None:
    """Shapes, dtypes, costs that grow, the budget respected, a final snapshot at its end."""
    system = DoubleWell()
    budget = Budget(max_evals=max_evals, n_snapshots=4)
    snapshots = _run(sampler, system, budget, seed=0)
    assert len(snapshots) >= 2, f"{sampler.name}: expected a snapshot at each of 4 budget marks, got {len(snapshots)}"
    previous = -1.0
    for k, snap in enumerate(snapshots):
        where = f"{sampler.name}: snapshot {k}"
        assert snap.positions.ndim == 3 and snap.positions.shape[-1] == system.dof, \
            f"{where}: positions must be (T, C, dof={system.dof}), got {tuple(snap.positions.shape)}"
        assert snap.energies.shape == snap.positions.shape[:2], \
            f"{where}: energies must be (T, C) = {tuple(snap.positions.shape[:2])}, got {tuple(snap.energies.shape)}"
        if snap.log_weights is not None:
            assert snap.log_weights.shape == snap.energies.shape, f"{where}: log_weights must be (T, C)"
        assert snap.positions.dtype.is_floating_point and snap.energies.dtype.is_floating_point, \
            f"{where}: positions and energies must be floating point"
        assert all(key in snap.cost for key in COST_KEYS), \
            f"{where}: cost must be ledger.as_dict() with keys {COST_KEYS}, got {sorted(snap.cost)}"
        assert snap.cost["total_evals"] >= previous, f"{where}: cost went down"
        previous = snap.cost["total_evals"]
        recomputed = system._energy(snap.positions.reshape(-1, system.dof)).reshape(snap.energies.shape)
        assert torch.allclose(recomputed, snap.energies.to(recomputed.dtype), rtol=1e-5, atol=1e-6), \
            f"{where}: energies are not u(positions) at the target temperature"
    final = snapshots[-1].cost["total_evals"]
    assert final >= max_evals, f"{sampler.name}: stopped at cost {final:g} before the budget {max_evals:g}"
    assert final <= 2 * max_evals, f"{sampler.name}: overran the budget {max_evals:g} (cost {final:g})"


def check_every_evaluation_charged(sampler: Sampler, max_evals: float = 20_000) -> None:
    """Every configuration evaluated by the system's kernels was charged to the ledger."""
    system = CountingDoubleWell()
    _run(sampler, system, Budget(max_evals=max_evals, n_snapshots=2), seed=0)
    charged = system.ledger.total_evals
    assert system.evaluated <= charged, (
        f"{sampler.name}: {system.evaluated - charged:g} of {system.evaluated} configuration "
        f"evaluations were not charged (call system.energy / energy_and_forces, not _energy)")


def check_seed_reproducibility(sampler: Sampler, max_evals: float = 20_000) -> None:
    """Same seed → identical samples; a different seed → different samples."""
    budget = Budget(max_evals=max_evals, n_snapshots=1)
    first, again, other = (_run(sampler, DoubleWell(), budget, seed)[-1] for seed in (11, 11, 12))
    assert torch.equal(first.positions, again.positions), f"{sampler.name}: same seed gave different samples"
    assert not torch.equal(first.positions, other.positions), f"{sampler.name}: different seeds gave the same samples"


def _estimates(snapshot: Snapshot, values: np.ndarray) -> tuple[float, float]:
    """Estimate and standard error of ⟨values⟩ from a snapshot.

    Weighted samples: self-normalized mean, SE from the Kish ESS. Chains: per-chain means
    (after 20 % burn-in) when there are ≥ 8 chains, otherwise 16 batch means of each chain.
    """
    if snapshot.log_weights is not None:
        log_w = snapshot.log_weights.reshape(-1).double().numpy()
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        v = values.reshape(-1)
        mean = float(np.sum(w * v))
        ess = 1.0 / np.sum(w * w)
        return mean, float(np.sqrt(np.sum(w * (v - mean) ** 2) / ess))
    values = values[int(0.2 * values.shape[0]):]
    if values.shape[1] < 8:
        batches = np.array_split(values, 16, axis=0)
        values = np.stack([b.mean(axis=0) for b in batches])
    blocks = values.mean(axis=0) if values.shape[1] >= 8 else values.reshape(-1)
    return float(blocks.mean()), float(blocks.std(ddof=1) / math.sqrt(blocks.size))


def check_double_well_exact(sampler: Sampler, max_evals: float = 2_000_000, z: float = 5.0) -> None:
    """⟨u⟩ and P(x1 > 0) on the double well at kT = 3 match quadrature within z standard errors."""
    system = DoubleWell(temperature=3.0)
    exact = system.reference().exact
    snapshot = _run(sampler, system, Budget(max_evals=max_evals, n_snapshots=1), seed=0)[-1]
    u = snapshot.energies.double().numpy()
    right = (snapshot.positions[..., 0] > 0).double().numpy()
    for what, values, target in (("<u>", u, exact["mean_energy"]), ("P(x1 > 0)", right, exact["p_right"])):
        mean, se = _estimates(snapshot, values)
        assert abs(mean - target) <= z * se, (
            f"{sampler.name}: {what} = {mean:.4f} ± {se:.4f}, exact {target:.4f} (kT = 3 double well)")


def check_sampler(sampler: Sampler, max_evals: float = 2_000_000) -> None:
    """Run every check of the kit against ``sampler``."""
    assert isinstance(sampler, Sampler), f"{sampler!r} is not a boltzbench Sampler"
    check_snapshot_contract(sampler)
    check_every_evaluation_charged(sampler)
    check_seed_reproducibility(sampler)
    check_double_well_exact(sampler, max_evals=max_evals)
