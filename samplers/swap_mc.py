"""Swap Monte Carlo for particle systems: single-particle displacements and identity swaps.

Swap Monte Carlo (T. S. Grigera & G. Parisi, Phys. Rev. E 63, 045102(R) (2001); A. Ninarello,
L. Berthier & D. Coslovich, Phys. Rev. X 7, 021039 (2017); L. Berthier et al.,
Phys. Rev. Lett. 116, 238002 (2016)). Every attempted move is, with probability ``p_swap``,
an exchange of the identities (species or diameters) of two particles i ≠ j drawn uniformly
at random, and otherwise a displacement of one particle drawn uniformly at random by a
vector uniform in the cube [−δ, δ]^d, wrapped into the periodic box. Both proposals are
symmetric and are accepted with the plain Metropolis rule min(1, exp(−β·Δu)) (reduced
energies; β = 1 is the system's target temperature), so every walker's exp(−β·u) is
invariant; the choice between them is state-independent, and a mixture of invariant kernels
is invariant (Tierney, Ann. Statist. 22, 1701 (1994)). A *sweep* is N attempted moves per
walker (N = number of particles), sequential within a walker, all walkers batched.

The move is :class:`boltzbench.samplers.moves.SwapMove`, shared with the ``swap`` move of
``pt`` and ``pa``; its conventions and backends are documented with it (section "swap moves"
of ``moves.py``). In short: identities stay attached to particle indices, so an accepted
swap exchanges the *positions* of i and j; a displacement is charged 1/N evaluation, an
attempted swap 2/N, so a sweep of N displacements costs one evaluation; a swap proposed
between two identical particles (same species and diameter) is *skipped* — not attempted,
not charged, not counted in ``acceptance_swap``, counted in ``swaps_skipped`` (with KA 80:20
about 2/3 of the proposed pairs, with polydisperse systems none); ``backend = "auto"`` runs
each sweep as a compiled numba loop where the system allows it, and the torch backend (the
system's local-energy API) follows the same chain move for move.

Warm-up (a fraction ``warmup`` of the budget, charged, samples discarded): every
``TUNE_WINDOW`` sweeps the displacement half-width δ (one for all chains) is updated towards
``target_acceptance`` by :func:`boltzbench.samplers.moves.tune`; it is frozen in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch

from boltzbench.contracts import Budget, Snapshot, System, param, require
from boltzbench.samplers.chains import ChainSampler, ChainTrace
from boltzbench.samplers.moves import (DISP_ACCEPTED, DISP_ATTEMPTS, SWAP_ACCEPTED, SWAP_ATTEMPTS, SWAP_BACKENDS,
                                       SWAPS_SKIPPED, SwapMove, Walkers, check_swap_system, tune)

BACKENDS = SWAP_BACKENDS
TUNE_WINDOW = 10  # sweeps between two step-size updates during warm-up


# --------------------------------------------------------------------------- the sampler


@dataclass
class SwapMC(ChainSampler):
    """Swap Monte Carlo (displacements + identity swaps, Metropolis), independent chains batched."""

    name: ClassVar[str] = "swap_mc"
    description: ClassVar[str] = ("swap Monte Carlo (Grigera & Parisi 2001; Ninarello, Berthier & Coslovich 2017): "
                                  "single-particle displacements and species/diameter swaps, chains batched")

    p_swap: float = param(0.2, "probability that an attempted move swaps the identities (species or diameters) of "
                               "two random particles, in [0, 1]; 0 gives displacement-only MC")
    step: float = param(0.1, "initial half-width δ of the uniform displacement cube (length; tuned in warm-up)")
    target_acceptance: float = param(0.4, "displacement acceptance the warm-up tunes δ towards, in (0, 1)")
    warmup: float = param(0.1, "fraction of the budget spent warming up (tuning δ; samples discarded), in [0, 1)")
    thin: int = param(10, "keep one sample every `thin` sweeps (a sweep = N attempted moves per chain)")
    backend: str = param("auto", "'numba' (compiled sweep), 'torch' (the system's local-energy API) or 'auto' "
                                 "(numba where the system allows it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(isinstance(self.p_swap, (int, float)) and 0.0 <= self.p_swap <= 1.0, "p_swap",
                f"must be a probability in [0, 1], got {self.p_swap!r}")
        require(self.step > 0, "step", f"must be > 0, got {self.step}")
        require(0 < self.target_acceptance < 1, "target_acceptance",
                f"must be in (0, 1), got {self.target_acceptance}")
        require(0 <= self.warmup < 1, "warmup", f"must be in [0, 1), got {self.warmup}")
        require(self.backend in BACKENDS, "backend",
                f"unknown backend {self.backend!r}; valid choices: {', '.join(BACKENDS)}")

    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        check_swap_system(system, self.p_swap, who="swap_mc")
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        move = SwapMove(self.step, self.p_swap, self.backend)
        with ledger.setup_phase():  # tables, and the numba compilation (or its disk cache)
            backend = move.prepare(system)
        c = self.n_chains
        walkers = Walkers.start(system, system.sample_initial(c, generator), torch.ones(c, dtype=torch.float64))
        walkers.u = walkers.u.to(torch.float64)
        one_group = torch.zeros(c, dtype=torch.long)
        warming, sweeps, warmup_sweeps = self.warmup > 0, 0, 0
        while not budget.exhausted(ledger):
            move(walkers, system, generator)
            sweeps += 1
            if warming:
                if sweeps % TUNE_WINDOW == 0:
                    tune(move, one_group, 1, self.target_acceptance)
                if budget.used(ledger) >= self.warmup:  # production: δ frozen, statistics restart
                    warming, warmup_sweeps = False, sweeps
                    move.reset_stats()
                continue
            trace.step(walkers.x, walkers.u)
            if trace.steps >= self.thin and schedule.due(ledger):
                yield trace.snapshot(ledger, self._diagnostics(move, backend, sweeps - warmup_sweeps, warmup_sweeps))
        if warming:
            raise RuntimeError(f"the budget ended during warm-up (warmup = {self.warmup} of the budget), "
                               f"before any production sweep; raise the budget")
        if trace.steps < self.thin:
            trace.snapshot(ledger, {})  # raises: the budget ended before the first kept sample

    @staticmethod
    def _diagnostics(move: SwapMove, backend: str, sweeps: int, warmup_sweeps: int) -> dict[str, Any]:
        total = move.counts.sum(0)

        def rate(accepted: int, tried: int) -> float | None:
            return float(total[accepted] / total[tried]) if float(total[tried]) > 0 else None

        return {
            "acceptance_displacement": rate(DISP_ACCEPTED, DISP_ATTEMPTS),
            "acceptance_swap": rate(SWAP_ACCEPTED, SWAP_ATTEMPTS),
            "swaps_skipped": int(total[SWAPS_SKIPPED]),
            "swaps_attempted": int(total[SWAP_ATTEMPTS]),
            "sweeps": sweeps,
            "warmup_sweeps": warmup_sweeps,
            "step": float(move.step.mean()),
            "backend": backend,
        }
