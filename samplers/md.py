"""Langevin molecular dynamics with the BAOAB splitting, many chains batched in one tensor.

BAOAB (Leimkuhler & Matthews, Appl. Math. Res. Express 2013, 34–56; J. Chem. Phys. 138,
174102 (2013)): a half kick (B), a half drift (A), an exact Ornstein–Uhlenbeck step of the
velocities (O), a half drift, a half kick. Its configurational distribution is exact to
O(dt²) with an unusually small constant, which is why it is the MD baseline here. In the
reduced units of the System contract (u = U/kT, forces −∇u) the thermal velocity variance
is 1/m, so with mass m the O step is v ← c·v + sqrt((1 − c²)/m)·ξ, c = exp(−γ·dt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch

from boltzbench.contracts import Budget, Snapshot, System, param, require
from boltzbench.samplers.chains import ChainSampler, ChainTrace


def baoab_step(x, v, f, system: System, dt: float, friction: float, mass: float,
               generator: torch.Generator, beta=None):
    """One BAOAB step of every chain. Returns (x, v, u, f) at the new positions.

    ``beta`` (optional, (B,) tensor or float): each chain's inverse temperature relative to
    the target, i.e. kT_eff = 1/β in the target's reduced units. The chain then samples
    exp(−β·(u + m·v²/2)): the kicks keep the target forces f = −∇u (u and f are returned
    at the target, unscaled) and the O step thermalizes the velocities at kT_eff,
    v ← c·v + sqrt((1 − c²)/(β·m))·ξ. (Kicking with β·f instead would need velocity
    variance 1/m; pairing β·f with 1/(β·m) samples exp(−β²·u).) ``beta=None`` is β = 1.
    """
    c = math.exp(-friction * dt)
    v = v + 0.5 * dt * f / mass
    x = x + 0.5 * dt * v
    noise = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
    if beta is None:
        v = c * v + math.sqrt((1.0 - c * c) / mass) * noise
    else:
        beta = torch.as_tensor(beta, dtype=v.dtype, device=v.device)
        scale = torch.sqrt((1.0 - c * c) / (mass * beta))
        v = c * v + (scale[:, None] if scale.dim() == 1 else scale) * noise
    x = x + 0.5 * dt * v
    u, f = system.energy_and_forces(x)
    v = v + 0.5 * dt * f / mass
    return x, v, u, f


@dataclass
class LangevinMD(ChainSampler):
    """Underdamped Langevin dynamics (BAOAB), independent chains batched."""

    name: ClassVar[str] = "md"
    description: ClassVar[str] = "Langevin MD, BAOAB integrator, batched independent chains"

    dt: float = param(0.01, "time step, in the system's reduced time unit")
    friction: float = param(1.0, "Langevin friction γ (inverse time)")
    mass: float = param(1.0, "mass of every degree of freedom (torch backend)")
    backend: str = param("torch", "'torch' (BAOAB in reduced units) or 'openmm' (LangevinMiddle on "
                                  "the system's OpenMM twin: dt in ps, friction in 1/ps, masses from the twin)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.dt > 0, "dt", f"must be > 0, got {self.dt}")
        require(self.friction > 0, "friction", f"must be > 0, got {self.friction}")
        require(self.mass > 0, "mass", f"must be > 0, got {self.mass}")
        require(self.backend in ("torch", "openmm"), "backend",
                f"unknown backend {self.backend!r}; valid choices: torch, openmm")

    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        if self.backend == "openmm":
            from boltzbench.samplers.openmm_md import run_openmm_langevin

            yield from run_openmm_langevin(self, system, budget, generator)
            return
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        x = system.sample_initial(self.n_chains, generator)
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) / math.sqrt(self.mass)
        u, f = system.energy_and_forces(x)
        kinetic = torch.zeros((), dtype=x.dtype, device=x.device)
        while not budget.exhausted(ledger):
            x, v, u, f = baoab_step(x, v, f, system, self.dt, self.friction, self.mass, generator)
            kinetic += 0.5 * self.mass * (v * v).mean()
            trace.step(x, u)
            if trace.ready and schedule.due(ledger):  # a snapshot due before the first kept sample waits
                # kinetic temperature in units of the target kT: 1 at equilibrium
                yield trace.snapshot(ledger, {"kinetic_temperature": float(2 * kinetic / trace.steps)})
        if not trace.ready:
            trace.snapshot(ledger, {})  # raises: the budget ended before the first kept sample
