"""Local Markov moves for tempered batches of walkers, shared by the tempering samplers.

A batch of B walkers (:class:`Walkers`) carries configurations x (B, dof), their reduced
energies u (B,) *at the target* and one inverse temperature β (B,) per walker, relative to
the target: walker b samples exp(−β_b·u(x)). A :class:`Move` is a Markov kernel that
leaves every walker's tempered density invariant; it updates the batch in place and
charges every evaluation through the system (``system.energy`` /
``system.energy_and_forces``).

* :class:`MetropolisMove`: whole-configuration random-walk Metropolis, x' = x + σ_b·ξ,
  accepted with min(1, exp(−β_b·(u(x') − u(x)))) (Metropolis et al., J. Chem. Phys. 21,
  1087 (1953)); it reuses :func:`boltzbench.samplers.mc.metropolis_step`. Its step size
  σ_b is per walker, so that tempering samplers can tune one per temperature.
* :class:`LangevinMove`: one BAOAB step (Leimkuhler & Matthews, AMRX 2013) at kT_eff = 1/β_b,
  reusing :func:`boltzbench.samplers.md.baoab_step`; velocities are kept in the batch and
  live at the walker's temperature, v ~ N(0, 1/(β_b·m)).
* :class:`ParticleDisplacementMove`: for particle systems, one sweep of N single-particle
  Metropolis displacements (uniform in a cube of half-width σ_b, wrapped into the periodic
  box), each accepted with min(1, exp(−β_b·Δu)), Δu from the system's local energy
  ``energy_change_displace`` (a sweep costs one evaluation per walker). Swap moves live in
  ``swap_mc.py``.
* :class:`Sequence` (each move in turn) and :class:`Mixture` (one move drawn at random
  with fixed weights per call): compositions of invariant kernels are invariant (Tierney,
  Ann. Statist. 22, 1701 (1994)).

Step sizes adapt in warm-up phases only: :func:`tune_step` is a multiplicative update of
log σ towards a target acceptance (the Robbins–Monro form of Andrieu & Thoms, Stat. Comput.
18, 343 (2008)), called by the samplers while they warm up and never afterwards.

Plugging in other moves (for example single-particle displacements or swaps of particle
systems): subclass :class:`Move`, implement ``__call__(walkers, system, generator)`` so
that it leaves exp(−β_b·u) invariant for every walker, update ``walkers.u``, set
``walkers.forces = None`` when positions change without new forces, and count acceptances
with :meth:`Move.record`. A move with a per-walker step-size tensor ``step`` and
``tunable = True`` is tuned by the samplers' warm-up like :class:`MetropolisMove`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from boltzbench.contracts import System
from boltzbench.samplers.mc import metropolis_step
from boltzbench.samplers.md import baoab_step

MOVES = ("mc", "md", "mc+md")


@dataclass
class Walkers:
    """A batch of tempered walkers. ``u`` is at the target; ``forces`` (−∇u at the target,
    valid for the current x) and ``velocities`` are kept only by moves that use them."""

    x: torch.Tensor
    u: torch.Tensor
    beta: torch.Tensor
    forces: torch.Tensor | None = None
    velocities: torch.Tensor | None = None

    @classmethod
    def start(cls, system: System, x: torch.Tensor, beta: torch.Tensor) -> "Walkers":
        """Walkers at ``x`` with inverse temperatures ``beta``; charges B energy evaluations."""
        return cls(x=x, u=system.energy(x), beta=beta.to(x.dtype))

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, index: torch.Tensor) -> "Walkers":
        """The walkers at ``index`` (copies for repeated indices), everything carried along."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Walkers(self.x[index], self.u[index], self.beta[index], pick(self.forces),
                       pick(self.velocities))

    def retemper(self, beta: torch.Tensor) -> None:
        """Move every walker to inverse temperature ``beta``. Velocities, Maxwell-distributed at
        the old β, are rescaled by sqrt(β_old/β_new), which maps N(0, 1/(β_old·m)) onto
        N(0, 1/(β_new·m)) (Sugita & Okamoto, Chem. Phys. Lett. 314, 141 (1999))."""
        beta = beta.to(self.x.dtype)
        if self.velocities is not None:
            self.velocities = self.velocities * torch.sqrt(self.beta / beta)[:, None]
        self.beta = beta


class Move(ABC):
    """A Markov kernel acting on a batch of walkers in place."""

    tunable: ClassVar[bool] = False

    def __init__(self) -> None:
        self.accepted: torch.Tensor | None = None  # (B,) accepted proposals since reset
        self.attempts = 0                           # proposals per walker since reset

    @abstractmethod
    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None: ...

    def record(self, accepted: torch.Tensor) -> None:
        """Count one proposal per walker; ``accepted`` (B,) bool or 0/1."""
        accepted = accepted.to(torch.float64)
        if self.accepted is None or self.accepted.shape != accepted.shape:
            self.accepted, self.attempts = torch.zeros_like(accepted), 0
        self.accepted += accepted
        self.attempts += 1

    def reset_stats(self) -> None:
        for leaf in self.leaves():
            leaf.accepted, leaf.attempts = None, 0

    def leaves(self) -> list["Move"]:
        """The elementary moves this move is made of."""
        return [self]


class SteppedMove(Move):
    """A move with one tunable step size per walker (σ_b), created at first use."""

    tunable = True

    def __init__(self, step: float):
        super().__init__()
        self.initial_step = float(step)
        self.step: torch.Tensor | None = None  # (B,)

    def set_step(self, step: float | torch.Tensor, n: int) -> None:
        """Set the per-walker step sizes (a scalar for all, or a (B,) tensor)."""
        self.step = torch.as_tensor(step, dtype=torch.float64).expand(n).clone()

    def ensure_steps(self, n: int) -> None:
        if self.step is None or self.step.shape[0] != n:
            self.set_step(self.initial_step, n)


class MetropolisMove(SteppedMove):
    """Random-walk Metropolis on the whole configuration, σ per walker, at each walker's β."""

    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None:
        self.ensure_steps(len(walkers))
        step = self.step.to(walkers.x.dtype)[:, None]
        walkers.x, walkers.u, accept = metropolis_step(walkers.x, walkers.u, system, step, generator,
                                                       beta=walkers.beta)
        walkers.forces = None  # positions changed without forces
        self.record(accept)


class LangevinMove(Move):
    """One BAOAB step of underdamped Langevin dynamics at each walker's temperature 1/β."""

    def __init__(self, dt: float, friction: float, mass: float):
        super().__init__()
        self.dt, self.friction, self.mass = dt, friction, mass

    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None:
        if walkers.forces is None:
            walkers.u, walkers.forces = system.energy_and_forces(walkers.x)
        if walkers.velocities is None:
            noise = torch.randn(walkers.x.shape, generator=generator, dtype=walkers.x.dtype)
            walkers.velocities = noise / torch.sqrt(self.mass * walkers.beta)[:, None]
        walkers.x, walkers.velocities, walkers.u, walkers.forces = baoab_step(
            walkers.x, walkers.velocities, walkers.forces, system, self.dt, self.friction, self.mass,
            generator, beta=walkers.beta)
        self.record(torch.ones(len(walkers), dtype=torch.bool))  # unadjusted: every step is taken


class Sequence(Move):
    """Apply each move in turn."""

    def __init__(self, moves: list[Move]):
        super().__init__()
        self.moves = list(moves)

    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None:
        for move in self.moves:
            move(walkers, system, generator)

    def leaves(self) -> list[Move]:
        return [leaf for move in self.moves for leaf in move.leaves()]


class Mixture(Move):
    """Apply one move, drawn with probabilities ∝ ``weights`` (independently of the state),
    to the whole batch."""

    def __init__(self, moves: list[Move], weights: list[float]):
        super().__init__()
        if len(moves) != len(weights) or not moves or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"a mixture needs one non-negative weight per move, got {weights!r}")
        self.moves = list(moves)
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None:
        which = int(torch.multinomial(self.weights, 1, generator=generator))
        self.moves[which](walkers, system, generator)

    def leaves(self) -> list[Move]:
        return [leaf for move in self.moves for leaf in move.leaves()]


def wrap_into_box(positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """Positions mapped into the periodic box [0, L) per axis (unchanged for an open system)."""
    return positions if box is None else positions - box * torch.floor(positions / box)


def displacement_attempt(x: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, system: System,
                         i: torch.Tensor, delta: torch.Tensor, log_uniform: torch.Tensor,
                         box: torch.Tensor | None = None) -> torch.Tensor:
    """One single-particle Metropolis attempt per walker, in place on x (B, dof) and u (B,).

    Particle i[b] moves to x_i + delta[b] (wrapped into ``box``, the system's periodic box or
    None), accepted when log_uniform[b] < −β_b·Δu, i.e. with min(1, exp(−β_b·Δu)); Δu from
    ``system.energy_change_displace`` (a particle system; charged 1/N evaluation per walker).
    The proposal is symmetric, so exp(−β_b·u) is invariant (Metropolis et al. 1953). NaN
    energy changes are never accepted. Returns the (B,) accepted mask.
    """
    b = x.shape[0]
    pos = x.view(b, system.n_particles, system.dim)
    rows = torch.arange(b, device=x.device)
    new = wrap_into_box(pos[rows, i] + delta, box)
    du = system.energy_change_displace(x, i, new).to(u.dtype)
    accept = log_uniform < -beta * du
    pos[rows[accept], i[accept]] = new[accept].to(pos.dtype)
    u += torch.where(accept, du, torch.zeros_like(du))
    return accept


class ParticleDisplacementMove(SteppedMove):
    """One sweep of single-particle Metropolis displacements of a particle system.

    A call makes N sequential attempts per walker (N = ``system.n_particles``, the usual MC
    "sweep"), all walkers at once: a particle drawn uniformly at random is displaced by a
    vector uniform in the cube [−σ_b, σ_b]^d and wrapped into the periodic box, accepted with
    min(1, exp(−β_b·Δu)) (:func:`displacement_attempt`). A sweep costs one energy evaluation
    per walker (N charges of 1/N). σ_b (``step``, per walker) is tunable like
    :class:`MetropolisMove`'s. Needs the local-energy API of
    :class:`boltzbench.systems.particles.ParticleSystem`.
    """

    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None:
        b, n, d = len(walkers), system.n_particles, system.dim
        self.ensure_steps(b)
        x, u, dtype = walkers.x.clone(), walkers.u.clone(), walkers.x.dtype
        index = torch.randint(0, n, (n, b), generator=generator)
        delta = (2 * torch.rand((n, b, d), generator=generator, dtype=dtype) - 1) * self.step.to(dtype)[:, None]
        log_uniform = torch.log(torch.rand((n, b), generator=generator, dtype=u.dtype))
        box = system.box
        for t in range(n):
            self.record(displacement_attempt(x, u, walkers.beta, system, index[t], delta[t], log_uniform[t], box))
        walkers.x, walkers.u, walkers.forces = x, u, None


def make_move(kind: str, *, step: float, dt: float, friction: float, mass: float) -> Move:
    """The local move a sampler parameter names: 'mc', 'md' or 'mc+md' (one of each, in turn)."""
    if kind == "mc":
        return MetropolisMove(step)
    if kind == "md":
        return LangevinMove(dt, friction, mass)
    if kind == "mc+md":
        return Sequence([MetropolisMove(step), LangevinMove(dt, friction, mass)])
    raise ValueError(f"unknown move {kind!r}; valid choices: {', '.join(MOVES)}")


def acceptance(move: Move) -> torch.Tensor | None:
    """Per-walker fraction of accepted proposals since the last reset, over all leaves
    (1 for unadjusted Langevin steps); None before the first move."""
    leaves = [leaf for leaf in move.leaves() if leaf.accepted is not None and leaf.attempts]
    if not leaves:
        return None
    return sum(leaf.accepted for leaf in leaves) / sum(leaf.attempts for leaf in leaves)


def tunable_leaves(move: Move) -> list[Move]:
    return [leaf for leaf in move.leaves() if leaf.tunable]


def group_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of ``values`` (B,) within each group label 0..n_groups−1 (B,)."""
    totals = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, values.to(torch.float64))
    counts = torch.bincount(groups, minlength=n_groups).to(torch.float64)
    return totals / counts.clamp(min=1)


def tune_step(step: torch.Tensor, accepted_fraction: torch.Tensor, target: float,
              rate: float = 1.0, bounds: tuple[float, float] = (1e-6, 1e6)) -> torch.Tensor:
    """log σ ← log σ + rate·(a − a*): larger steps when accepting too often, smaller when not."""
    return (step * torch.exp(rate * (accepted_fraction - target))).clamp(*bounds)


def tune(move: Move, groups: torch.Tensor, n_groups: int, target: float, rate: float = 1.0) -> None:
    """Warm-up only: tune every tunable leaf's step sizes, one per group (for example one per
    temperature), from the acceptance since the last reset; then reset the statistics."""
    for leaf in tunable_leaves(move):
        if leaf.accepted is None or not leaf.attempts or leaf.step is None:
            continue
        fraction = group_mean(leaf.accepted / leaf.attempts, groups, n_groups)
        per_group = group_mean(leaf.step, groups, n_groups)
        leaf.step = tune_step(per_group, fraction, target, rate)[groups]
    move.reset_stats()


def sweep(move: Move, walkers: Walkers, system: System, generator: torch.Generator, n: int = 1) -> None:
    """Apply ``move`` ``n`` times."""
    for _ in range(n):
        move(walkers, system, generator)


def log_mean_exp(values: torch.Tensor) -> float:
    """ln ⟨exp(v)⟩, computed stably."""
    return float(torch.logsumexp(values, 0) - math.log(values.numel()))
