"""Base distributions of the Boltzmann generator.

* :class:`GaussianBase` — the classic Boltzmann generator's latent (Noé, Olsson, Köhler &
  Wu, Science 365, eaaw1147 (2019)): N(0, 1) on real entries; on periodic entries (angles)
  the uniform density on [−π, π), the natural base on the torus (Rezende et al., ICML 2020).
* :class:`ThermalBase` — equilibrium configurations of the *same* system at a higher
  temperature, as Jung, Biroli & Berthier ("Normalizing flows as an enhanced sampling
  method for atomistic supercooled liquids", Mach. Learn.: Sci. Technol. 5, 035053 (2024),
  arXiv:2404.09914) do for glass formers: the flow maps high-T configurations to low-T
  ones. The base density is the high-temperature Boltzmann density, known up to its
  normalization, log q₀(x) = −β_base·u(x) + const (β_base = T_target/T_base < 1 relative to
  the target), which is all that self-normalized reweighting and Metropolis–Hastings need.
  Its configurations come from C Markov chains at β_base — Metropolis MC (``metropolis_step``)
  or BAOAB Langevin MD (``baoab_step``), both with their per-chain ``beta`` — run through
  the system's charged ``energy``/``energy_and_forces``: whoever draws pays (setup while
  training, sampling afterwards). Consecutive draws of a chain are ``stride`` steps apart,
  so they are correlated; the Kish ESS of the reweighted samples does not see that.
"""

from __future__ import annotations

import math

import torch

from boltzbench.contracts import System
from boltzbench.samplers.mc import metropolis_step
from boltzbench.samplers.md import baoab_step

LOG_2PI = math.log(2.0 * math.pi)


class GaussianBase:
    """N(0, I) on real entries, uniform on [−π, π) on periodic ones.

    ``defensive`` = α > 0 turns the real part into the mixture (1 − α)·N(0, I) + α·N(0, τ²I),
    τ = ``defensive_scale`` — defensive importance sampling (Hesterberg, Technometrics 37,
    185 (1995)): pushed through the flow, the wide component puts heavier tails under q, so
    the weights p/q stay bounded where the trained flow's tails are too light. The density
    stays exact. The sampler trains with α = 0 and samples with the α it is given.
    """

    kind = "gaussian"

    def __init__(self, periodic: torch.Tensor, defensive: float = 0.0, defensive_scale: float = 2.0):
        self.periodic = periodic.bool().cpu()
        self.defensive, self.defensive_scale = float(defensive), float(defensive_scale)

    def with_defensive(self, defensive: float, defensive_scale: float) -> "GaussianBase":
        """The same base with the defensive mixture (α, τ) (sampling proposal)."""
        return type(self)(self.periodic, defensive, defensive_scale)

    def sample(self, n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        """(n, D) latent draws on the generator's device."""
        shape, device = (n, len(self.periodic)), generator.device
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        uniform = (torch.rand(shape, generator=generator, dtype=dtype, device=device) * 2.0 - 1.0) * math.pi
        if self.defensive > 0:
            wide = torch.rand(n, 1, generator=generator, dtype=dtype, device=device) < self.defensive
            z = torch.where(wide, self.defensive_scale * z, z)
        return torch.where(self.periodic.to(device), uniform, z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        periodic = self.periodic.to(z.device)
        n_real = int((~periodic).sum())
        real_sq = torch.where(periodic, torch.zeros_like(z), z * z).sum(-1)
        log_p = -0.5 * real_sq - 0.5 * n_real * LOG_2PI
        if self.defensive > 0:
            tau = self.defensive_scale
            log_wide = -0.5 * real_sq / tau**2 - 0.5 * n_real * LOG_2PI - n_real * math.log(tau)
            log_p = torch.logaddexp(log_p + math.log1p(-self.defensive), log_wide + math.log(self.defensive))
        return log_p - int(periodic.sum()) * LOG_2PI


class ThermalBase:
    """C chains of the system at β_base (relative to the target), drawn ``stride`` steps apart.

    Parameters
    ----------
    system : the target system; its ledger is charged for every step.
    beta : inverse temperature of the base relative to the target (0 < β ≤ 1).
    x_init : (C, dof) starting configurations of the C chains (run in parallel, batched).
    kind : "mc" (random-walk Metropolis, step σ) or "md" (BAOAB, time step dt).
    step : MC step σ or MD time step.
    stride : steps of every chain between two draws.
    """

    kind = "thermal"

    def __init__(self, system: System, beta: float, x_init: torch.Tensor, kind: str, step: float,
                 stride: int, generator: torch.Generator, friction: float = 1.0):
        self.system, self.beta, self.kind_of_chain = system, float(beta), kind
        self.step, self.stride, self.friction = float(step), int(stride), float(friction)
        self.x = x_init.clone()
        if kind == "md":
            self.u, self.f = system.energy_and_forces(self.x)
            self.v = torch.randn(self.x.shape, generator=generator, dtype=self.x.dtype,
                                 device=self.x.device) / math.sqrt(self.beta)
        else:
            self.u, self.f, self.v = system.energy(self.x), None, None
        self.accepted = 0.0
        self.moves = 0
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def n_chains(self) -> int:
        return self.x.shape[0]

    def advance(self, n_steps: int, generator: torch.Generator, adapt: bool = False,
                target_acceptance: float = 0.4) -> None:
        """Move every chain ``n_steps`` steps. ``adapt`` (warm-up only) tunes the MC step
        towards ``target_acceptance`` every 20 steps (σ ← σ·exp(2(acc − target)))."""
        window_acc, window = 0.0, 0
        for _ in range(n_steps):
            if self.kind_of_chain == "md":
                self.x, self.v, self.u, self.f = baoab_step(self.x, self.v, self.f, self.system, self.step,
                                                            self.friction, 1.0, generator, beta=self.beta)
                continue
            self.x, self.u, accept = metropolis_step(self.x, self.u, self.system, self.step, generator,
                                                     beta=self.beta)
            acc = float(accept.double().mean())
            self.accepted += acc
            self.moves += 1
            window_acc, window = window_acc + acc, window + 1
            if adapt and window == 20:
                self.step *= math.exp(2.0 * (window_acc / window - target_acceptance))
                window_acc, window = 0.0, 0

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` base configurations (n, dof) and their reduced energies u at the *target*
        (so log q₀ = −β·u); chains advance ``stride`` steps per C draws."""
        have = sum(len(u) for _, u in self._buffer)
        while have < n:
            self.advance(self.stride, generator)
            self._buffer.append((self.x.clone(), self.u.clone()))
            have += self.n_chains
        x = torch.cat([b[0] for b in self._buffer])
        u = torch.cat([b[1] for b in self._buffer])
        self._buffer = [(x[n:], u[n:])] if len(u) > n else []
        return x[:n], u[:n]

    def log_prob_unnormalized(self, u: torch.Tensor) -> torch.Tensor:
        """log q₀ = −β_base·u (u: reduced energies at the target)."""
        return -self.beta * u

    def acceptance(self) -> float | None:
        return self.accepted / self.moves if self.moves else None

    def state(self) -> dict:
        """What persistence stores to continue the chains in another run."""
        state = {"x": self.x.clone(), "u": self.u.clone(), "step": self.step}
        if self.v is not None:
            state["v"], state["f"] = self.v.clone(), self.f.clone()
        return state

    def load_state(self, state: dict) -> None:
        self.x, self.u, self.step = state["x"].clone(), state["u"].clone(), float(state["step"])
        if "v" in state:
            self.v, self.f = state["v"].clone(), state["f"].clone()
        self._buffer = []

    @classmethod
    def restore(cls, system: System, beta: float, kind: str, stride: int, state: dict,
                friction: float = 1.0) -> "ThermalBase":
        """A base whose chains continue from ``state`` (no new evaluations)."""
        base = cls.__new__(cls)
        base.system, base.beta, base.kind_of_chain = system, float(beta), kind
        base.stride, base.friction = int(stride), float(friction)
        base.v = base.f = None
        base.accepted, base.moves, base._buffer = 0.0, 0, []
        base.load_state(state)
        return base
