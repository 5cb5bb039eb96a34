"""Parallel tempering (replica exchange) with reversible or non-reversible swap schedules.

R replicas sample exp(−β_k·u) on a ladder β_0 = 1 > β_1 > … > β_{R−1} = 1/t_max of inverse
temperatures relative to the target (Swendsen & Wang, PRL 57, 2607 (1986); Geyer 1991;
Hukushima & Nemoto, J. Phys. Soc. Jpn. 65, 1604 (1996)). Between exchange attempts every
replica makes ``local_steps`` local moves (``moves.py``: Metropolis, BAOAB Langevin, both,
or, for particle systems, ``swap``: a sweep of swap Monte Carlo — single-particle
displacements and, with probability ``p_swap`` per attempt, exchanges of the identities of
two particles of the species pairs ``swap_pairs`` — at the replica's β, the usual
combination in glass studies). An exchange of the configurations of neighbours k, k+1 is
accepted with

    min(1, exp((β_k − β_{k+1})·(u_k − u_{k+1}))),

which keeps Π_k exp(−β_k·u(x_k)) invariant. Swaps follow one of two schemes (Syed,
Bouchard-Côté, Deligiannidis & Doucet, "Non-reversible parallel tempering: a scalable
highly parallel MCMC scheme", JRSS-B 84, 321 (2022)):

* ``deo`` (deterministic even/odd, the default): all even pairs (0,1),(2,3),… on even
  rounds, all odd pairs on odd rounds (Okabe et al., Chem. Phys. Lett. 335, 435 (2001)). The
  resulting index process is non-reversible; round trips then scale linearly rather than
  quadratically with R.
* ``seo`` (stochastic even/odd, reversible): even or odd pairs with probability 1/2 each
  round, drawn independently for every chain.

With MD moves configurations travel with their velocities, rescaled by sqrt(β_old/β_new)
(Sugita & Okamoto, Chem. Phys. Lett. 314, 141 (1999)), so the swap acceptance involves
potential energies only.

Warm-up (a fraction ``warmup`` of the budget, charged, samples discarded): Metropolis step
sizes (the displacement half-widths of ``swap`` moves) start at σ/√β_k and, every 10
exchange rounds, are tuned per temperature towards ``target_acceptance``. With
``ladder = "adaptive"`` the ladder is re-spaced after warm-up rounds of doubling length
(10, 20, 40, … exchange rounds) so that the swap rejection rates become equal: with r_k
the rejection rate of pair k, the cumulative barrier Λ(β_k) = Σ_{j<k} r_j is interpolated piecewise-linearly in β and the new β_k solve Λ(β_k) = k/(R−1)·Λ(β_{R−1})
(the schedule update of Syed et al. 2022, with linear instead of monotone-spline
interpolation; the end points stay fixed). Nothing adapts in production.

Round trips (Katzgraber, Trebst, Huse & Troyer, J. Stat. Mech. P03018 (2006)) are counted
per walker (a configuration followed through its swaps): a walker completes one when it
reaches the coldest slot after having visited the hottest slot since its last visit to the
coldest. Only production counts. Snapshots carry the β = 1 replica of every chain only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from boltzbench.contracts import Budget, Sampler, Snapshot, System, param, require
from boltzbench.samplers.chains import ChainTrace
from boltzbench.samplers.moves import (MOVES, SWAP_ACCEPTED, SWAP_ATTEMPTS, Move, Walkers, acceptance,
                                       check_swap_pairs, check_swap_system, make_move, prepare, skipped_pairs,
                                       swap_counts, tunable_leaves, tune)

SCHEMES = ("deo", "seo")
LADDERS = ("geometric", "adaptive")
FIRST_ROUND = 10  # exchange rounds in the first ladder-adaptation round; each next round doubles
STEP_WINDOW = 10  # exchange rounds between two step-size updates during warm-up


def geometric_ladder(n_replicas: int, t_max: float) -> np.ndarray:
    """β_k = t_max^(−k/(R−1)), k = 0..R−1: from 1 down to 1/t_max, constant ratio."""
    return t_max ** (-np.arange(n_replicas) / (n_replicas - 1))


def equalize_ladder(betas: np.ndarray, rejection: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Re-space a decreasing ladder so that every pair gets the same share of the total
    rejection Λ = Σ r_k (see module docstring). End points stay; ``floor`` keeps Λ strictly
    increasing where a pair never rejects."""
    r = np.maximum(np.asarray(rejection, float), floor)
    cumulative = np.concatenate([[0.0], np.cumsum(r)])        # Λ at β_0 > β_1 > … (increasing)
    targets = np.linspace(0.0, cumulative[-1], len(betas))
    new = np.interp(targets, cumulative, np.asarray(betas, float))
    new[0], new[-1] = betas[0], betas[-1]
    return new


def swap_proposals(n_chains: int, n_replicas: int, round_index: int, scheme: str,
                   generator: torch.Generator) -> torch.Tensor:
    """(C, R−1) mask of the neighbour pairs (k, k+1) proposed for exchange this round."""
    k = torch.arange(n_replicas - 1)
    if scheme == "deo":
        parity = torch.full((n_chains, 1), round_index % 2)
    else:
        parity = torch.randint(0, 2, (n_chains, 1), generator=generator, device=generator.device).cpu()
    return (k[None, :] % 2) == parity


def exchange(u: torch.Tensor, betas: torch.Tensor, proposed: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Attempt the proposed neighbour swaps (disjoint pairs) of C chains.

    ``u`` (C, R) are target reduced energies by slot, ``betas`` (R,). Pair (k, k+1) swaps
    with probability min(1, exp((β_k − β_{k+1})(u_k − u_{k+1}))). Returns the slot
    permutation perm (C, R) — slot r receives the configuration of slot perm[c, r] — and
    the (C, R−1) mask of accepted swaps.
    """
    u, betas, proposed = u.cpu(), betas.cpu(), proposed.cpu()  # (C, R) bookkeeping lives on the host
    log_ratio = (betas[:-1] - betas[1:]) * (u[:, :-1] - u[:, 1:])
    log_uniform = torch.log(torch.rand(log_ratio.shape, generator=generator, dtype=u.dtype,
                                       device=generator.device)).cpu()
    accepted = proposed & (log_uniform < log_ratio)
    shift = accepted.long()
    perm = torch.arange(u.shape[1]).expand_as(u).clone()
    perm[:, :-1] += shift  # left slot of a swapped pair takes from the right
    perm[:, 1:] -= shift   # right slot takes from the left
    return perm, accepted


class RoundTrips:
    """Round trips of every walker between the coldest (slot 0) and hottest (slot R−1) ends."""

    UNSEEN, FROM_COLD, FROM_HOT = 0, 1, 2

    def __init__(self, walker_at_slot: torch.Tensor):
        self.label = torch.full_like(walker_at_slot, self.UNSEEN)  # indexed by walker id
        self.count = torch.zeros_like(walker_at_slot)
        self.update(walker_at_slot)

    def update(self, walker_at_slot: torch.Tensor) -> None:
        rows = torch.arange(walker_at_slot.shape[0])
        cold, hot = walker_at_slot[:, 0], walker_at_slot[:, -1]
        arrived = self.label[rows, cold] == self.FROM_HOT
        self.count[rows, cold] += arrived.long()
        self.label[rows, cold] = self.FROM_COLD
        leaving = self.label[rows, hot] == self.FROM_COLD
        self.label[rows, hot] = torch.where(leaving, self.FROM_HOT, self.label[rows, hot])


@dataclass
class ParallelTempering(Sampler):
    """Parallel tempering, DEO (non-reversible) or SEO swaps, n_chains independent chains batched."""

    name: ClassVar[str] = "pt"
    description: ClassVar[str] = "parallel tempering (replica exchange), non-reversible DEO or reversible SEO swaps"

    n_replicas: int = param(8, "temperatures in the ladder (>= 2), used with t_max when betas is not given")
    t_max: float = param(10.0, "highest temperature relative to the target (β_min = 1/t_max, > 1)")
    betas: list[float] | None = param(None, "explicit ladder 1 = β_0 > β_1 > … > 0 (relative to the "
                                            "target); replaces n_replicas and t_max")
    ladder: str = param("geometric", "'geometric' (fixed) or 'adaptive' (re-spaced during warm-up to "
                                     "equalize swap acceptance, Syed et al. 2022)")
    scheme: str = param("deo", "'deo' deterministic even/odd swaps (non-reversible, Syed et al. 2022) "
                               "or 'seo' stochastic even/odd (reversible)")
    n_chains: int = param(16, "independent PT chains, batched; each gives one β = 1 sample per kept round")
    move: str = param("mc", "local move: 'mc' (Metropolis), 'md' (BAOAB Langevin), 'mc+md', or 'swap' (a sweep "
                            "of swap Monte Carlo, particle systems only)")
    local_steps: int = param(1, "local moves of every replica between two exchange rounds")
    step: float = param(0.5, "initial Metropolis step size, or the displacement half-width of move = 'swap' "
                             "(tuned per temperature during warm-up)")
    p_swap: float = param(0.2, "move = 'swap': probability that an attempted move exchanges the identities "
                               "(species or diameters) of two particles (not a replica exchange), in [0, 1]")
    swap_pairs: list[str] | None = param(None, "move = 'swap': the species pairs whose particles may exchange "
                                               "identities, e.g. ['AC', 'BC']; None: every pair")
    target_acceptance: float = param(0.4, "Metropolis acceptance the warm-up tunes towards, in (0, 1)")
    dt: float = param(0.01, "MD time step")
    friction: float = param(1.0, "MD Langevin friction γ")
    mass: float = param(1.0, "MD mass of every degree of freedom")
    warmup: float = param(0.1, "fraction of the budget spent warming up (tuning; samples discarded), in [0, 1)")
    thin: int = param(2, "keep the β = 1 replicas every `thin` exchange rounds")

    def __post_init__(self) -> None:
        require(self.n_replicas >= 2, "n_replicas", f"must be >= 2, got {self.n_replicas}")
        require(self.t_max > 1, "t_max", f"must be > 1 (the hottest replica is hotter than the target), got {self.t_max}")
        if self.betas is not None:
            betas = self.betas
            require(len(betas) >= 2, "betas", f"must list at least 2 inverse temperatures, got {betas!r}")
            require(all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
                        for b in betas), "betas", f"must be finite numbers, got {betas!r}")
            require(betas[0] == 1, "betas", f"must start at 1 (the target temperature), got {betas[0]!r}")
            require(all(a > b for a, b in zip(betas, betas[1:])) and betas[-1] > 0, "betas",
                    f"must decrease strictly from 1 and stay > 0, got {betas!r}")
            self.betas = [float(b) for b in betas]
        require(self.ladder in LADDERS, "ladder", f"must be one of {', '.join(LADDERS)}; got {self.ladder!r}")
        require(self.scheme in SCHEMES, "scheme", f"must be one of {', '.join(SCHEMES)}; got {self.scheme!r}")
        require(self.n_chains >= 1, "n_chains", f"must be >= 1, got {self.n_chains}")
        require(self.move in MOVES, "move", f"must be one of {', '.join(MOVES)}; got {self.move!r}")
        require(isinstance(self.p_swap, (int, float)) and not isinstance(self.p_swap, bool)
                and 0.0 <= self.p_swap <= 1.0, "p_swap", f"must be a probability in [0, 1], got {self.p_swap!r}")
        self.swap_pairs = check_swap_pairs(self.swap_pairs)
        require(self.swap_pairs is None or self.move == "swap", "swap_pairs",
                f"applies to move = 'swap' only (move is {self.move!r}); leave it unset")
        require(self.local_steps >= 1, "local_steps", f"must be >= 1, got {self.local_steps}")
        require(self.step > 0, "step", f"must be > 0, got {self.step}")
        require(0 < self.target_acceptance < 1, "target_acceptance",
                f"must be in (0, 1), got {self.target_acceptance}")
        require(self.dt > 0, "dt", f"must be > 0, got {self.dt}")
        require(self.friction > 0, "friction", f"must be > 0, got {self.friction}")
        require(self.mass > 0, "mass", f"must be > 0, got {self.mass}")
        require(0 <= self.warmup < 1, "warmup", f"must be in [0, 1), got {self.warmup}")
        require(self.thin >= 1, "thin", f"must be >= 1, got {self.thin}")

    def initial_ladder(self) -> np.ndarray:
        if self.betas is not None:
            return np.asarray(self.betas, float)
        return geometric_ladder(self.n_replicas, self.t_max)

    def _move(self) -> Move:
        return make_move(self.move, step=self.step, dt=self.dt, friction=self.friction, mass=self.mass,
                         p_swap=self.p_swap, swap_pairs=self.swap_pairs)

    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        if self.move == "swap":  # refuse a system without particles or species before any work
            check_swap_system(system, self.p_swap, who="pt with move = 'swap'")
            skipped_pairs(system, self.swap_pairs)
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        move = self._move()
        prepare(move, system)
        betas = torch.tensor(self.initial_ladder(), dtype=system.dtype)
        C, R = self.n_chains, len(betas)
        slot = torch.arange(R).repeat(C)  # walker b = c·R + r sits in temperature slot r
        walkers = Walkers.start(system, system.sample_initial(C * R, generator), betas[slot])
        for leaf in tunable_leaves(move):  # initial steps σ/√β_k: wider where it is hotter
            leaf.set_step(self.step / torch.sqrt(betas[slot]), C * R)
        walker_at_slot = torch.arange(R).repeat(C, 1)
        stats = _Stats(C, R)

        warming = self.warmup > 0
        round_index, round_length, rounds_in_round = 0, FIRST_ROUND, 0
        warmup_rounds, warmup_cost = 0, None
        if not warming:
            trips, warmup_cost = RoundTrips(walker_at_slot), ledger.as_dict()
        while not budget.exhausted(ledger):
            for _ in range(self.local_steps):
                move(walkers, system, generator)
            proposed = swap_proposals(C, R, round_index, self.scheme, generator)
            perm, accepted = exchange(walkers.u.view(C, R), betas, proposed, generator)
            walkers = walkers.take((perm + R * torch.arange(C)[:, None]).reshape(-1))
            walkers.retemper(betas[slot])
            walker_at_slot = walker_at_slot.gather(1, perm)
            round_index += 1
            stats.count(proposed, accepted)

            if warming:
                rounds_in_round += 1
                if round_index % STEP_WINDOW == 0:
                    tune(move, slot, R, self.target_acceptance)
                if rounds_in_round == round_length:  # end of a ladder round
                    if self.ladder == "adaptive":
                        betas = torch.tensor(equalize_ladder(betas.numpy(), 1 - stats.pair_acceptance()),
                                             dtype=system.dtype)
                        walkers.retemper(betas[slot])
                    stats = _Stats(C, R)
                    round_length, rounds_in_round = 2 * round_length, 0
                if budget.used(ledger) >= self.warmup:  # production starts: freeze everything
                    warming, warmup_rounds, warmup_cost = False, round_index, ledger.as_dict()
                    move.reset_stats()
                    stats = _Stats(C, R)
                    trips = RoundTrips(walker_at_slot)
                continue
            trips.update(walker_at_slot)
            trace.step(walkers.x[::R], walkers.u[::R])  # slot 0 of every chain: β = 1
            if trace.steps >= self.thin and schedule.due(ledger):  # at least one kept sample
                phase = {"rounds": round_index - warmup_rounds, "warmup_rounds": warmup_rounds,
                         "warmup_evals": warmup_cost["total_evals"]}
                yield trace.snapshot(ledger, self._diagnostics(betas, stats, trips, move, phase, ledger))
        if not warming and trace.steps < self.thin:
            trace.snapshot(ledger, {})  # raises: the budget ended before the first kept sample
        if warming:
            raise RuntimeError(f"the budget ended during warm-up (warmup = {self.warmup} of the budget), "
                               f"before any production round; raise the budget")

    def _diagnostics(self, betas, stats: "_Stats", trips: RoundTrips, move: Move, phase: dict[str, Any],
                     ledger) -> dict[str, Any]:
        C, R = self.n_chains, len(betas)
        local = acceptance(move)
        per_temperature = ([None] * R if local is None
                           else local.view(C, R).mean(dim=0).tolist())
        steps = [leaf.step.view(C, R)[0].tolist() for leaf in tunable_leaves(move) if leaf.step is not None]
        counts = swap_counts(move)
        identity = None
        if counts is not None:  # identity swaps accepted / attempted, per temperature
            tried = counts[:, SWAP_ATTEMPTS].view(C, R).sum(dim=0)
            accepted = counts[:, SWAP_ACCEPTED].view(C, R).sum(dim=0)
            identity = [float(a / t) if t > 0 else None for a, t in zip(accepted, tried)]
        total_trips = int(trips.count.sum())
        production_evals = ledger.total_evals - phase["warmup_evals"]
        return {
            "betas": betas.tolist(),
            "pair_acceptance": stats.pair_acceptance().tolist(),
            "round_trips": total_trips,
            "round_trips_per_replica": trips.count.sum(dim=0).tolist(),
            "acceptance": per_temperature,
            **({} if identity is None else {"acceptance_identity_swap": identity}),
            "step_sizes": steps[0] if len(steps) == 1 else steps,
            "evals_per_round_trip": production_evals / total_trips if total_trips else None,
            **phase,
            "n_chains": C,
            "scheme": self.scheme,
        }


class _Stats:
    """Swap attempts and acceptances per neighbour pair, summed over chains."""

    def __init__(self, n_chains: int, n_replicas: int):
        self.attempts = torch.zeros(n_replicas - 1, dtype=torch.float64)
        self.accepts = torch.zeros(n_replicas - 1, dtype=torch.float64)

    def count(self, proposed: torch.Tensor, accepted: torch.Tensor) -> None:
        self.attempts += proposed.sum(dim=0)
        self.accepts += accepted.sum(dim=0)

    def pair_acceptance(self) -> np.ndarray:
        return (self.accepts / self.attempts.clamp(min=1)).numpy()
