"""Random-walk Metropolis Monte Carlo on the whole configuration, chains batched.

Each step proposes x' = x + σ·ξ, ξ ~ N(0, 1) in every degree of freedom, and accepts with
probability min(1, exp(−(u(x') − u(x)))) (Metropolis et al., J. Chem. Phys. 21, 1087
(1953)). The proposal is symmetric, so detailed balance holds with respect to exp(−u).
Noé et al. (Science 2019) use this with σ = 0.1 as the "MD" baseline on the double well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch

from boltzbench.contracts import Budget, Snapshot, System, param, require
from boltzbench.samplers.chains import ChainSampler, ChainTrace


def metropolis_step(x, u, system: System, step, generator: torch.Generator, beta=None):
    """One Metropolis step of every chain. Returns (x, u, accepted mask).

    ``step`` is a float or a (B, 1) tensor of per-chain step sizes. ``beta`` (optional, (B,)
    tensor or float) is each chain's inverse temperature relative to the target: the step
    then leaves exp(−β·u) invariant, accepting with min(1, exp(−β·(u' − u))). ``u`` stays
    the reduced energy at the target. ``beta=None`` is β = 1.
    """
    proposal = x + step * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    u_new = system.energy(proposal)
    log_uniform = torch.log(torch.rand(u.shape, generator=generator, dtype=u.dtype, device=u.device))
    log_ratio = u - u_new if beta is None else beta * (u - u_new)
    accept = log_uniform < log_ratio  # NaN energies are never accepted
    x = torch.where(accept[:, None], proposal, x)
    u = torch.where(accept, u_new, u)
    return x, u, accept


@dataclass
class MetropolisMC(ChainSampler):
    """Random-walk Metropolis with Gaussian proposals, independent chains batched."""

    name: ClassVar[str] = "mc"
    description: ClassVar[str] = "random-walk Metropolis MC, Gaussian whole-configuration moves"

    step: float = param(0.1, "proposal standard deviation σ per degree of freedom")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.step > 0, "step", f"must be > 0, got {self.step}")

    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        x = system.sample_initial(self.n_chains, generator)
        u = system.energy(x)
        accepted = 0.0
        while not budget.exhausted(ledger):
            x, u, accept = metropolis_step(x, u, system, self.step, generator)
            accepted += float(accept.double().mean())
            trace.step(x, u)
            if trace.ready and schedule.due(ledger):  # a snapshot due before the first kept sample waits
                yield trace.snapshot(ledger, {"acceptance": accepted / trace.steps})
        if not trace.ready:
            trace.snapshot(ledger, {})  # raises: the budget ended before the first kept sample
