"""An anisotropic harmonic oscillator: the system whose answers are known at every temperature.

    u(x) = Σ_k x_k² / (2σ_k²),   k = 1..dim   (reduced energy at the target, kT = 1).

At inverse temperature β relative to the target the density exp(−β·u) is a product of
Gaussians N(0, σ_k²/β), so everything is exact (any statistical-mechanics text, e.g.
Chandler, *Introduction to Modern Statistical Mechanics*, 1987, §3):

* Z(β) = Π_k (2πσ_k²/β)^{1/2}, hence ln Z(1)/Z(β₀) = (dim/2)·ln β₀;
* ⟨u⟩_β = dim/(2β) (equipartition), Var_β(u) = dim/(2β²);
* reference samples are drawn exactly.

Tempering samplers (parallel tempering, population annealing) are checked against these.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.special
import torch

from boltzbench.contracts import Reference, System, param, require

REFERENCE_SEED = 1925
REFERENCE_SIZE = 100_000
GRID_SIZE = 4001


@dataclass
class Harmonic(System):
    """Harmonic oscillator in ``dim`` dimensions, widths σ_k; exact at every temperature."""

    name: ClassVar[str] = "harmonic"
    description: ClassVar[str] = "harmonic oscillator, exact partition function at every temperature"
    citation: ClassVar[str] = "Gaussian integrals; Z(β) = Π_k (2πσ_k²/β)^(1/2)"
    default_metrics: ClassVar[tuple[str, ...]] = ("energy_w1", "x1_w1", "mean_energy_error", "ess")

    dim: int = param(2, "number of degrees of freedom")
    sigma: float | list[float] = param(1.0, "standard deviation σ_k at the target: one value for "
                                            "every dimension, or a list of dim values")

    def __post_init__(self) -> None:
        require(isinstance(self.dim, int) and self.dim >= 1, "dim", f"must be an integer >= 1, got {self.dim!r}")
        if isinstance(self.sigma, (list, tuple)):
            require(len(self.sigma) == self.dim, "sigma",
                    f"a list needs one value per dimension (dim = {self.dim}), got {len(self.sigma)}")
            require(all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in self.sigma),
                    "sigma", f"must be numbers, got {self.sigma!r}")
            self.sigma = [float(s) for s in self.sigma]
            values = self.sigma
        else:
            self.sigma = float(self.sigma)
            values = [self.sigma]
        require(all(0 < s < math.inf for s in values), "sigma", f"must be finite and > 0, got {self.sigma!r}")

    @property
    def dof(self) -> int:
        return self.dim

    @functools.cached_property
    def sigmas(self) -> torch.Tensor:
        """σ_k as a (dim,) tensor."""
        values = self.sigma if isinstance(self.sigma, list) else [self.sigma] * self.dim
        return torch.tensor(values, dtype=self.dtype)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x / self.sigmas) ** 2).sum(dim=1)

    def _energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._energy(x), -x / self.sigmas**2

    def observables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x1": x[:, 0]}

    def sample_initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Over-dispersed start: N(0, (2σ_k)²), twice the equilibrium width at the target."""
        return 2.0 * self.sigmas * torch.randn(n, self.dim, generator=generator, dtype=self.dtype)

    # exact answers ---------------------------------------------------------------
    def log_partition(self, beta: float = 1.0) -> float:
        """ln Z(β) = Σ_k ½·ln(2πσ_k²/β), the full Gaussian normalization."""
        return float(0.5 * torch.log(2 * math.pi * self.sigmas**2 / beta).sum())

    def mean_energy(self, beta: float = 1.0) -> float:
        """⟨u⟩_β = dim/(2β): each quadratic degree of freedom holds kT_eff/2 = 1/(2β)."""
        return self.dim / (2.0 * beta)

    def sample_exact(self, n: int, generator: torch.Generator, beta: float = 1.0) -> torch.Tensor:
        """``n`` exact draws from exp(−β·u): x_k ~ N(0, σ_k²/β). Not charged (analysis)."""
        return self.sigmas / math.sqrt(beta) * torch.randn(n, self.dim, generator=generator, dtype=self.dtype)

    def reference(self) -> Reference:
        sigma = tuple(self.sigma) if isinstance(self.sigma, list) else (self.sigma,) * self.dim
        return _exact_reference(sigma)


@functools.lru_cache(maxsize=8)
def _exact_reference(sigma: tuple[float, ...]) -> Reference:
    """Exact scalars, the exact x1 CDF on a grid (±8σ₁) and i.i.d. exact samples."""
    dim = len(sigma)
    rng = np.random.default_rng(REFERENCE_SEED)
    x = rng.normal(0.0, 1.0, (REFERENCE_SIZE, dim)) * np.asarray(sigma)
    energies = 0.5 * np.sum((x / np.asarray(sigma)) ** 2, axis=1)
    grid = np.linspace(-8 * sigma[0], 8 * sigma[0], GRID_SIZE)
    cdf = 0.5 * (1.0 + scipy.special.erf(grid / (math.sqrt(2.0) * sigma[0])))
    return Reference(
        energies=energies,
        observables={"x1": x[:, 0]},
        exact={
            "mean_energy": dim / 2.0,
            "var_energy": dim / 2.0,
            "log_partition": float(np.sum(0.5 * np.log(2 * math.pi * np.asarray(sigma) ** 2))),
        },
        cdfs={"x1": (grid, cdf)},
        provenance={
            "method": "exact: Gaussian integrals; i.i.d. Gaussian samples; erf CDF",
            "samples": REFERENCE_SIZE,
            "seed": REFERENCE_SEED,
            "params": {"sigma": list(sigma)},
        },
    )
