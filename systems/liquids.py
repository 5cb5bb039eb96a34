"""Glass-forming liquids in a periodic box: Kob-Andersen mixtures and polydisperse soft spheres.

Lennard-Jones mixtures (``ka3d``, ``ka2d``, ``ternary2d``). Species α, β interact through
φ_αβ(r) = 4ε_αβ[(σ_αβ/r)¹² − (σ_αβ/r)⁶] − φ_αβ^LJ(r_c,αβ) for r < r_c,αβ = 2.5·σ_αβ and 0
beyond (truncated and shifted), all masses m = 1, reduced units σ_AA = ε_AA = kB = 1. The box
is a cube (square) of edge L = (N/ρ)^(1/d). Species counts: round(x_k·N) particles of every
species but the last (halves rounded up), the rest of the last; for 80:20 that is round(0.8·N)
A particles. Particles 0..N_A−1 are A, then B, then C.

* ``ka3d`` — W. Kob & H. C. Andersen, Phys. Rev. Lett. 73, 1376 (1994) and Phys. Rev. E 51,
  4626 (1995): A:B = 80:20, σ_AB = 0.8, σ_BB = 0.88, ε_AB = 1.5, ε_BB = 0.5, ρ = 1.2.
  Mode-coupling temperature T_MCT ≈ 0.435 (Kob & Andersen 1995). With r_c = 2.5 the
  minimum-image convention needs L ≥ 5, i.e. N ≥ 150 at ρ = 1.2.
* ``ka2d`` — the same pair parameters in two dimensions at A:B = 65:35, ρ = 1.2, the
  composition that resists crystallization in 2D: R. Brüning, D. A. St-Onge, S. Patterson &
  W. Kob, J. Phys.: Condens. Matter 21, 035117 (2009). N ≥ 30 at ρ = 1.2.
* ``ternary2d`` — the swap-compatible ternary family used by G. Jung, G. Biroli & L. Berthier,
  "Normalizing flows as an enhanced sampling method for atomistic supercooled liquids",
  Mach. Learn.: Sci. Technol. 5, 035053 (2024), arXiv:2404.09914, for their N = 43 benchmark
  in 2D. Its pair parameters are the ternary Kob-Andersen model "KA2" of A. D. S. Parmar,
  M. Ozawa & L. Berthier, Phys. Rev. Lett. 125, 085505 (2020), in which a third species C of
  intermediate size is added so that swap moves are accepted:
  σ_AA = 1, σ_AB = 0.8, σ_AC = 0.9, σ_BB = 0.88, σ_BC = 0.84, σ_CC = 0.94;
  ε_AA = 1, ε_AB = 1.5, ε_AC = 1.25, ε_BB = 0.5, ε_BC = 1.0, ε_CC = 0.75; r_c = 2.5·σ_αβ.
  These numbers were checked against the model file ``kob_andersen_2.json`` of D. Coslovich's
  model database *berni* (PyPI ``berni`` 0.2.1, "Ternary Kob-Andersen Lennard-Jones mixture,
  KA2 in the reference", DOI 10.1103/physrevlett.125.085505). NOT verified against the
  published text of Jung et al.: the composition and density of their 2D system could not be
  retrieved here. Stand-ins, both parameters: composition A:B:C = 0.55:0.30:0.15 (the 2D KA
  65:35 with part of A turned into C; for N = 43 this gives 24:13:6) and ρ = 1.2 (the 2D KA
  density, which with N = 43 gives the box edge L ≈ 5.99 quoted in the design card).

Polydisperse soft spheres (``soft_spheres``): A. Ninarello, L. Berthier & D. Coslovich,
"Models and algorithms for the next generation of glass transition studies", Phys. Rev. X 7,
021039 (2017), Eqs. (1)-(3): v(r) = (σ_ij/r)¹² + c0 + c2(r/σ_ij)² + c4(r/σ_ij)⁴ for
r < x_c·σ_ij, x_c = 1.25, c0 = −28/x_c¹², c2 = 48/x_c¹⁴, c4 = −21/x_c¹⁶ (v and v' vanish at
the cutoff), ε = 1; non-additive diameters σ_ij = (σ_i + σ_j)/2·(1 − 0.2·|σ_i − σ_j|);
P(σ) ∝ σ⁻³ on [σ_min, σ_max] with σ_min/σ_max = 0.449 and mean 1, hence
σ_max = (1 + 0.449)/(2·0.449) ≈ 1.614 and σ_min ≈ 0.724 (mean of σ⁻³ on [a, b] is
2ab/(a + b)); ρ = N/V = 1. The 2D version with the same potential is that of L. Berthier,
P. Charbonneau, A. Ninarello, M. Ozawa & S. Yaida, Nat. Commun. 10, 1508 (2019). Diameters
are drawn once per system instance by inverse-CDF sampling from a torch.Generator seeded
with ``diameter_seed``: two instances with the same parameters are identical. The box check
uses the largest possible cutoff 1.25·σ_max, so N ≥ 66 in 3D and N ≥ 17 in 2D.

Default temperatures are benchmark choices in the mildly supercooled regime, not values
from the papers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from boltzbench.contracts import param, require
from boltzbench.systems.particles import (R_MIN_FRACTION, PairTable, ParticleSystem, check_box,
                                          device_param, lennard_jones, precision_param, soft_sphere,
                                          species_counts)

LJ_CUTOFF = 2.5  # in units of σ_αβ


def lj_shift(cutoff: float = LJ_CUTOFF) -> float:
    """4[(1/x_c)¹² − (1/x_c)⁶]: the LJ energy at the cutoff, in units of ε."""
    return 4.0 * (cutoff ** -12 - cutoff ** -6)


@dataclass
class LennardJonesMixture(ParticleSystem):
    """A truncated-and-shifted Lennard-Jones mixture in a periodic box (Kob-Andersen family)."""

    spatial_dim: ClassVar[int] = 3
    species_names: ClassVar[tuple[str, ...]] = ("A", "B")
    #: σ_αβ and ε_αβ, symmetric tables indexed by species.
    sigma: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0, 0.8), (0.8, 0.88))
    epsilon: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0, 1.5), (1.5, 0.5))

    n_particles: int = param(256, "number of particles N")
    density: float = param(1.2, "number density ρ = N/V; the box edge is (N/ρ)^(1/d)")
    temperature: float = param(0.6, "kT in units of ε_AA")
    composition: tuple[float, ...] = param((0.8, 0.2), "fraction of each species (A, B, ...), summing to 1")
    verlet_skin: float = param(0.3, "skin of the Verlet neighbour list (length); 0 selects the dense all-pairs kernel")
    precision: str = precision_param()
    device: str = device_param()

    def __post_init__(self) -> None:
        self._check_backend()
        self._check_temperature()
        self._check_skin()
        k = len(self.species_names)
        require(math.isfinite(self.density) and self.density > 0, "density", f"must be > 0, got {self.density}")
        comp = tuple(self.composition)
        require(len(comp) == k and all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in comp)
                and abs(sum(comp) - 1.0) < 1e-6, "composition",
                f"must be {k} fractions > 0 for species {', '.join(self.species_names)} summing to 1, "
                f"got {list(comp)}")
        require(isinstance(self.n_particles, int) and self.n_particles >= k, "n_particles",
                f"must be an integer >= {k}, got {self.n_particles!r}")
        counts = species_counts(self.n_particles, comp)
        require(min(counts) >= 1, "n_particles",
                f"N = {self.n_particles} with composition {list(comp)} gives species counts {counts}; "
                f"every species needs at least one particle")
        cutoff = LJ_CUTOFF * max(max(row) for row in self.sigma)
        n_min = math.ceil(self.density * (2 * cutoff) ** self.dim - 1e-9)
        check_box("n_particles", self.box_edges[0], cutoff,
                  f"must be >= {n_min} at density {self.density} in {self.dim}D, got {self.n_particles}")

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.spatial_dim

    @property
    def box_edges(self) -> tuple[float, ...]:
        return (float((self.n_particles / self.density) ** (1.0 / self.dim)),) * self.dim

    @functools.cached_property
    def species(self) -> torch.Tensor:
        counts = species_counts(self.n_particles, tuple(self.composition))
        return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))

    @functools.cached_property
    def diameters(self) -> torch.Tensor:
        own = torch.tensor([self.sigma[a][a] for a in range(len(self.species_names))], dtype=torch.float64)
        return own[self.species]

    def pair_matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """σ_ij and ε_ij for every particle pair, (N, N) float64."""
        s = self.species
        sig = torch.tensor(self.sigma, dtype=torch.float64)[s[:, None], s[None, :]]
        eps = torch.tensor(self.epsilon, dtype=torch.float64)[s[:, None], s[None, :]]
        return sig, eps

    def pair_table(self) -> PairTable:
        sig, eps = self.pair_matrices()
        rc2 = (LJ_CUTOFF * sig) ** 2
        rc2.fill_diagonal_(0.0)
        return PairTable(lennard_jones, rc2=rc2, r2_min=float(R_MIN_FRACTION * sig.min()) ** 2,
                         params={"c12": 4 * eps * sig ** 12, "c6": 4 * eps * sig ** 6,
                                 "shift": eps * lj_shift()})

    def _initial_positions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.lattice_positions(n, generator)


@dataclass
class KobAndersen3D(LennardJonesMixture):
    """Kob-Andersen 80:20 binary Lennard-Jones mixture in 3D (Kob & Andersen 1994/95)."""

    name: ClassVar[str] = "ka3d"
    reference_recipe: ClassVar[dict] = {  # Langevin MD, 8 chains × 1000 time units (τ_α ≲ 10² at T = 0.6)
        "sampler": "md", "params": {"dt": 0.005, "n_chains": 8, "thin": 200}, "max_evals": 1.6e6,
        "n_samples": 2000, "burn_in": 0.2}
    description: ClassVar[str] = "Kob-Andersen 80:20 Lennard-Jones mixture, 3D, ρ = 1.2, periodic"
    citation: ClassVar[str] = "W. Kob & H. C. Andersen, PRL 73, 1376 (1994); PRE 51, 4626 (1995)"


@dataclass
class KobAndersen2D(LennardJonesMixture):
    """Kob-Andersen 65:35 binary Lennard-Jones mixture in 2D (Brüning et al. 2009)."""

    name: ClassVar[str] = "ka2d"
    reference_recipe: ClassVar[dict] = {
        "sampler": "md", "params": {"dt": 0.005, "n_chains": 8, "thin": 200}, "max_evals": 4e6,
        "n_samples": 4000, "burn_in": 0.2}
    description: ClassVar[str] = "Kob-Andersen 65:35 Lennard-Jones mixture, 2D, ρ = 1.2, periodic"
    citation: ClassVar[str] = ("R. Brüning, D. A. St-Onge, S. Patterson & W. Kob, "
                               "J. Phys.: Condens. Matter 21, 035117 (2009)")
    spatial_dim: ClassVar[int] = 2

    n_particles: int = param(128, "number of particles N")
    temperature: float = param(0.5, "kT in units of ε_AA")
    composition: tuple[float, ...] = param((0.65, 0.35), "fraction of each species (A, B), summing to 1")


@dataclass
class Ternary2D(LennardJonesMixture):
    """2D ternary Kob-Andersen-type glass former (KA2 pair parameters), swap-compatible."""

    name: ClassVar[str] = "ternary2d"
    reference_recipe: ClassVar[dict] = {  # swap MC, as Jung, Biroli & Berthier do
        "sampler": "swap_mc", "params": {"n_chains": 16}, "max_evals": 4e6, "n_samples": 20000, "burn_in": 0.2}
    description: ClassVar[str] = ("2D ternary Kob-Andersen-type mixture (KA2 pair parameters), the "
                                  "swap-compatible N = 43 benchmark family of Jung, Biroli & Berthier 2024")
    citation: ClassVar[str] = ("G. Jung, G. Biroli & L. Berthier, Mach. Learn.: Sci. Technol. 5, 035053 (2024); "
                               "pair parameters: A. D. S. Parmar, M. Ozawa & L. Berthier, PRL 125, 085505 (2020)")
    spatial_dim: ClassVar[int] = 2
    species_names: ClassVar[tuple[str, ...]] = ("A", "B", "C")
    sigma: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0, 0.8, 0.9), (0.8, 0.88, 0.84), (0.9, 0.84, 0.94))
    epsilon: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0, 1.5, 1.25), (1.5, 0.5, 1.0), (1.25, 1.0, 0.75))

    n_particles: int = param(43, "number of particles N")
    temperature: float = param(0.5, "kT in units of ε_AA")
    composition: tuple[float, ...] = param((0.55, 0.30, 0.15), "fraction of each species (A, B, C), summing "
                                           "to 1 (stand-in: the published composition was not retrieved)")


# ------------------------------------------------------------------------- soft spheres

SS_CUTOFF = 1.25                      # x_c, in units of σ_ij
SS_C0 = -28.0 / SS_CUTOFF ** 12
SS_C2 = 48.0 / SS_CUTOFF ** 14
SS_C4 = -21.0 / SS_CUTOFF ** 16
SS_NONADDITIVITY = 0.2
SS_SIZE_RATIO = 0.449                 # σ_min / σ_max
SS_SIGMA_MAX = (1.0 + SS_SIZE_RATIO) / (2.0 * SS_SIZE_RATIO)   # mean σ = 1 for P(σ) ∝ σ⁻³
SS_SIGMA_MIN = SS_SIZE_RATIO * SS_SIGMA_MAX


def nonadditive_sigma(d: torch.Tensor) -> torch.Tensor:
    """σ_ij = (σ_i + σ_j)/2·(1 − 0.2·|σ_i − σ_j|) for diameters d (N,) → (N, N)."""
    return 0.5 * (d[:, None] + d[None, :]) * (1.0 - SS_NONADDITIVITY * (d[:, None] - d[None, :]).abs())


def sample_diameters(n: int, seed: int) -> torch.Tensor:
    """n diameters from P(σ) ∝ σ⁻³ on [σ_min, σ_max] by inverse CDF:
    σ = (σ_min⁻² − u·(σ_min⁻² − σ_max⁻²))^(−1/2), u ~ U(0, 1) from a generator seeded with ``seed``."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a, b = SS_SIGMA_MIN ** -2, SS_SIGMA_MAX ** -2
    return (a - u * (a - b)) ** -0.5


@dataclass
class SoftSpheres(ParticleSystem):
    """Continuously polydisperse, non-additive soft spheres (Ninarello, Berthier & Coslovich 2017)."""

    name: ClassVar[str] = "soft_spheres"
    reference_recipe: ClassVar[dict] = {
        "sampler": "swap_mc", "params": {"n_chains": 8}, "max_evals": 4e6, "n_samples": 2000, "burn_in": 0.2}
    description: ClassVar[str] = ("polydisperse non-additive soft spheres (Ninarello-Berthier-Coslovich 2017), "
                                  "2D or 3D, ρ = 1, periodic; the swap Monte Carlo system")
    citation: ClassVar[str] = ("A. Ninarello, L. Berthier & D. Coslovich, PRX 7, 021039 (2017); 2D: L. Berthier "
                               "et al., Nat. Commun. 10, 1508 (2019)")
    units: ClassVar[str] = "reduced units: mean diameter 1, ε = 1, m = 1, kB = 1"
    species_names: ClassVar[tuple[str, ...]] = ("all",)

    n_particles: int = param(256, "number of particles N")
    dim: int = param(3, "spatial dimension, 2 or 3")
    density: float = param(1.0, "number density ρ = N/V; the box edge is (N/ρ)^(1/d)")
    temperature: float = param(0.2, "kT in units of ε")
    diameter_seed: int = param(0, "seed of the generator that draws the N diameters (once per instance)")
    verlet_skin: float = param(0.3, "skin of the Verlet neighbour list (length); 0 selects the dense all-pairs kernel")
    precision: str = precision_param()
    device: str = device_param()

    def __post_init__(self) -> None:
        self._check_backend()
        self._check_temperature()
        self._check_skin()
        require(self.dim in (2, 3), "dim", f"must be 2 or 3, got {self.dim!r}")
        require(math.isfinite(self.density) and self.density > 0, "density", f"must be > 0, got {self.density}")
        require(isinstance(self.n_particles, int) and self.n_particles >= 2, "n_particles",
                f"must be an integer >= 2, got {self.n_particles!r}")
        require(isinstance(self.diameter_seed, int) and self.diameter_seed >= 0, "diameter_seed",
                f"must be an integer >= 0, got {self.diameter_seed!r}")
        cutoff = SS_CUTOFF * SS_SIGMA_MAX
        n_min = math.ceil(self.density * (2 * cutoff) ** self.dim - 1e-9)
        check_box("n_particles", self.box_edges[0], cutoff,
                  f"must be >= {n_min} at density {self.density} in {self.dim}D, got {self.n_particles}")

    @property
    def box_edges(self) -> tuple[float, ...]:
        return (float((self.n_particles / self.density) ** (1.0 / self.dim)),) * self.dim

    @functools.cached_property
    def diameters(self) -> torch.Tensor:
        return sample_diameters(self.n_particles, self.diameter_seed)

    def pair_table(self) -> PairTable:
        sig = nonadditive_sigma(self.diameters)
        rc2 = (SS_CUTOFF * sig) ** 2
        rc2.fill_diagonal_(0.0)
        return PairTable(soft_sphere, rc2=rc2, r2_min=float(R_MIN_FRACTION * sig.min()) ** 2,
                         params={"sig2": sig ** 2, "c0": SS_C0, "c2": SS_C2, "c4": SS_C4})

    @functools.cached_property
    def _sigma_pairs(self) -> torch.Tensor:
        iu, ju = torch.triu_indices(self.n_particles, self.n_particles, 1)
        return nonadditive_sigma(self.diameters)[iu, ju].to(device=self.torch_device, dtype=self.dtype)

    def observables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """As for every particle system, plus ``pair_distance/scaled`` = r_ij/σ_ij (i < j)."""
        out = super().observables(x)
        out["pair_distance/scaled"] = out["pair_distance/all"] / self._sigma_pairs
        return out

    def _initial_positions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.lattice_positions(n, generator)


__all__ = [
    "KobAndersen2D",
    "KobAndersen3D",
    "LennardJonesMixture",
    "SoftSpheres",
    "Ternary2D",
    "nonadditive_sigma",
    "sample_diameters",
]
