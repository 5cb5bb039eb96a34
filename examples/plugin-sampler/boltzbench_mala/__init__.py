"""MALA, the Metropolis-adjusted Langevin algorithm, as a boltzbench sampler plugin.

Proposal y = x + h·F(x) + √(2h)·ξ with F = −∇u and ξ ~ N(0, I): one Euler step of the
overdamped Langevin equation, corrected by a Metropolis-Hastings test with

    log α = −u(y) + u(x) − |x − y − h·F(y)|²/(4h) + |y − x − h·F(x)|²/(4h)

(Roberts & Tweedie, Bernoulli 2, 341–363 (1996)). Exact for any step size h, because of
the acceptance test. Each step costs one force evaluation per chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch

from boltzbench import Budget, ChainSampler, ChainTrace, Snapshot, System, param, require


def mala_step(x, u, f, system: System, h: float, generator: torch.Generator):
    """One MALA step of every chain. Returns (x, u, f, accepted mask)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    y = x + h * f + (2 * h) ** 0.5 * noise
    u_y, f_y = system.energy_and_forces(y)
    log_forward = -((y - x - h * f) ** 2).sum(dim=1) / (4 * h)
    log_backward = -((x - y - h * f_y) ** 2).sum(dim=1) / (4 * h)
    log_alpha = u - u_y + log_backward - log_forward
    accept = torch.rand(u.shape, generator=generator, dtype=u.dtype).log() < log_alpha
    x = torch.where(accept[:, None], y, x)
    u = torch.where(accept, u_y, u)
    f = torch.where(accept[:, None], f_y, f)
    return x, u, f, accept


@dataclass
class MALA(ChainSampler):
    """Metropolis-adjusted Langevin algorithm, independent chains batched."""

    name: ClassVar[str] = "mala"
    description: ClassVar[str] = "MALA (plugin example): Langevin proposals with a Metropolis test"

    step: float = param(0.01, "step size h of the Langevin proposal (time step × diffusion)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.step > 0, "step", f"must be > 0, got {self.step}")

    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        x = system.sample_initial(self.n_chains, generator)
        u, f = system.energy_and_forces(x)
        accepted = torch.zeros((), dtype=u.dtype)
        while not budget.exhausted(ledger):
            x, u, f, accept = mala_step(x, u, f, system, self.step, generator)
            accepted += accept.to(u.dtype).mean()
            trace.step(x, u)
            if trace.ready and schedule.due(ledger):  # a snapshot due before the first kept sample waits
                yield trace.snapshot(ledger, {"acceptance": float(accepted) / trace.steps})
        if not trace.ready:
            trace.snapshot(ledger, {})  # raises: the budget ran out before the first kept sample
