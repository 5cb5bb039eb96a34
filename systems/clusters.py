"""Small open particle systems of the Boltzmann-generator literature: DW-4 and LJ-13.

Both are from J. Köhler, L. Klein & F. Noé, "Equivariant flows: exact likelihood generative
learning for symmetric densities", ICML 2020 (PMLR 119), arXiv:2006.02425, Sec. 6, and are
implemented here with the convention of the published benchmark code, ``bgflow``
(github.com/noegroup/bgflow): ``MultiDoubleWellPotential`` in
``bgflow/distribution/energy/multi_double_well_potential.py`` and ``LennardJonesPotential``
in ``bgflow/distribution/energy/lennard_jones.py``.

* ``dw4``: 4 particles in 2D, U = Σ_{i<j} [a(d_ij − d0) + b(d_ij − d0)² + c(d_ij − d0)⁴] with
  a = 0, b = −4, c = 0.9, d0 = 4. The convention was checked in the code: bgflow's
  ``compute_distances`` returns the N(N−1)/2 distances i < j and the energy sums the pair
  terms with no prefactor (there ``a`` is the quartic and ``c`` the constant coefficient: the
  call ``a=0.9, b=-4, c=0, offset=4`` used by later benchmarks is this potential). The paper
  writes it, as far as recalled here (its text was not retrievable), as 1/(2τ)·Σ_{i,j} over
  ordered pairs i ≠ j, which is the same sum over unordered pairs divided by τ.
  Here u = U/kT with kT = ``temperature`` (τ = 1 in the paper). The pair minima sit at
  d = d0 ± sqrt(−b/(2c)) ≈ 2.51 and 5.49. The density is invariant under translations, so it is
  not normalizable in R^8: bgflow works in centre-of-mass-free coordinates; here starts are
  centred and energies and observables are translation invariant, while a sampler's centre of
  mass may drift freely.
* ``lj13``: 13 particles in 3D, U = Σ_{i<j} ε[(r_m/r_ij)¹² − 2(r_m/r_ij)⁶]
  + (k/2)·Σ_i |x_i − x̄|², ε = 1, r_m = 1 (so σ = r_m/2^{1/6}), k = ``oscillator_scale`` = 1,
  x̄ the (unweighted) centre of mass. bgflow (checked in the code) sums the LJ term over
  ordered pairs and divides by 2, and adds ``0.5 * (x - mean).pow(2).sum() * oscillator_scale``
  with ``oscillator_scale = 1`` by default; the energy has no temperature factor there (τ = 1);
  here u = U/kT, restraint included. No cutoff. The 13-particle global minimum (icosahedron)
  of the LJ term is −44.326801 ε (Wales & Doye, J. Phys. Chem. A 101, 5111 (1997)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from boltzbench.contracts import param, require
from boltzbench.systems.particles import (R_MIN_FRACTION, PairTable, ParticleSystem, device_param, kernel_param, double_well,
                                          lennard_jones, precision_param)

BGFLOW = "bgflow (github.com/noegroup/bgflow), MultiDoubleWellPotential / LennardJonesPotential"


def _no_cutoff(n: int) -> torch.Tensor:
    rc2 = torch.full((n, n), math.inf, dtype=torch.float64)
    rc2.fill_diagonal_(0.0)
    return rc2


@dataclass
class DoubleWell4(ParticleSystem):
    """DW-4: four particles in 2D with a double-well pair potential (Köhler et al. 2020)."""

    name: ClassVar[str] = "dw4"
    reference_recipe: ClassVar[dict] = {  # parallel tempering, Metropolis local moves
        "sampler": "pt", "params": {"n_chains": 16, "t_max": 5.0}, "max_evals": 4e6,
        "n_samples": 20000, "burn_in": 0.1}
    description: ClassVar[str] = "DW-4: 4 particles in 2D, pairwise double well (Köhler, Klein & Noé 2020)"
    citation: ClassVar[str] = "J. Köhler, L. Klein & F. Noé, ICML 2020, arXiv:2006.02425; convention of " + BGFLOW
    units: ClassVar[str] = "reduced units of the potential (length, energy), kB = 1"
    n_particles: ClassVar[int] = 4  # type: ignore[misc]
    dim: ClassVar[int] = 2  # type: ignore[misc]

    temperature: float = param(1.0, "kT in the energy unit of the potential (τ of the paper)")
    a: float = param(0.0, "linear coefficient of (d − d0)")
    b: float = param(-4.0, "quadratic coefficient of (d − d0); < 0 for a double well")
    c: float = param(0.9, "quartic coefficient of (d − d0); > 0 for a bound potential")
    d0: float = param(4.0, "offset d0 of the pair distance (the barrier top when a = 0)")
    precision: str = precision_param()
    device: str = device_param()
    kernel: str = kernel_param()

    def __post_init__(self) -> None:
        self._check_backend()
        self._check_temperature()
        require(math.isfinite(self.c) and self.c > 0, "c", f"must be > 0 (quartic confinement), got {self.c}")
        require(math.isfinite(self.d0) and self.d0 > 0, "d0", f"must be > 0, got {self.d0}")

    def pair_table(self) -> PairTable:
        n = self.n_particles
        # r is clamped only to give coincident particles a direction-free, finite force
        return PairTable(double_well, rc2=_no_cutoff(n), r2_min=(1e-6 * self.d0) ** 2,
                         params={"a": self.a, "b": self.b, "c": self.c, "d0": self.d0})

    def _initial_positions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Gaussian positions, standard deviation d0/2 per coordinate, centre of mass at 0."""
        x = 0.5 * self.d0 * torch.randn(n, self.n_particles, self.dim, generator=generator, dtype=torch.float64,
                                        device=generator.device)
        return x - x.mean(1, keepdim=True)


@dataclass
class LennardJones13(ParticleSystem):
    """LJ-13: a 13-particle Lennard-Jones cluster in 3D held by a harmonic restraint to its
    centre of mass (Köhler et al. 2020)."""

    name: ClassVar[str] = "lj13"
    reference_recipe: ClassVar[dict] = {  # parallel tempering, Langevin local moves
        "sampler": "pt", "params": {"n_chains": 16, "t_max": 5.0, "move": "md", "dt": 0.005},
        "max_evals": 4e6, "n_samples": 20000, "burn_in": 0.1}
    description: ClassVar[str] = "LJ-13: 13-particle Lennard-Jones cluster in 3D with a centre-of-mass restraint"
    citation: ClassVar[str] = "J. Köhler, L. Klein & F. Noé, ICML 2020, arXiv:2006.02425; convention of " + BGFLOW
    units: ClassVar[str] = "reduced units: r_m, ε, kB = 1"
    n_particles: ClassVar[int] = 13  # type: ignore[misc]
    dim: ClassVar[int] = 3  # type: ignore[misc]

    temperature: float = param(1.0, "kT in units of ε (τ of the paper)")
    epsilon: float = param(1.0, "LJ well depth ε")
    rm: float = param(1.0, "LJ minimum distance r_m = 2^(1/6)·σ")
    oscillator_scale: float = param(1.0, "force constant k of the restraint (k/2)·Σ|x_i − x̄|²; 0 disables it")
    precision: str = precision_param()
    device: str = device_param()
    kernel: str = kernel_param()

    def __post_init__(self) -> None:
        self._check_backend()
        self._check_temperature()
        require(math.isfinite(self.epsilon) and self.epsilon > 0, "epsilon", f"must be > 0, got {self.epsilon}")
        require(math.isfinite(self.rm) and self.rm > 0, "rm", f"must be > 0, got {self.rm}")
        require(math.isfinite(self.oscillator_scale) and self.oscillator_scale >= 0, "oscillator_scale",
                f"must be >= 0, got {self.oscillator_scale}")

    def pair_table(self) -> PairTable:
        n = self.n_particles
        sigma = self.rm / 2 ** (1 / 6)
        full = torch.ones(n, n, dtype=torch.float64)
        return PairTable(lennard_jones, rc2=_no_cutoff(n), r2_min=(R_MIN_FRACTION * sigma) ** 2,
                         params={"c12": self.epsilon * self.rm ** 12 * full,
                                 "c6": 2 * self.epsilon * self.rm ** 6 * full, "shift": 0.0 * full})

    def _external(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k/2)Σ|x_i − x̄|² and its forces −k(x_i − x̄) (the x̄ terms cancel: Σ(x_i − x̄) = 0)."""
        rel = x - x.mean(1, keepdim=True)
        return 0.5 * self.oscillator_scale * (rel * rel).sum((1, 2)), -self.oscillator_scale * rel

    def _external_change(self, x: torch.Tensor, i: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Change of (k/2)Σ|x_j − x̄|² = (k/2)(Σ|x_j|² − N|x̄|²) when x_i → x_i + δ:
        (k/2)(|x_i + δ|² − |x_i|² − 2x̄·δ − |δ|²/N). O(1) per replica given x̄."""
        b = torch.arange(x.shape[0], device=x.device)
        old = x[b, i]
        delta = new - old
        mean = x.mean(1)
        change = (new * new).sum(-1) - (old * old).sum(-1) - 2 * (mean * delta).sum(-1) \
            - (delta * delta).sum(-1) / self.n_particles
        return 0.5 * self.oscillator_scale * change

    def _initial_positions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform positions in a ball of radius 1.2·r_m around the origin (about the size of the
        13-particle icosahedron, whose shell sits at ≈ 0.96·r_m), relaxed afterwards."""
        direction = torch.randn(n, self.n_particles, self.dim, generator=generator, dtype=torch.float64,
                                device=generator.device)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        radius = 1.2 * self.rm * torch.rand(n, self.n_particles, 1, generator=generator, dtype=torch.float64,
                                            device=generator.device) ** (1 / 3)
        x = direction * radius
        return x - x.mean(1, keepdim=True)
