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
  ``energy_change_displace`` (a sweep costs one evaluation per walker).
* :class:`SwapMove`: for particle systems, one sweep of swap Monte Carlo: N attempted moves,
  each with probability ``p_swap`` an exchange of the identities of two particles (restricted
  to the species pairs ``swap_pairs`` if given), otherwise a single-particle displacement,
  accepted with min(1, exp(−β_b·Δu)) at each walker's own β (Grigera & Parisi, PRE 63,
  045102(R) (2001); Ninarello, Berthier & Coslovich, PRX 7, 021039 (2017)). It is the move of
  the ``swap_mc`` sampler and the ``swap`` move of ``pt`` and ``pa``; its conventions and its
  compiled (numba) backend are described in the section "swap moves" below.
* :class:`Sequence` (each move in turn) and :class:`Mixture` (one move drawn at random
  with fixed weights per call): compositions of invariant kernels are invariant (Tierney,
  Ann. Statist. 22, 1701 (1994)).

Step sizes adapt in warm-up phases only: :func:`tune_step` is a multiplicative update of
log σ towards a target acceptance (the Robbins–Monro form of Andrieu & Thoms, Stat. Comput.
18, 343 (2008)), called by the samplers while they warm up and never afterwards.

Plugging in other moves: subclass :class:`Move`, implement ``__call__(walkers, system,
generator)`` so that it leaves exp(−β_b·u) invariant for every walker, update ``walkers.u``, set
``walkers.forces = None`` when positions change without new forces, and count acceptances
with :meth:`Move.record`. A move with a per-walker step-size tensor ``step`` and
``tunable = True`` is tuned by the samplers' warm-up like :class:`MetropolisMove`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from boltzbench.contracts import ParameterError, System
from boltzbench.samplers.mc import metropolis_step
from boltzbench.samplers.md import baoab_step
from boltzbench.systems.compiled_pairs import KIND_DW, KIND_LJ, KIND_SOFT, PairArrays, pair_arrays

try:  # numba comes with openmmtools; without it the swap move's torch backend runs
    import numba

    # reassociation lets the loops over partners vectorize; no nnan/ninf: r² = ∞ marks
    # excluded partners and NaN energy changes must stay rejected
    _jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "arcp", "nsz"})
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    def _jit(f):
        return f
    HAVE_NUMBA = False

MOVES = ("mc", "md", "mc+md", "swap")


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
        return cls(x=x, u=system.energy(x), beta=beta.to(dtype=x.dtype, device=x.device))

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
        beta = beta.to(dtype=self.x.dtype, device=self.x.device)
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
        step = self.step.to(dtype=walkers.x.dtype, device=walkers.x.device)[:, None]  # steps live on the host
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
            noise = torch.randn(walkers.x.shape, generator=generator, dtype=walkers.x.dtype, device=walkers.x.device)
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
        which = int(torch.multinomial(self.weights.to(generator.device), 1, generator=generator))
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
        device = x.device
        index = torch.randint(0, n, (n, b), generator=generator, device=device)
        delta = ((2 * torch.rand((n, b, d), generator=generator, dtype=dtype, device=device) - 1)
                 * self.step.to(dtype=dtype, device=device)[:, None])
        log_uniform = torch.log(torch.rand((n, b), generator=generator, dtype=u.dtype, device=device))
        box = system.box
        for t in range(n):
            self.record(displacement_attempt(x, u, walkers.beta, system, index[t], delta[t], log_uniform[t], box))
        walkers.x, walkers.u, walkers.forces = x, u, None


# =========================================================================== swap moves
#
# Swap Monte Carlo (T. S. Grigera & G. Parisi, Phys. Rev. E 63, 045102(R) (2001);
# A. Ninarello, L. Berthier & D. Coslovich, Phys. Rev. X 7, 021039 (2017)). Every attempted
# move is, with probability p_swap, an exchange of the identities (species or diameters) of
# two particles i ≠ j drawn uniformly at random, and otherwise a displacement of one particle
# drawn uniformly at random by a vector uniform in [−δ_b, δ_b]^d, wrapped into the periodic
# box. Both proposals are symmetric and are accepted with min(1, exp(−β_b·Δu)) at each
# walker's own β, so every walker's exp(−β_b·u) is invariant; the choice between them is
# state-independent, and a mixture of invariant kernels is invariant (Tierney 1994). A sweep
# is N attempted moves per walker, sequential within a walker, all walkers batched.
#
# Conventions:
#
# * Identities stay attached to particle indices (the system's species/diameters are fixed),
#   so an accepted swap exchanges the *positions* of i and j; system.energy(x) of every
#   configuration is its energy. Δu comes from the system's local-energy API:
#   energy_change_displace (charged 1/N evaluation per walker) and energy_change_swap (2/N).
# * A proposed swap that is *skipped* — of two identical particles (same species and
#   diameter), or of a pair of species that ``swap_pairs`` does not name — is not attempted,
#   not charged, and counted in SWAPS_SKIPPED. Skipping is the identity kernel, and whether a
#   pair is skipped is symmetric in i, j, so the chain stays exact; the pair is not redrawn.
#   With KA 80:20 about 2/3 of the proposed pairs are identical, with polydisperse systems none.
# * All random numbers of a sweep are drawn up front from the torch generator (draw_sweep),
#   so the two backends consume the same stream and, for the same seed, follow the same
#   trajectory (up to rounding in Δu).
#
# Backends. ``torch`` calls the system's local-energy API, one vectorized call per attempt
# (latency-bound: tens of µs per attempt). ``numba`` runs a whole sweep of all walkers in one
# compiled loop (_sweep_kernel) with the system's pair table — the kernels of
# systems/particles.py: truncated Lennard-Jones, smoothed Lennard-Jones, the
# Ninarello–Berthier–Coslovich soft sphere and the DW-4 double well, r² clamped at r²_min —
# and charges the ledger exactly as the local-energy API would; measured 50-170× faster than
# the torch backend (benchmarks/mc_sweep.py). ``auto`` uses numba when it is installed, the
# system lives on the CPU and its pair potential has a compiled twin without a one-body term.

SWAP_BACKENDS = ("auto", "numba", "torch")
#: Columns of :attr:`SwapMove.counts`, the per-walker move counts.
DISP_ATTEMPTS, DISP_ACCEPTED, SWAP_ATTEMPTS, SWAP_ACCEPTED, SWAPS_SKIPPED = range(5)


def check_swap_system(system: System, p_swap: float, who: str = "the swap move") -> None:
    """Raise :class:`ParameterError` unless ``system`` has the local-energy API of a particle
    system (field ``system``), and several species or diameters when swaps are requested
    (``p_swap`` > 0, field ``p_swap``). ``who`` names the sampler in the message."""
    if not all(hasattr(system, a) for a in ("energy_change_displace", "energy_change_swap", "swappable")):
        raise ParameterError("system", f"{who} needs a particle system with local energies "
                                       f"(energy_change_displace / energy_change_swap); {system.name!r} has none")
    if p_swap > 0 and not system.swappable:
        raise ParameterError("p_swap", f"system {system.name!r} has a single species and no polydispersity: swap "
                                       f"moves need several species or polydisperse diameters; use p_swap = 0 "
                                       f"(displacements only) for this system")


def identical_pairs(system: System) -> torch.Tensor:
    """(N, N) bool: particles i, j of the same species and the same diameter."""
    s, d = system.species.cpu(), system.diameters.cpu()
    return (s[:, None] == s[None, :]) & (d[:, None] == d[None, :])


def check_swap_pairs(value: object) -> list[str] | None:
    """The ``swap_pairs`` parameter of a sampler, normalized: None (every pair of species may
    swap) or a non-empty list of species-pair names such as ``["AC", "BC"]``. The names are
    checked against a system's species when it runs (:func:`skipped_pairs`)."""
    if value is None:
        return None
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value)):
        raise ParameterError("swap_pairs", f"must be None (every pair of species may swap) or a non-empty list of "
                                           f"species-pair names such as ['AC', 'BC'], got {value!r}")
    return list(value)


def swap_pair_names(system: System) -> dict[str, tuple[int, int]]:
    """The species pairs whose particles can swap in ``system``, by name: species a ≤ c named
    ``species_names[a] + species_names[c]`` ('AC'), for every pair of species with two
    particles i ≠ j that differ (in species or diameter)."""
    names, s = system.species_names, system.species.cpu()
    differ = ~identical_pairs(system)
    differ.fill_diagonal_(False)
    out = {}
    for a in range(len(names)):
        for c in range(a, len(names)):
            if bool((differ & (s[:, None] == a) & (s[None, :] == c)).any()):
                out[names[a] + names[c]] = (a, c)
    return out


def skipped_pairs(system: System, swap_pairs: list[str] | None = None) -> torch.Tensor:
    """(N, N) bool: the proposed swaps of particles i, j that are skipped — identical particles
    and, when ``swap_pairs`` names the species pairs that may swap ('AC' or 'CA' for species
    A and C), every other pair. Raises :class:`ParameterError` (field ``swap_pairs``) for a
    name that is no swappable pair of the system's species, listing the valid choices."""
    skip = identical_pairs(system)
    if swap_pairs is None:
        return skip
    names = system.species_names
    if len(names) < 2:
        raise ParameterError("swap_pairs", f"system {system.name!r} has a single species ({names[0]!r}), so its "
                                           f"swaps exchange diameters; leave swap_pairs unset (every pair)")
    valid = swap_pair_names(system)
    lookup = {**valid, **{names[c] + names[a]: (a, c) for a, c in valid.values()}}
    allowed = torch.zeros(len(names), len(names), dtype=torch.bool)
    for name in swap_pairs:
        if name not in lookup:
            raise ParameterError("swap_pairs", f"{name!r} is not a pair of species of {system.name!r} (species "
                                               f"{', '.join(names)}) whose particles can swap; valid choices: "
                                               f"{', '.join(valid)}")
        a, c = lookup[name]
        allowed[a, c] = allowed[c, a] = True
    s = system.species.cpu()
    return skip | ~allowed[s[:, None], s[None, :]]


# --------------------------------------------------------------------------- randoms


@dataclass
class SweepRandoms:
    """Random numbers of one sweep of B walkers, A = N attempts each, all float64 on the CPU:
    ``swap`` (A, B) bool, ``i``/``j`` (A, B) long with j ≠ i, ``delta`` (A, B, d) uniform in
    [−δ_b, δ_b]^d, ``log_uniform`` (A, B)."""

    swap: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    delta: torch.Tensor
    log_uniform: torch.Tensor


def draw_sweep(n_particles: int, dim: int, step: torch.Tensor, p_swap: float,
               generator: torch.Generator) -> SweepRandoms:
    """All random numbers of one sweep (N attempts) of B = len(step) walkers, in a fixed order."""
    a, b = n_particles, step.shape[0]
    f64 = torch.float64
    device = generator.device  # the system's device (the runner's generator lives there)
    swap = torch.rand((a, b), generator=generator, dtype=f64, device=device) < p_swap
    i = torch.randint(0, n_particles, (a, b), generator=generator, device=device)
    j = torch.randint(0, n_particles - 1, (a, b), generator=generator, device=device)
    j = j + (j >= i).long()                      # uniform over the N − 1 particles ≠ i
    delta = ((2 * torch.rand((a, b, dim), generator=generator, dtype=f64, device=device) - 1)
             * step.to(dtype=f64, device=device)[:, None])
    log_uniform = torch.log(torch.rand((a, b), generator=generator, dtype=f64, device=device))
    return SweepRandoms(swap, i, j, delta, log_uniform)


# --------------------------------------------------------------------------- torch backend


def swap_attempt(x: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, system: System,
                 i: torch.Tensor, j: torch.Tensor, log_uniform: torch.Tensor) -> torch.Tensor:
    """One identity-swap attempt per walker, in place on x (B, dof) and u (B,): accepted
    (log_uniform < −β_b·Δu) swaps exchange the positions of i[b] and j[b]. Δu from
    ``system.energy_change_swap`` (charged 2/N per walker). Returns the accepted mask."""
    b = x.shape[0]
    pos = x.view(b, system.n_particles, system.dim)
    du = system.energy_change_swap(x, i, j).to(u.dtype)
    accept = log_uniform < -beta * du
    rows = torch.arange(b, device=x.device)[accept]
    ia, ja = i[accept], j[accept]
    pi, pj = pos[rows, ia].clone(), pos[rows, ja].clone()
    pos[rows, ia], pos[rows, ja] = pj, pi
    u += torch.where(accept, du, torch.zeros_like(du))
    return accept


def _on_subset(mask: torch.Tensor, attempt, x, u, beta, *per_walker) -> torch.Tensor:
    """Run ``attempt(x, u, beta, *per_walker)`` on the walkers in ``mask`` only (so that only
    they are charged); returns the accepted mask over all walkers."""
    if bool(mask.all()):
        return attempt(x, u, beta, *per_walker)
    idx = mask.nonzero()[:, 0]
    xs, us = x[idx], u[idx]
    accepted = attempt(xs, us, beta[idx], *(t[idx] for t in per_walker))
    x[idx], u[idx] = xs, us
    out = torch.zeros_like(mask)
    out[idx] = accepted
    return out


def sweep_torch(x: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, system: System,
                r: SweepRandoms, skip: torch.Tensor) -> torch.Tensor:
    """One sweep through the system's local-energy API, in place on x (B, dof) and u (B,) (on
    the system's device); ``r`` and ``skip`` (N, N, the pairs whose swaps are skipped:
    :func:`skipped_pairs`) live on the CPU. Returns the (B, 5) move counts (columns
    DISP_ATTEMPTS … SWAPS_SKIPPED), on the CPU."""
    device, box = x.device, system.box
    counts = torch.zeros((x.shape[0], 5), dtype=torch.float64)
    for t in range(r.i.shape[0]):
        i, j, swap = r.i[t], r.j[t], r.swap[t]
        skipped = swap & skip[i, j]
        real_swap = swap & ~skipped
        displace = ~swap
        counts[:, DISP_ATTEMPTS] += displace
        counts[:, SWAP_ATTEMPTS] += real_swap
        counts[:, SWAPS_SKIPPED] += skipped
        if bool(displace.any()):
            def attempt(xs, us, bs, i_, d_, l_):
                return displacement_attempt(xs, us, bs, system, i_, d_, l_, box)
            acc = _on_subset(displace.to(device), attempt, x, u, beta, i.to(device),
                             r.delta[t].to(device=device, dtype=x.dtype), r.log_uniform[t].to(device))
            counts[:, DISP_ACCEPTED] += acc.cpu()
        if bool(real_swap.any()):
            def attempt(xs, us, bs, i_, j_, l_):
                return swap_attempt(xs, us, bs, system, i_, j_, l_)
            acc = _on_subset(real_swap.to(device), attempt, x, u, beta, i.to(device), j.to(device),
                             r.log_uniform[t].to(device))
            counts[:, SWAP_ACCEPTED] += acc.cpu()
    return counts


# --------------------------------------------------------------------------- numba backend

@dataclass
class CompiledTable(PairArrays):
    """A system's :class:`~boltzbench.systems.compiled_pairs.PairArrays` for
    :func:`_sweep_kernel`, plus ``skip`` (N, N, the pairs whose swaps are skipped) and
    ``inv_t`` = 1/kT."""

    skip: np.ndarray = None
    inv_t: float = 1.0


def compile_table(system: System, skip: torch.Tensor | None = None) -> CompiledTable | None:
    """The system's pair table for the compiled sweep, or None when it has no compiled twin
    (another pair potential, a one-body term, a non-CPU device). ``skip``: the pairs whose
    swaps are skipped (default: identical particles)."""
    from boltzbench.systems.particles import ParticleSystem

    if not isinstance(system, ParticleSystem) or system.torch_device.type != "cpu" \
            or type(system)._external_change is not ParticleSystem._external_change:
        return None
    arrays = pair_arrays(system)
    if arrays is None:
        return None
    skip = identical_pairs(system) if skip is None else skip
    return CompiledTable(**vars(arrays), skip=skip.cpu().numpy().copy(), inv_t=1.0 / float(system.temperature))


@_jit
def _distances(xs, point, out, box, inv_box, periodic):
    """out[k] = |point − x_k|² (minimum image when periodic) for positions xs (d, N), stored
    coordinate-major so that the loop over k vectorizes; rint rounds half to even like torch.round."""
    d, n = xs.shape
    for k in range(n):
        out[k] = 0.0
    for ax in range(d):
        p, edge, inv = point[ax], box[ax], inv_box[ax]
        for k in range(n):
            dr = p - xs[ax, k]
            if periodic:
                dr -= edge * np.rint(dr * inv)
            out[k] += dr * dr


@_jit
def _row_energy(kind, r2, a, p0, p1, p2, consts, rc2, r2_min):
    """Σ_k φ_ak(r2[k]) over the k with r2[k] < rc2[a, k], r² clamped at r²_min: the expressions
    of lennard_jones / soft_sphere / double_well / smooth_lennard_jones in
    systems/particles.py, branch-free per k."""
    e = 0.0
    if kind == KIND_LJ:
        for k in range(r2.shape[0]):
            inv2 = 1.0 / max(r2[k], r2_min)
            inv6 = inv2 * inv2 * inv2
            v = (p0[a, k] * inv6 - p1[a, k]) * inv6 - p2[a, k]
            e += v if r2[k] < rc2[a, k] else 0.0
    elif kind == KIND_SOFT:
        c0, c2, c4 = consts[0], consts[1], consts[2]
        for k in range(r2.shape[0]):
            y = max(r2[k], r2_min) / p0[a, k]
            q3 = 1.0 / (y * y * y)
            v = q3 * q3 + c0 + (c2 + c4 * y) * y
            e += v if r2[k] < rc2[a, k] else 0.0
    elif kind == KIND_DW:
        c1, c2, c4, d0 = consts[0], consts[1], consts[2], consts[3]
        for k in range(r2.shape[0]):
            s = math.sqrt(max(r2[k], r2_min)) - d0
            v = (c1 + (c2 + c4 * s * s) * s) * s
            e += v if r2[k] < rc2[a, k] else 0.0
    else:
        c0, c2, c4 = consts[0], consts[1], consts[2]
        for k in range(r2.shape[0]):
            y = max(r2[k], r2_min) / p0[a, k]
            q3 = 1.0 / (y * y * y)
            v = p1[a, k] * (q3 * q3 - q3 + c0 + (c2 + c4 * y) * y)
            e += v if r2[k] < rc2[a, k] else 0.0
    return e


@_jit
def _sweep_kernel(pos, u, beta, swap, ii, jj, delta, log_uniform, counts,
                  kind, p0, p1, p2, consts, rc2, r2_min, box, periodic, skip, inv_t):
    """One sweep of every walker, in place on pos (B, d, N) (coordinate-major), u (B,) and
    counts (B, 5); the random numbers are those of :func:`draw_sweep`. Δu of a displacement is
    Σ_{k≠i} φ_ik(new) − φ_ik(old); of a swap Σ_{k∉{i,j}} φ_ik(|x_j − x_k|) + φ_jk(|x_i − x_k|)
    − φ_ik(|x_i − x_k|) − φ_jk(|x_j − x_k|) (as ``energy_change_swap``); excluded partners get
    r² = ∞, beyond every cutoff."""
    n_walkers, d, n = pos.shape
    inv_box = 1.0 / box
    r_a, r_b = np.empty(n), np.empty(n)
    new, old = np.empty(d), np.empty(d)
    for b in range(n_walkers):
        xs = pos[b]
        for t in range(ii.shape[0]):
            i = ii[t, b]
            if swap[t, b]:
                j = jj[t, b]
                if skip[i, j]:
                    counts[b, SWAPS_SKIPPED] += 1.0
                    continue
                counts[b, SWAP_ATTEMPTS] += 1.0
                for ax in range(d):
                    old[ax], new[ax] = xs[ax, i], xs[ax, j]
                _distances(xs, old, r_a, box, inv_box, periodic)     # from x_i
                _distances(xs, new, r_b, box, inv_box, periodic)     # from x_j
                r_a[i] = r_a[j] = r_b[i] = r_b[j] = np.inf
                du = (_row_energy(kind, r_b, i, p0, p1, p2, consts, rc2, r2_min)
                      + _row_energy(kind, r_a, j, p0, p1, p2, consts, rc2, r2_min)
                      - _row_energy(kind, r_a, i, p0, p1, p2, consts, rc2, r2_min)
                      - _row_energy(kind, r_b, j, p0, p1, p2, consts, rc2, r2_min)) * inv_t
                if log_uniform[t, b] < -beta[b] * du:
                    for ax in range(d):
                        xs[ax, i], xs[ax, j] = new[ax], old[ax]
                    u[b] += du
                    counts[b, SWAP_ACCEPTED] += 1.0
            else:
                counts[b, DISP_ATTEMPTS] += 1.0
                for ax in range(d):
                    old[ax] = xs[ax, i]
                    new[ax] = old[ax] + delta[t, b, ax]
                    if periodic:  # as wrap_into_box
                        new[ax] -= box[ax] * math.floor(new[ax] / box[ax])
                _distances(xs, new, r_a, box, inv_box, periodic)
                _distances(xs, old, r_b, box, inv_box, periodic)
                r_a[i] = r_b[i] = np.inf
                du = (_row_energy(kind, r_a, i, p0, p1, p2, consts, rc2, r2_min)
                      - _row_energy(kind, r_b, i, p0, p1, p2, consts, rc2, r2_min)) * inv_t
                if log_uniform[t, b] < -beta[b] * du:
                    for ax in range(d):
                        xs[ax, i] = new[ax]
                    u[b] += du
                    counts[b, DISP_ACCEPTED] += 1.0


def warm_up_kernel(table: CompiledTable) -> None:
    """Compile :func:`_sweep_kernel` (or load it from numba's disk cache) with an empty batch."""
    n, d = table.rc2.shape[0], table.box.shape[0]
    empty = np.zeros(0)
    _sweep_kernel(np.zeros((0, d, n)), empty, empty, np.zeros((n, 0), dtype=bool), np.zeros((n, 0), dtype=np.int64),
                  np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0, d)), np.zeros((n, 0)), np.zeros((0, 5)),
                  table.kind, table.p0, table.p1, table.p2, table.consts, table.rc2, table.r2_min, table.box,
                  table.periodic, table.skip, table.inv_t)


def sweep_numba(x: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, system: System, r: SweepRandoms,
                table: CompiledTable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sweep in the compiled kernel; charges the ledger as the local-energy API would
    (1/N per displacement, 2/N per swap attempted). Returns new (x, u) and the (B, 5) counts."""
    b, n, d = x.shape[0], system.n_particles, system.dim
    pos = np.ascontiguousarray(x.detach().cpu().double().numpy().reshape(b, n, d).transpose(0, 2, 1))
    energies = u.detach().cpu().double().numpy().copy()
    counts = np.zeros((b, 5))
    _sweep_kernel(pos, energies, beta.detach().cpu().double().numpy(), r.swap.numpy(), r.i.numpy(),
                  r.j.numpy(), r.delta.numpy(), r.log_uniform.numpy(), counts,
                  table.kind, table.p0, table.p1, table.p2, table.consts, table.rc2, table.r2_min,
                  table.box, table.periodic, table.skip, table.inv_t)
    system.ledger.charge(energy=float(counts[:, DISP_ATTEMPTS].sum() + 2 * counts[:, SWAP_ATTEMPTS].sum()) / n)
    x_new = torch.from_numpy(np.ascontiguousarray(pos.transpose(0, 2, 1)).reshape(b, -1)).to(dtype=x.dtype)
    return x_new, torch.from_numpy(energies).to(u.dtype), torch.from_numpy(counts)


# --------------------------------------------------------------------------- the move


class SwapMove(SteppedMove):
    """One swap-MC sweep (N attempted moves per walker, a fraction ``p_swap`` of them identity
    swaps, the rest displacements) of a batch of walkers, each at its own β (see the section
    comment above for the conventions). ``swap_pairs``: the species pairs that may swap
    (names as ``'AC'``, checked by :func:`skipped_pairs` at first use), None for all.

    ``counts`` (B, 5) holds the move counts since the last reset (columns DISP_ATTEMPTS …
    SWAPS_SKIPPED). For :func:`tune`, ``accepted``/``attempts`` is each walker's displacement
    acceptance since the reset (``attempts`` counts sweeps); it stays None while no
    displacement was attempted. ``step`` (B,) is the displacement half-width δ, tunable.
    """

    def __init__(self, step: float, p_swap: float, backend: str = "auto", swap_pairs: list[str] | None = None):
        super().__init__(step)
        if backend not in SWAP_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid choices: {', '.join(SWAP_BACKENDS)}")
        self.p_swap, self.backend, self.swap_pairs = float(p_swap), backend, check_swap_pairs(swap_pairs)
        self.counts: torch.Tensor | None = None
        self._system_id: int | None = None
        self._table: CompiledTable | None = None
        self._skip: torch.Tensor | None = None

    def prepare(self, system: System) -> str:
        """Check the system and ``swap_pairs``, build the per-system tables (and compile the
        kernel); returns the backend used."""
        if self._system_id != id(system):
            check_swap_system(system, 0.0)  # p_swap is the sampler's to check: skipped swaps are legal here
            self._skip = skipped_pairs(system, self.swap_pairs)
            self._table = None
            if self.backend in ("auto", "numba") and HAVE_NUMBA:
                self._table = compile_table(system, self._skip)
            if self.backend == "numba" and self._table is None:
                raise ParameterError("backend", f"the numba backend needs numba and a CPU particle system with a "
                                                f"(smoothed) Lennard-Jones, soft-sphere or double-well pair table "
                                                f"and no "
                                                f"one-body term; {system.name!r} has none: use 'torch' or 'auto'")
            if self._table is not None:
                warm_up_kernel(self._table)
            self._system_id = id(system)
        return "numba" if self._table is not None else "torch"

    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None:
        b = len(walkers)
        self.ensure_steps(b)
        if self.attempts == 0 or self.counts is None or self.counts.shape[0] != b:
            self.counts, self.attempts, self.accepted = torch.zeros((b, 5), dtype=torch.float64), 0, None
        backend = self.prepare(system)
        r = draw_sweep(system.n_particles, system.dim, self.step, self.p_swap, generator)
        beta = walkers.beta.to(torch.float64)
        if backend == "numba":
            walkers.x, u, counts = sweep_numba(walkers.x, walkers.u, beta, system, r, self._table)
        else:
            x, u = walkers.x.clone(), walkers.u.to(torch.float64).clone()
            counts = sweep_torch(x, u, beta.to(x.device), system, r, self._skip)
            walkers.x = x
        walkers.u, walkers.forces = u.to(torch.float64), None
        self.counts += counts
        self.attempts += 1
        tried, accepted = self.counts[:, DISP_ATTEMPTS], self.counts[:, DISP_ACCEPTED]
        if float(tried.sum()) > 0:
            overall = accepted.sum() / tried.sum()
            fraction = torch.where(tried > 0, accepted / tried.clamp(min=1), overall)
            self.accepted = fraction * self.attempts


def swap_counts(move: Move) -> torch.Tensor | None:
    """Per-walker move counts (B, 5) since the last reset, summed over the :class:`SwapMove`
    leaves of ``move`` (columns DISP_ATTEMPTS … SWAPS_SKIPPED); None when it has none."""
    counts = [leaf.counts for leaf in move.leaves()
              if isinstance(leaf, SwapMove) and leaf.counts is not None and leaf.attempts]
    return sum(counts) if counts else None


def prepare(move: Move, system: System) -> None:
    """Build every leaf's per-system tables (:meth:`SwapMove.prepare`: checks, the numba
    compilation) inside the ledger's setup phase, so that compiling is not charged to sampling."""
    with system.ledger.setup_phase():
        for leaf in move.leaves():
            if hasattr(leaf, "prepare"):
                leaf.prepare(system)


def make_move(kind: str, *, step: float, dt: float, friction: float, mass: float, p_swap: float = 0.2,
              swap_pairs: list[str] | None = None) -> Move:
    """The local move a sampler parameter names: 'mc', 'md', 'mc+md' (one of each, in turn) or
    'swap' (:class:`SwapMove` with displacement half-width ``step``, swap probability
    ``p_swap`` and the allowed ``swap_pairs``)."""
    if kind == "mc":
        return MetropolisMove(step)
    if kind == "md":
        return LangevinMove(dt, friction, mass)
    if kind == "mc+md":
        return Sequence([MetropolisMove(step), LangevinMove(dt, friction, mass)])
    if kind == "swap":
        return SwapMove(step, p_swap, swap_pairs=swap_pairs)
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
    """Mean of ``values`` (B,) within each group label 0..n_groups−1 (B,), on the groups' device."""
    values = values.to(dtype=torch.float64, device=groups.device)
    totals = torch.zeros(n_groups, dtype=torch.float64, device=groups.device).index_add_(0, groups, values)
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
