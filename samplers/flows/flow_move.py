"""A trained flow as a Markov move of tempered walkers (:class:`~boltzbench.samplers.moves.Move`).

* **Gaussian (latent) base: independence Metropolis–Hastings** (Tierney, Ann. Statist. 22,
  1701 (1994); with flows: Gabrié, Rotskoff & Vanden-Eijnden, PNAS 119, e2109420119 (2022)).
  Every walker proposes x' = T(z), z ~ N(0, I), independent of its state, accepted with

      min(1, w(x')/w(x)),   log w(x) = −β·u(x) − log q(x),

  q the flow density (log q(x) by the inverse map); the kernel is reversible with respect
  to exp(−β·u) at the walker's own β.
* **Thermal base: learned replica exchange** (Invernizzi, Krämer, Clementi & Noé, J. Phys.
  Chem. Lett. 13, 11643 (2022)). The flow F maps configurations at β_b (the base) onto the
  target. Walker x at β pairs with a partner y at β_b (the second half of the batch); the
  proposal is the involution (x, y) → (F(y), F⁻¹(x)), accepted with

      min(1, exp(−β·u(F y) − β_b·u(F⁻¹ x) + β·u(x) + β_b·u(y)) · |det J_F(y)| · |det J_F⁻¹(x)|),

  which leaves exp(−β·u(x) − β_b·u(y)) invariant. In terms of the flow density this is the
  independence ratio w(F y)/w(x) above, with the partner taking F⁻¹(x) on acceptance. The
  second half matters: proposing F(y) from a base *chain* while keeping y is not exact
  (consecutive proposals are correlated), the exchange is. The map is an involution up to
  the flow's rounding (about 1e-6 relative in float32; ``precision = "float64"`` for more).

Costs: one energy evaluation per walker per move for u(x') (Gaussian), two for u(F y) and
u(F⁻¹ x) (thermal), all charged through the system; log q of the current state is cached
and recomputed only for walkers that other moves have moved (a Gaussian base needs no
energy for it). Non-finite proposals are rejected and counted in ``nonfinite``.
"""

from __future__ import annotations

import torch

from boltzbench.contracts import System, device_of
from boltzbench.samplers.flows.base import GaussianBase
from boltzbench.samplers.flows.model import BoltzmannGenerator, energy
from boltzbench.samplers.moves import Move, Walkers


def push_from_base(bg: BoltzmannGenerator, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A thermal-base flow's map x = F(y) = P(T(P⁻¹ y)) of configurations y (as ``push_base``)
    and log|det ∂x/∂y| (float64)."""
    h, ld_h = bg.prep.inverse(bg.to_flow(y))
    x, ld = bg.push(h)
    return x, (ld_h + ld).double()


def pull_to_base(bg: BoltzmannGenerator, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Its inverse y = F⁻¹(x) (flow dtype) and log|det ∂y/∂x| (float64)."""
    z, ld = bg.pull(bg.to_flow(x))
    y, ld0 = bg.prep(z)
    return y, (ld + ld0).double()


def exchange_proposal(bg: BoltzmannGenerator, system: System, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor,
                      v: torch.Tensor, beta: torch.Tensor, beta_b: torch.Tensor):
    """The learned exchange of walkers x (C, dof) at β with partners y at β_b, whose reduced
    energies at the target are u, v (C,): the proposal x' = F(y), y' = F⁻¹(x) (system dtype
    and device), u(x'), u(y') (charged), and the log acceptance ratio (float64, C)

        −β·u(x') − β_b·u(y') + β·u(x) + β_b·u(y) + log|det ∂F/∂y| + log|det ∂F⁻¹/∂x|.
    """
    x_new, ld_push = push_from_base(bg, y)
    y_new, ld_pull = pull_to_base(bg, x)
    dev = device_of(system)
    x_new, y_new = x_new.to(dtype=x.dtype, device=dev), y_new.to(dtype=x.dtype, device=dev)
    u_new, v_new = energy(system, x_new).to(u.device), energy(system, y_new).to(u.device)
    beta, beta_b = beta.double().to(u.device), beta_b.double().to(u.device)
    log_jac = (ld_push + ld_pull).to(u.device)
    log_ratio = -beta * u_new - beta_b * v_new + beta * u.double() + beta_b * v.double() + log_jac
    return x_new, y_new, u_new, v_new, log_ratio


class FlowMove(Move):
    """Independence MH (Gaussian base) or learned replica exchange (thermal base) with the
    frozen flow ``bg`` (see the module docstring). With a thermal base the batch is
    2·C walkers: targets 0..C−1 and their partners C..2C−1 (at the base's β)."""

    def __init__(self, bg: BoltzmannGenerator):
        super().__init__()
        self.bg = bg
        self.exchange = not isinstance(bg.base, GaussianBase)
        self.nonfinite = 0
        self._x: torch.Tensor | None = None      # the targets' positions whose log q is cached
        self._log_q: torch.Tensor | None = None  # Gaussian base: log q(x) of the cached targets

    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None:
        with torch.no_grad():
            accept = self._exchange(walkers, system, generator) if self.exchange else \
                self._independence(walkers, system, generator)
        self.record(accept)

    def _independence(self, walkers: Walkers, system: System, generator: torch.Generator) -> torch.Tensor:
        x, u, beta = walkers.x, walkers.u.double(), walkers.beta.double()
        x_new, log_q_new = self.bg.push_base(self.bg.draw_base(len(walkers), generator))
        x_new = x_new.to(dtype=x.dtype, device=device_of(system))
        u_new, log_q_new = energy(system, x_new).to(u.device), log_q_new.double().to(u.device)
        log_q = self._current_log_q(x)
        log_ratio = (-beta * u_new - log_q_new) - (-beta * u - log_q)
        accept = self._accept(log_ratio, x_new, generator)
        walkers.x = torch.where(accept[:, None], x_new, x)
        walkers.u = torch.where(accept, u_new, walkers.u.double())
        if accept.any():
            walkers.forces = None
        self._x, self._log_q = walkers.x.clone(), torch.where(accept, log_q_new, log_q)
        return accept

    def _current_log_q(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) (float64), recomputed only for rows that moved since the last call."""
        fresh = self._x is None or self._x.shape != x.shape
        moved = torch.ones(len(x), dtype=torch.bool, device=x.device) if fresh else (x != self._x).any(-1)
        log_q = torch.empty(len(x), dtype=torch.float64, device=x.device) if fresh else self._log_q.clone()
        if moved.any():
            y, ld = self.bg.pull(self.bg.to_flow(x[moved]))
            log_q[moved] = (self.bg.base.log_prob(y) + ld).double().to(x.device)
        return log_q

    def _exchange(self, walkers: Walkers, system: System, generator: torch.Generator) -> torch.Tensor:
        c = len(walkers) // 2
        u = walkers.u.double()
        x_new, y_new, u_new, v_new, log_ratio = exchange_proposal(
            self.bg, system, walkers.x[:c], walkers.x[c:], u[:c], u[c:], walkers.beta[:c], walkers.beta[c:])
        accept = self._accept(log_ratio, torch.cat([x_new, y_new], -1), generator)
        both = torch.cat([accept, accept])
        walkers.x = torch.where(both[:, None], torch.cat([x_new, y_new]), walkers.x)
        walkers.u = torch.where(both, torch.cat([u_new, v_new]), u)
        if accept.any():
            walkers.forces = None
        return accept

    def _accept(self, log_ratio: torch.Tensor, proposal: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        finite = torch.isfinite(log_ratio) & torch.isfinite(proposal).all(-1)
        self.nonfinite += int((~finite).sum())
        log_uniform = torch.log(torch.rand(log_ratio.shape, generator=generator, dtype=torch.float64,
                                           device=generator.device)).to(log_ratio.device)
        return finite & (log_uniform < log_ratio)
