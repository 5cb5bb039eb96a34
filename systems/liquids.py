"""Glass-forming liquids in a periodic box: Kob-Andersen mixtures and polydisperse soft spheres.

Lennard-Jones mixtures (``ka3d``, ``ka2d``, ``ternary2d``). In ``ka3d`` and ``ka2d`` species
α, β interact through φ_αβ(r) = 4ε_αβ[(σ_αβ/r)¹² − (σ_αβ/r)⁶] − φ_αβ^LJ(r_c,αβ) for
r < r_c,αβ = 2.5·σ_αβ and 0 beyond (truncated and shifted); ``ternary2d`` smooths the cutoff
with a polynomial instead (below). All masses m = 1, reduced units σ_AA = ε_AA = kB = 1. The
box is a cube (square) of edge L = (N/ρ)^(1/d). Species counts: the quotas x_k·N apportioned
by largest remainders (:func:`~boltzbench.systems.particles.species_counts`); with two species
that is round(x_A·N) A particles, halves up. Particles 0..N_A−1 are A, then B, then C.

* ``ka3d`` — W. Kob & H. C. Andersen, Phys. Rev. Lett. 73, 1376 (1994) and Phys. Rev. E 51,
  4626 (1995): A:B = 80:20, σ_AB = 0.8, σ_BB = 0.88, ε_AB = 1.5, ε_BB = 0.5, ρ = 1.2.
  Mode-coupling temperature T_MCT ≈ 0.435 (Kob & Andersen 1995). With r_c = 2.5 the
  minimum-image convention needs L ≥ 5, i.e. N ≥ 150 at ρ = 1.2.
* ``ka2d`` — the same pair parameters in two dimensions at A:B = 65:35, ρ = 1.2, the
  composition that resists crystallization in 2D: R. Brüning, D. A. St-Onge, S. Patterson &
  W. Kob, J. Phys.: Condens. Matter 21, 035117 (2009). N ≥ 30 at ρ = 1.2.
* ``ternary2d`` — the 2D ternary glass former of G. Jung, G. Biroli & L. Berthier,
  "Normalizing flows as an enhanced sampling method for atomistic supercooled liquids",
  Mach. Learn.: Sci. Technol. 5, 035053 (2024), arXiv:2404.09914: model "KA2-2D" of the first
  author's analysis code (GitHub GerhardJung/StructDynGlass, ``struct_epot.cpp``
  ``determine_sigma2``/``determine_epsilon2``/``calc_epot2``, constants in ``struct_epot.h``)
  and, independently, model ``JBB()`` of TheDisorderedOrganization/ParticlesMC
  (``src/models.jl``, ``SmoothLennardJones``). Three species A, B, C:
  σ_AA = 1, σ_BB = 0.88, σ_CC = 0.94, σ_AB = 0.8, σ_AC = 0.9, σ_BC = 0.8;
  ε_AA = 1, ε_BB = 0.5, ε_CC = 0.75, ε_AB = 1.5, ε_AC = 0.75, ε_BC = 1.5;
  φ_αβ(r) = 4ε_αβ[(σ_αβ/r)¹² − (σ_αβ/r)⁶ + C0 + C2(r/σ_αβ)² + C4(r/σ_αβ)⁴] for r < 2.5·σ_αβ,
  0 beyond, C0 = 0.04049023795, C2 = −0.00970155098, C4 = 0.00062012616 (``C0LJ``, ``C2LJ``,
  ``C4LJ``; ``RC2LJ`` = 6.25). The polynomial makes φ, φ′ and φ″ vanish at 2.5σ up to the
  rounding of the published constants: 4ε·(−3.3, −5.4, −6.5)·10⁻¹⁰ (φ, σφ′, σ²φ″); the
  exact solution differs from them by < 10⁻¹¹. σ_BC, ε_AC and ε_BC differ from the 3D "KA2"
  of Parmar, Ozawa & Berthier (PRL 125, 085505 (2020); the same file has σ_BC = 0.84,
  ε_AC = 1.25, ε_BC = 1.0, with the same smoothing). Both codes give the same tables and
  formula. Composition A:B:C = 600:330:360: StructDynGlass's N = 1290
  configurations (``data/Cnf-*/1.xyz``, ``input.opt``: model KA2-2D) hold 600, 330 and 360
  particles in a box of edge 32.8962 (ρ = 1.19206); ParticlesMC's N = 43 runs
  (``test/pgmc_ka2d.jl``, at T = 0.5, swapping A↔C and B↔C) use 20:11:12, exactly the same
  proportions, at ρ = 1.1920748468939728 (= 1290/32.896²), the default here; at N = 1290 it
  gives L = 32.8960. Check: the StructDynGlass configuration that ParticlesMC ships
  (``test/config_0.xyz``, N = 1290, L = 32.8962) has U/N = −2.676832 by this potential, the
  value its ``test/gerhard_energy_distribution.jl`` quotes as Gerhard's. Other N: the
  proportions 600:330:360 by largest remainders; N ≥ 30 (L ≥ 2·2.5). Temperatures:
  ParticlesMC's dataset script for this model (``test/jbb25.jl``, N = 44 as 20:12:12) marks
  T = 0.32 "Gerhard's highest" and T = 0.2 "Gerhard's lowest NF", so the paper's flows worked
  between about 0.32 and 0.2; the default T = 0.3 lies in that range (a benchmark choice).
  NOT confirmed from the paper's own text (only its abstract could be read here): its
  temperatures, and which species pairs it swaps (ParticlesMC swaps A↔C and B↔C; ``swap_mc``
  here tries all pairs, equally valid for the distribution). The earlier stand-in (KA2 3D
  pair tables with a shifted cutoff, 0.55:0.30:0.15 at ρ = 1.2) is dropped: it was no
  published model.

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

Default temperatures are benchmark choices, not values from the papers: mildly supercooled
for ``ka3d``, ``ka2d`` and ``soft_spheres``, inside the range of Jung et al.'s flows for
``ternary2d``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from boltzbench.contracts import param, require
from boltzbench.systems.particles import (R_MIN_FRACTION, PairTable, ParticleSystem, check_box,
                                          device_param, kernel_param, lennard_jones, precision_param,
                                          smooth_lennard_jones, soft_sphere, species_counts,
                                          verlet_skin_param)

LJ_CUTOFF = 2.5  # in units of σ_αβ
#: (C0, C2, C4) of the smoothed cutoff of ``ternary2d`` (StructDynGlass struct_epot.h: C0LJ,
#: C2LJ, C4LJ; ParticlesMC src/models.jl SmoothLennardJones), for x_c = 2.5.
JBB_SMOOTHING = (0.04049023795, -0.00970155098, 0.00062012616)


def lj_shift(cutoff: float = LJ_CUTOFF) -> float:
    """4[(1/x_c)¹² − (1/x_c)⁶]: the LJ energy at the cutoff, in units of ε."""
    return 4.0 * (cutoff ** -12 - cutoff ** -6)


@dataclass
class LennardJonesMixture(ParticleSystem):
    """A Lennard-Jones mixture in a periodic box (Kob-Andersen family), cut at 2.5σ_αβ:
    truncated and shifted, or smoothed by a polynomial when ``smoothing`` is set."""

    spatial_dim: ClassVar[int] = 3
    species_names: ClassVar[tuple[str, ...]] = ("A", "B")
    #: σ_αβ and ε_αβ, symmetric tables indexed by species.
    sigma: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0, 0.8), (0.8, 0.88))
    epsilon: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0, 1.5), (1.5, 0.5))
    #: None: truncated and shifted. (C0, C2, C4): φ = 4ε[(σ/r)¹² − (σ/r)⁶ + C0 + C2(r/σ)² + C4(r/σ)⁴].
    smoothing: ClassVar[tuple[float, float, float] | None] = None

    n_particles: int = param(256, "number of particles N")
    density: float = param(1.2, "number density ρ = N/V; the box edge is (N/ρ)^(1/d)")
    temperature: float = param(0.6, "kT in units of ε_AA")
    composition: tuple[float, ...] = param((0.8, 0.2), "fraction of each species (A, B, ...), summing to 1")
    verlet_skin: float = verlet_skin_param()
    precision: str = precision_param()
    device: str = device_param()
    kernel: str = kernel_param()

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
        r2_min = float(R_MIN_FRACTION * sig.min()) ** 2
        if self.smoothing is not None:
            c0, c2, c4 = self.smoothing
            return PairTable(smooth_lennard_jones, rc2=rc2, r2_min=r2_min,
                             params={"sig2": sig ** 2, "eps4": 4 * eps, "c0": c0, "c2": c2, "c4": c4})
        return PairTable(lennard_jones, rc2=rc2, r2_min=r2_min,
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
    """The 2D ternary glass former of Jung, Biroli & Berthier (2024), swap-compatible
    ("KA2-2D" of StructDynGlass, ``JBB`` of ParticlesMC; module docstring)."""

    name: ClassVar[str] = "ternary2d"
    #: The model behind the name (the class tables, not a parameter); part of a
    #: reference's identity, so that no reference of the earlier stand-in can be taken for it.
    model_id: ClassVar[str] = "JBB-KA2-2D"
    #: Swap MC, as Jung, Biroli & Berthier do: 8 chains × 2.5·10⁵ sweeps, thinned so that every
    #: chain is kept (thin = 125 leaves 8 × 1440 samples, under the 4 MB cap). Converged at
    #: T = 0.32 and 0.26, not at 0.2 (benchmarks/reference_convergence.py; README "Glass formers").
    reference_recipe: ClassVar[dict] = {
        "sampler": "swap_mc", "params": {"n_chains": 8, "thin": 125}, "max_evals": 2e6, "n_samples": 20000,
        "burn_in": 0.2}
    description: ClassVar[str] = ("2D ternary Lennard-Jones glass former of Jung, Biroli & Berthier 2024 "
                                  "(A:B:C = 600:330:360, smoothed cutoff), swap-compatible, default N = 43")
    citation: ClassVar[str] = ("G. Jung, G. Biroli & L. Berthier, Mach. Learn.: Sci. Technol. 5, 035053 (2024), "
                               "arXiv:2404.09914; model KA2-2D of GerhardJung/StructDynGlass (struct_epot.cpp), "
                               "JBB of TheDisorderedOrganization/ParticlesMC (src/models.jl)")
    spatial_dim: ClassVar[int] = 2
    species_names: ClassVar[tuple[str, ...]] = ("A", "B", "C")
    sigma: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0, 0.8, 0.9), (0.8, 0.88, 0.8), (0.9, 0.8, 0.94))
    epsilon: ClassVar[tuple[tuple[float, ...], ...]] = ((1.0, 1.5, 0.75), (1.5, 0.5, 1.5), (0.75, 1.5, 0.75))
    smoothing: ClassVar[tuple[float, float, float] | None] = JBB_SMOOTHING

    n_particles: int = param(43, "number of particles N (species 600:330:360 by largest remainders; "
                                 "43 gives 20:11:12, 1290 the paper's large system)")
    density: float = param(1.1920748468939728, "number density ρ = N/V; the box edge is (N/ρ)^(1/d)")
    temperature: float = param(0.3, "kT in units of ε_AA")
    composition: tuple[float, ...] = param((600 / 1290, 330 / 1290, 360 / 1290),
                                           "fraction of each species (A, B, C), summing to 1")


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
    #: 8 chains × 6·10⁴ sweeps at N = 64; the energy's τ_int is ~10² sweeps in 2D at T = 0.2
    #: (benchmarks/reference_convergence.py).
    reference_recipe: ClassVar[dict] = {
        "sampler": "swap_mc", "params": {"n_chains": 8}, "max_evals": 5e5, "n_samples": 2000, "burn_in": 0.2}
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
    verlet_skin: float = verlet_skin_param()
    precision: str = precision_param()
    device: str = device_param()
    kernel: str = kernel_param()

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
