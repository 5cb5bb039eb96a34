"""The conformance kit: checks that a sampler honours the boltzbench contract.

A plugin author calls these from their own tests (emcee-style: one shared statistical
test run against every sampler)::

    from boltzbench.testing import check_sampler
    def test_my_sampler_conforms():
        check_sampler(MySampler(step=0.5))

The kit has two small systems with exact answers (:data:`KIT_SYSTEMS`):

* ``"double_well"``: Noé's double well at kT = 3 (two dimensions, one particle);
* ``"particles"``: :class:`Trimer`, three Kob–Andersen particles (two A, one B) in a periodic
  3×3 square at kT = 0.8, a particle system with the local-energy API
  (``energy_change_displace`` / ``energy_change_swap``, ``species``), so that samplers of
  liquids (``swap_mc``, ``pt``/``pa`` with ``move = "swap"``, plugins) can be checked. Its
  averages come from quadrature (:func:`trimer_quadrature`).

:func:`check_sampler` runs all five checks on the kit system the sampler is meant for; each
is also a function of its own, taking the kit system's name:

* :func:`check_snapshot_contract` — snapshot shapes, dtypes, monotone costs, the budget
  respected, a final snapshot at the end;
* :func:`check_every_evaluation_charged` — every configuration whose energy the sampler
  computed went through ``System.energy``/``energy_and_forces`` (or, for particles, the
  charged local energies) and was charged;
* :func:`check_seed_reproducibility` — same seed, same samples; other seed, other samples;
* :func:`check_double_well_exact` — ⟨u⟩ and the right-well population of the double well
  at kT = 3 (where the barrier is crossed often) within statistical error of quadrature;
* :func:`check_particles_exact` — ⟨u⟩, the mean A–A distance and the mean A–B distance of
  the trimer within statistical error of quadrature. Identity swaps that mix the species
  without the Metropolis test move the two distances towards each other and fail it.

Which system (the rule of :func:`check_sampler`). By default a sampler is checked on the
double well. A sampler that cannot run there *refuses* it: its ``run`` raises
:class:`~boltzbench.contracts.ParameterError` or ``TypeError`` before it has charged any
evaluation (``swap_mc`` and ``move = "swap"`` do, naming the field). A refused double well
is skipped and the sampler is checked on the particle system instead; a sampler that
refuses both fails. ``systems=`` names the kit systems to check explicitly (for example a
generic sampler that should also pass on particles, with parameters suited to them); then
a refusal fails (:class:`SamplerRefused`). Any other exception is a failure, not a refusal.

Each raises ``AssertionError`` with a message saying what is wrong.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch

from boltzbench.contracts import Budget, ParameterError, Sampler, Snapshot, System, cell_generator, param
from boltzbench.systems.double_well import DoubleWell
from boltzbench.systems.particles import (R_MIN_FRACTION, PairTable, ParticleSystem, device_param, kernel_param, lennard_jones,
                                          minimum_image, precision_param)

COST_KEYS = ("energy_evals", "force_evals", "wall_s", "setup", "total_evals", "total_wall_s")
#: The kit's systems, by the names the checks take.
KIT_SYSTEMS = ("double_well", "particles")


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


# ------------------------------------------------------------------ the particle system

TRIMER_BOX = 3.0
TRIMER_CUT = 1.5  # LJ cutoff in units of σ_αβ
#: Kob–Andersen pair parameters (W. Kob & H. C. Andersen, PRE 51, 4626 (1995)), species A, B.
TRIMER_SIGMA = ((1.0, 0.8), (0.8, 0.88))
TRIMER_EPSILON = ((1.0, 1.5), (1.5, 0.5))


@dataclass
class Trimer(ParticleSystem):
    """Particles 0, 1 = A and 2 = B with Kob–Andersen pair parameters (σ_AB = 0.8, ε_AB = 1.5),
    truncated and shifted at 1.5·σ_αβ, in a periodic 3×3 square (minimum image exact: the box
    edge is twice the largest cutoff, 1.5). Small enough for quadrature
    (:func:`trimer_quadrature`); the A–A and A–B distances differ (⟨r_AA⟩ ≈ 1.348,
    ⟨r_AB⟩ ≈ 1.217 at kT = 0.8), so identity swaps that ignore the energy are caught."""

    name: ClassVar[str] = "kit_trimer"
    description: ClassVar[str] = "two A and one B Kob-Andersen particle in a periodic 3x3 square (conformance kit)"
    species_names: ClassVar[tuple[str, ...]] = ("A", "B")
    n_particles: ClassVar[int] = 3  # type: ignore[misc]
    dim: ClassVar[int] = 2  # type: ignore[misc]

    temperature: float = param(0.8, "kT in units of ε_AA")
    precision: str = precision_param()
    device: str = device_param()
    kernel: str = kernel_param()

    @property
    def box_edges(self) -> tuple[float, ...]:
        return (TRIMER_BOX, TRIMER_BOX)

    @functools.cached_property
    def species(self) -> torch.Tensor:
        return torch.tensor([0, 0, 1])

    @functools.cached_property
    def diameters(self) -> torch.Tensor:
        return torch.tensor([TRIMER_SIGMA[0][0], TRIMER_SIGMA[0][0], TRIMER_SIGMA[1][1]], dtype=torch.float64)

    def pair_table(self) -> PairTable:
        s = self.species
        sig = torch.tensor(TRIMER_SIGMA, dtype=torch.float64)[s[:, None], s[None, :]]
        eps = torch.tensor(TRIMER_EPSILON, dtype=torch.float64)[s[:, None], s[None, :]]
        rc2 = (TRIMER_CUT * sig) ** 2
        rc2.fill_diagonal_(0.0)
        return PairTable(lennard_jones, rc2=rc2, r2_min=float(R_MIN_FRACTION * sig.min()) ** 2,
                         params={"c12": 4 * eps * sig ** 12, "c6": 4 * eps * sig ** 6,
                                 "shift": 4 * eps * (TRIMER_CUT ** -12 - TRIMER_CUT ** -6)})

    def _initial_positions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return TRIMER_BOX * torch.rand((n, 3, 2), generator=generator, dtype=torch.float64)


@dataclass
class CountingTrimer(Trimer):
    """The trimer, counting every configuration its private full-energy kernel evaluates
    (:meth:`potential`, behind ``_energy`` and ``_energy_and_forces``). Local energies
    charge themselves."""

    name: ClassVar[str] = "counting_kit_trimer"

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        self.evaluated = 0

    def potential(self, x: torch.Tensor, forces: bool = True, neighbour_list: bool = True):
        self.evaluated += x.shape[0]
        return super().potential(x, forces, neighbour_list)


def _pair_phi(system: ParticleSystem, a: int, b: int, r2: torch.Tensor) -> torch.Tensor:
    """φ_ab(r²) of particles a, b from the system's pair table (cutoff and clamp applied)."""
    t = system.table
    params = {k: v[a, b] if isinstance(v, torch.Tensor) else v for k, v in t.params.items()}
    phi, _ = t.pair(torch.clamp_min(r2, t.r2_min), **params)
    return torch.where(r2 < t.rc2[a, b], phi, torch.zeros_like(phi))


@functools.cache
def trimer_quadrature(temperature: float = 0.8, beta: float = 1.0, n: int = 48) -> dict[str, float]:
    """Averages of the trimer at inverse temperature β relative to kT, by quadrature.

    u is reduced at kT and the density exp(−β·u). Particle 0 sits at the origin (translation
    invariance); the midpoint rule runs over the positions of particles 1 and 2 on an n×n grid
    each (n⁴ configurations). Returns ⟨u⟩, ⟨u²⟩, ⟨r_aa⟩ = ⟨|x_1 − x_0|⟩, ⟨r_ab⟩ = ⟨(|x_2 − x_0| +
    |x_2 − x_1|)/2⟩ (minimum image) and ``log_z`` = ln ∫ exp(−β·u) over the three positions in
    the box. n = 48 agrees with n = 64 to 2e-4 in every average and 1e-5 in log_z (about a second).
    """
    system = Trimer(temperature=temperature)
    box, h = system.box, TRIMER_BOX / n
    g = (torch.arange(n, dtype=torch.float64) + 0.5) * h
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    r_0k = minimum_image(grid, box).norm(dim=-1)                       # |x_k − x_0| for x_0 = 0
    phi01, phi02 = _pair_phi(system, 0, 1, r_0k ** 2), _pair_phi(system, 0, 2, r_0k ** 2)
    sums = dict.fromkeys(("z", "u", "u2", "r_aa", "r_ab"), 0.0)
    for chunk in torch.arange(n * n).split(512):                      # particle 1 on these sites
        r12 = minimum_image(grid[None, :, :] - grid[chunk, None, :], box).norm(dim=-1)
        u = (phi01[chunk, None] + phi02[None, :] + _pair_phi(system, 1, 2, r12 ** 2)) / temperature
        w = torch.exp(-beta * u)
        sums["z"] += float(w.sum())
        sums["u"] += float((w * u).sum())
        sums["u2"] += float((w * u * u).sum())
        sums["r_aa"] += float((w * r_0k[chunk, None]).sum())
        sums["r_ab"] += float((w * 0.5 * (r_0k[None, :] + r12)).sum())
    out = {k: v / sums["z"] for k, v in sums.items() if k != "z"}
    out["log_z"] = math.log(sums["z"]) + 4 * math.log(h) + 2 * math.log(TRIMER_BOX)
    return out


def trimer_observables(positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """r_aa and r_ab of :func:`trimer_quadrature` for trimer positions (..., 6)."""
    box = torch.tensor([TRIMER_BOX, TRIMER_BOX], dtype=torch.float64)
    p = positions.double().reshape(*positions.shape[:-1], 3, 2)

    def dist(a: int, b: int) -> torch.Tensor:
        return minimum_image(p[..., a, :] - p[..., b, :], box).norm(dim=-1)
    return {"r_aa": dist(0, 1), "r_ab": 0.5 * (dist(0, 2) + dist(1, 2))}


def kit_system(name: str, counting: bool = False) -> System:
    """A fresh kit system by name (:data:`KIT_SYSTEMS`), the counting variant if asked."""
    if name == "double_well":
        return CountingDoubleWell() if counting else DoubleWell()
    if name == "particles":
        return CountingTrimer() if counting else Trimer()
    raise ValueError(f"unknown kit system {name!r}; valid choices: {', '.join(KIT_SYSTEMS)}")


# ------------------------------------------------------------------------------ runs


class SamplerRefused(AssertionError):
    """The sampler refused a kit system: its ``run`` raised ParameterError or TypeError before
    charging any evaluation."""


def _run(sampler: Sampler, system: System, budget: Budget, seed: int) -> list[Snapshot]:
    try:
        snapshots = list(copy.deepcopy(sampler).run(system, budget, cell_generator(system, seed)))
    except (ParameterError, TypeError) as err:
        if system.ledger.total_evals == 0:
            raise SamplerRefused(f"{sampler.name}: refused the kit system {system.name!r} "
                                 f"({type(err).__name__}: {err})") from err
        raise
    assert snapshots, f"{sampler.name}: run() yielded no snapshot"
    return snapshots


def check_snapshot_contract(sampler: Sampler, max_evals: float = 20_000, system: str = "double_well") -> None:
    """Shapes, dtypes, costs that grow, the budget respected, a final snapshot at its end."""
    system = kit_system(system)
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
        for field in ("positions", "energies"):
            bad = int((~torch.isfinite(getattr(snap, field))).sum())
            assert bad == 0, (f"{where}: {bad} non-finite {field} (NaN or ±inf): the sampler diverged "
                              f"(a step too large, or a move with no acceptance test?)")
        recomputed = system._energy(snap.positions.reshape(-1, system.dof).to(system.dtype)).reshape(snap.energies.shape)
        assert torch.allclose(recomputed, snap.energies.to(recomputed.dtype), rtol=1e-5, atol=1e-6), \
            f"{where}: energies are not u(positions) at the target temperature"
    final = snapshots[-1].cost["total_evals"]
    assert final >= max_evals, f"{sampler.name}: stopped at cost {final:g} before the budget {max_evals:g}"
    assert final <= 2 * max_evals, f"{sampler.name}: overran the budget {max_evals:g} (cost {final:g})"


def check_every_evaluation_charged(sampler: Sampler, max_evals: float = 20_000, system: str = "double_well") -> None:
    """Every configuration evaluated by the system's kernels was charged to the ledger."""
    system = kit_system(system, counting=True)
    _run(sampler, system, Budget(max_evals=max_evals, n_snapshots=2), seed=0)
    charged = system.ledger.total_evals
    assert system.evaluated <= charged, (
        f"{sampler.name}: {system.evaluated - charged:g} of {system.evaluated} configuration "
        f"evaluations were not charged (call system.energy / energy_and_forces, not _energy)")


def check_seed_reproducibility(sampler: Sampler, max_evals: float = 20_000, system: str = "double_well") -> None:
    """Same seed → identical samples; a different seed → different samples."""
    budget = Budget(max_evals=max_evals, n_snapshots=1)
    first, again, other = (_run(sampler, kit_system(system), budget, seed)[-1] for seed in (11, 11, 12))
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


def check_particles_exact(sampler: Sampler, max_evals: float = 200_000, z: float = 5.0) -> None:
    """⟨u⟩, ⟨r_AA⟩ and ⟨r_AB⟩ of the trimer at kT = 0.8 match quadrature within z standard errors."""
    system = Trimer()
    exact = trimer_quadrature()
    snapshot = _run(sampler, system, Budget(max_evals=max_evals, n_snapshots=1), seed=0)[-1]
    values = {"<u>": (snapshot.energies, exact["u"])}
    for key, v in trimer_observables(snapshot.positions).items():
        values[f"<{key}>"] = (v, exact[key])
    for what, (v, target) in values.items():
        mean, se = _estimates(snapshot, v.double().numpy())
        assert abs(mean - target) <= z * se, (
            f"{sampler.name}: {what} = {mean:.4f} ± {se:.4f}, exact {target:.4f} (kT = 0.8 Kob-Andersen trimer)")


def _check_on(sampler: Sampler, system: str, max_evals: float) -> None:
    check_snapshot_contract(sampler, system=system)
    check_every_evaluation_charged(sampler, system=system)
    check_seed_reproducibility(sampler, system=system)
    if system == "double_well":
        check_double_well_exact(sampler, max_evals=max_evals)
    else:
        check_particles_exact(sampler, max_evals=max_evals)


def check_sampler(sampler: Sampler, max_evals: float = 2_000_000, systems: Sequence[str] | None = None,
                  particle_evals: float = 200_000) -> list[str]:
    """Run every check of the kit against ``sampler``; returns the kit systems it was checked on.

    ``systems`` None: the double well, or the particle system where the sampler refuses the
    double well (the rule in the module docstring); a sampler that refuses both fails.
    Otherwise the kit systems named (:data:`KIT_SYSTEMS`), each of which must be accepted.
    ``max_evals`` is the budget of the double well's exactness check, ``particle_evals`` the
    trimer's.
    """
    assert isinstance(sampler, Sampler), f"{sampler!r} is not a boltzbench Sampler"
    budgets = {"double_well": max_evals, "particles": particle_evals}
    if systems is not None:
        unknown = [name for name in systems if name not in KIT_SYSTEMS]
        if unknown or not systems:
            raise ValueError(f"systems: unknown kit systems {unknown!r}; valid choices: {', '.join(KIT_SYSTEMS)}")
        for name in systems:
            _check_on(sampler, name, budgets[name])
        return list(systems)
    refusals = []
    for name in KIT_SYSTEMS:
        try:
            _check_on(sampler, name, budgets[name])
            return [name]
        except SamplerRefused as refused:
            refusals.append(str(refused))
    raise AssertionError(f"{sampler.name}: refused every kit system: " + "; ".join(refusals))
