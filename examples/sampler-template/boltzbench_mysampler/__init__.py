"""MySampler: a boltzbench sampler plugin, made from examples/sampler-template.

TEMPLATE: replace this docstring with your method, its update rule and its source. As
shipped, the class is random-walk Metropolis (Metropolis et al., J. Chem. Phys. 21, 1087
(1953)): propose y = x + σ·ξ with ξ ~ N(0, I) and accept with probability
min(1, exp(−(u(y) − u(x)))), where u is the system's reduced energy. Each step costs one
energy evaluation per chain. It passes ``boltzbench.testing.check_sampler`` as it is, so
you can change it one step at a time and rerun the tests after each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch

from boltzbench import Budget, ChainSampler, ChainTrace, Snapshot, System, param, require


@dataclass
class MySampler(ChainSampler):
    """Random-walk Metropolis, ``n_chains`` independent chains batched (TEMPLATE: yours).

    ``ChainSampler`` gives the parameters ``n_chains`` (default 64) and ``thin`` (default 10).
    """

    # The name a matrix and `boltzbench list` use; keep it equal to the entry-point name.
    name: ClassVar[str] = "mysampler"
    description: ClassVar[str] = "MySampler (template): random-walk Metropolis"

    # Every parameter is a dataclass field declared with `param(default, help)`.
    step: float = param(0.5, "standard deviation σ of the Gaussian proposal")

    def __post_init__(self) -> None:
        super().__post_init__()          # checks n_chains and thin
        # Validate here, naming the field: a matrix with step = -1 exits 2 with "step: ...".
        require(self.step > 0, "step", f"must be > 0, got {self.step}")

    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        """Yield a snapshot whenever the budget's schedule says one is due, until it is spent.

        Rules (the conformance kit checks each): every energy goes through
        ``system.energy`` or ``system.energy_and_forces`` (they charge the ledger); all
        randomness comes from ``generator``; the loop ends when ``budget.exhausted(ledger)``.
        """
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        x = system.sample_initial(self.n_chains, generator)
        u = system.energy(x)
        accepted = 0.0
        while not budget.exhausted(ledger):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            y = x + self.step * noise
            u_y = system.energy(y)
            log_u = torch.rand(u.shape, generator=generator, dtype=u.dtype, device=u.device).log()
            accept = log_u < u - u_y
            x = torch.where(accept[:, None], y, x)
            u = torch.where(accept, u_y, u)
            accepted += float(accept.to(u.dtype).mean())
            trace.step(x, u)             # keeps every `thin`-th step
            # a snapshot falling due before the first kept sample (step `thin`) waits for it
            if trace.ready and schedule.due(ledger):
                yield trace.snapshot(ledger, {"acceptance": accepted / trace.steps})
        if not trace.ready:              # the whole budget ran out before step `thin`:
            trace.snapshot(ledger, {})   # this raises, saying so


__all__ = ["MySampler"]
