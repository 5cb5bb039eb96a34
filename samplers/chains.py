"""What every chain sampler shares: its chain parameters, and a thinned trace that turns
into snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from boltzbench.contracts import CostLedger, Sampler, Snapshot, param, require


@dataclass
class ChainSampler(Sampler):
    """Base of samplers that run ``n_chains`` independent chains batched in one tensor."""

    n_chains: int = param(64, "independent chains run together, batched")
    thin: int = param(10, "keep one sample every `thin` steps")

    def __post_init__(self) -> None:
        require(self.n_chains >= 1, "n_chains", f"must be >= 1, got {self.n_chains}")
        require(self.thin >= 1, "thin", f"must be >= 1, got {self.thin}")


class ChainTrace:
    """Thinned positions and energies of C chains, kept every ``thin`` steps."""

    def __init__(self, thin: int):
        self.thin = thin
        self.steps = 0
        self._positions: list[torch.Tensor] = []
        self._energies: list[torch.Tensor] = []

    def step(self, x: torch.Tensor, u: torch.Tensor) -> None:
        """Count one step of every chain; keep (x, u) when the step is a multiple of thin."""
        self.steps += 1
        if self.steps % self.thin == 0:
            self._positions.append(x.detach().clone())
            self._energies.append(u.detach().clone())

    @property
    def ready(self) -> bool:
        """True once a sample is kept (step ``thin``): a snapshot due earlier waits for it."""
        return bool(self._positions)

    def snapshot(self, ledger: CostLedger, diagnostics: dict[str, Any]) -> Snapshot:
        """The kept samples so far. Samplers ask when :attr:`ready` (a snapshot due earlier
        waits), and once more after the loop if never ready: then the budget ran out before
        step ``thin``, and this raises, saying so."""
        if not self._positions:
            raise RuntimeError(f"no sample kept after {self.steps} steps ({ledger.total_evals:g} evaluations): "
                               f"the first is kept at step thin = {self.thin}. If the budget ran out, raise it "
                               "or lower thin; a sampler asks for a snapshot only once `trace.ready`")
        return Snapshot(
            positions=torch.stack(self._positions).cpu(),  # records live on the host
            energies=torch.stack(self._energies).cpu(),
            log_weights=None,
            cost=ledger.as_dict(),
            diagnostics={"steps": self.steps, **diagnostics},
        )
