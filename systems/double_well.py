"""Noé's two-dimensional double well, with an exact reference by quadrature.

    U(x) = a/4·x1⁴ − b/2·x1² + c·x1 + d/2·x2²,   a = 1, b = 6, c = 1, d = 1,

sampled at kT = ``temperature`` (Noé, Olsson, Köhler & Wu, "Boltzmann generators: Sampling
equilibrium states of many-body systems with deep learning", Science 365, eaaw1147 (2019),
Fig. 2 and supplementary text). The density factorizes, p(x) ∝ exp(−u1(x1))·exp(−d·x2²/2kT),
so every reference quantity is a one-dimensional integral:

* the x1 marginal p(x1) = exp(−u1(x1))/Z1, its CDF on a fine grid;
* ⟨u⟩ = ⟨u1⟩ + 1/2 (the harmonic x2 term contributes kT/2);
* ΔF = F_right − F_left = −ln(P(x1 > 0)/P(x1 < 0)), in kT.

With c = 1 the left well (x1 ≈ −2.5) is the deeper one; at kT = 1 the barrier seen from it
is ≈ 11.5 kT, so local samplers almost never cross and the right well holds ≈ 0.7 % of the
mass. Noé et al. report about 4·10⁶ Metropolis steps (step size 0.1) per round trip.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.integrate
import torch

from boltzbench.contracts import Reference, System, param, require

REFERENCE_SEED = 2019
REFERENCE_SIZE = 100_000
GRID_SIZE = 20_001


@dataclass
class DoubleWell(System):
    """Noé et al. (2019) 2D double well; exact reference by quadrature."""

    name: ClassVar[str] = "double_well"
    description: ClassVar[str] = "Noé et al. 2019 2D double well, exact reference by quadrature"
    citation: ClassVar[str] = "Noé, Olsson, Köhler, Wu, Science 365, eaaw1147 (2019)"
    states: ClassVar[tuple[str, ...]] = ("left", "right")
    default_metrics: ClassVar[tuple[str, ...]] = (
        "energy_w1", "x1_w1", "mean_energy_error", "delta_f_error", "ess",
    )

    a: float = param(1.0, "quartic coefficient of x1")
    b: float = param(6.0, "quadratic coefficient of x1 (barrier)")
    c: float = param(1.0, "linear tilt of x1 (asymmetry between the wells)")
    d: float = param(1.0, "harmonic coefficient of x2")
    temperature: float = param(1.0, "kT, in the energy units of U")

    def __post_init__(self) -> None:
        require(self.a > 0, "a", f"must be > 0 for a bound density, got {self.a}")
        require(self.d > 0, "d", f"must be > 0 for a bound density, got {self.d}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        self.minima()  # raises for parameters with a single well

    @property
    def dof(self) -> int:
        return 2

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, 0], x[:, 1]
        u = self.a / 4 * x1**4 - self.b / 2 * x1**2 + self.c * x1 + self.d / 2 * x2**2
        return u / self.temperature

    def _energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, 0], x[:, 1]
        f1 = -(self.a * x1**3 - self.b * x1 + self.c)
        f2 = -self.d * x2
        return self._energy(x), torch.stack([f1, f2], dim=1) / self.temperature

    def observables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x1": x[:, 0], "x2": x[:, 1]}

    def state_of(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] > 0).long()

    def minima(self) -> np.ndarray:
        """The x1 positions of the two wells' minima (outer real roots of U1' = 0)."""
        roots = np.roots([self.a, 0.0, -self.b, self.c])
        real = np.sort(roots[np.abs(roots.imag) < 1e-9].real)
        require(len(real) == 3, "b", "the parameters give a single well, not a double well")
        return real[[0, 2]]

    def sample_initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Each chain starts at one of the two minima (chosen with probability 1/2) plus
        N(0, 0.1²) noise: a start that knows where the states are but not their weights."""
        wells = torch.tensor(self.minima(), dtype=self.dtype)
        which = torch.randint(0, 2, (n,), generator=generator)
        x = 0.1 * torch.randn(n, 2, generator=generator, dtype=self.dtype)
        x[:, 0] += wells[which]
        return x

    def reference(self) -> Reference:
        return _quadrature_reference(self.a, self.b, self.c, self.d, self.temperature)


def _u1(x1: np.ndarray, a: float, b: float, c: float, kT: float) -> np.ndarray:
    return (a / 4 * x1**4 - b / 2 * x1**2 + c * x1) / kT


@functools.lru_cache(maxsize=8)
def _quadrature_reference(a: float, b: float, c: float, d: float, kT: float) -> Reference:
    """Exact quantities by adaptive quadrature, the x1 CDF on a fine grid, and i.i.d.
    reference samples drawn exactly (x1 by inverse CDF, x2 from its Gaussian)."""
    # Grid wide enough that exp(−u1) has fallen by e⁻⁶⁰ from its maximum at both ends.
    probe = np.linspace(-50, 50, 200_001)
    u_probe = _u1(probe, a, b, c, kT)
    inside = probe[u_probe - u_probe.min() < 60.0]
    lo, hi = inside.min() - 0.1, inside.max() + 0.1
    u_min = u_probe.min()

    def density(x1: float) -> float:
        return float(np.exp(-(_u1(np.asarray(x1), a, b, c, kT) - u_min)))

    def integral(f, left, right) -> float:
        return scipy.integrate.quad(f, left, right, epsabs=0, epsrel=1e-12, limit=500)[0]

    z_left, z_right = integral(density, lo, 0.0), integral(density, 0.0, hi)
    z = z_left + z_right
    mean_u1 = (integral(lambda x: _u1(np.asarray(x), a, b, c, kT) * density(x), lo, 0.0)
               + integral(lambda x: _u1(np.asarray(x), a, b, c, kT) * density(x), 0.0, hi)) / z
    mean_x1 = (integral(lambda x: x * density(x), lo, 0.0) + integral(lambda x: x * density(x), 0.0, hi)) / z

    grid = np.linspace(lo, hi, GRID_SIZE)
    p = np.exp(-(_u1(grid, a, b, c, kT) - u_min))
    cdf = scipy.integrate.cumulative_trapezoid(p, grid, initial=0.0)
    cdf /= cdf[-1]

    rng = np.random.default_rng(REFERENCE_SEED)
    x1 = np.interp(rng.random(REFERENCE_SIZE), cdf, grid)
    x2 = rng.normal(0.0, np.sqrt(kT / d), REFERENCE_SIZE)
    energies = _u1(x1, a, b, c, kT) + d / 2 * x2**2 / kT

    return Reference(
        energies=energies,
        observables={"x1": x1, "x2": x2, "positions": np.stack([x1, x2], axis=1)},
        exact={
            "mean_energy": mean_u1 + 0.5,
            "mean_x1": mean_x1,
            "p_right": z_right / z,
            "delta_f": -np.log(z_right / z_left),
        },
        cdfs={"x1": (grid, cdf)},
        provenance={
            "method": "adaptive quadrature (scipy.integrate.quad, rtol 1e-12) for exact "
                      "scalars; trapezoid CDF on a grid; i.i.d. samples by inverse CDF",
            "grid": [float(lo), float(hi), GRID_SIZE],
            "samples": REFERENCE_SIZE,
            "seed": REFERENCE_SEED,
            "params": {"a": a, "b": b, "c": c, "d": d, "temperature": kT},
        },
    )
