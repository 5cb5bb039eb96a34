"""The Boltzmann generator: fixed coordinate layers P, trained couplings T, a base density.

Densities (change of variables; every log-det is exact):

* Gaussian base, latent y₀ ~ q₀:  x = P(T(y₀)),
  log q(x) = log q₀(y₀) − log|det ∂T/∂y₀| − log|det ∂P/∂y|.
* Thermal base, configurations x₀ ~ exp(−β_base·u(x₀)):  x = P(T(P⁻¹(x₀))),
  log q(x) = −β_base·u(x₀) − log|det ∂x/∂x₀| + const
  (Jung, Biroli & Berthier 2024; the constant, the base's log-partition function, cancels
  in self-normalized weights and Metropolis–Hastings ratios).

P depends on the coordinates: "cartesian" (standardize every degree of freedom with data
statistics), "torus" (positions in a periodic box ↔ angles, every entry periodic),
"internal" (standardize log-bonds and logit-angles, map them to bonds r = eᵃ and angles
θ = π·σ(b), then internal → Cartesian; see
:class:`~boltzbench.samplers.flows.layers.InternalCoordinates` for the reduced density).

The importance weight of a sample is log w(x) = −u(x) − log q(x) (up to a constant).

T depends on the architecture (``spec["architecture"]``, :data:`ARCHITECTURES`):

* ``"mlp"`` — couplings whose conditioners are MLPs over all coordinates (RealNVP affine
  layers on real entries, circular splines on angles; :mod:`.layers`);
* ``"periodic_equivariant"`` — permutation-equivariant coupling flow on the torus for
  periodic particle systems (:mod:`.periodic_equivariant`; Wirnsberger et al. 2020, 2022);
* ``"equivariant_flow_matching"`` — a continuous flow with an E(n)-equivariant vector field
  trained by flow matching, for clusters, with a mean-free Gaussian base and no fixed
  layers (:mod:`.flow_matching`; Klein, Krämer & Noé, NeurIPS 2023).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from boltzbench.contracts import System, device_of
from boltzbench.samplers.flows.base import GaussianBase, ThermalBase
from boltzbench.samplers.flows.layers import (BondAngleDomain, Coupling, FlowChain, InternalCoordinates, Standardize,
                                              TorusScale, alternating_masks)

COORDINATES = ("cartesian", "torus", "internal")
ARCHITECTURES = ("mlp", "periodic_equivariant", "equivariant_flow_matching")


def feature_layout(spec: dict[str, Any]) -> tuple[int, torch.Tensor]:
    """(dimension, periodic mask) of the latent/feature space for a flow spec."""
    if spec["coordinates"] == "cartesian":
        return spec["dof"], torch.zeros(spec["dof"], dtype=torch.bool)
    if spec["coordinates"] == "torus":
        return spec["dof"], torch.ones(spec["dof"], dtype=torch.bool)
    n = spec["zmatrix"]["n_atoms"]
    return 3 * n - 6, torch.arange(3 * n - 6) >= (n - 1) + (n - 2)


class BoltzmannGenerator(nn.Module):
    """x = P(T(y)): ``couplings`` T (trained) then ``prep`` P (fixed), with a base density.

    ``spec`` (JSON-able) fixes the architecture: dof, coordinates, n_layers, hidden,
    n_hidden, n_bins, box (edges per dof, torus), zmatrix (internal). ``mean``/``std``
    (feature space) standardize real entries; they are buffers, saved with the weights.
    ``generator`` initializes the weights (never torch's global RNG; fixed seed when None).
    """

    def __init__(self, spec: dict[str, Any], mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = dict(spec)
        dim, periodic = feature_layout(spec)
        self.register_buffer("periodic", periodic)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.couplings = trained_layers(spec, periodic, generator)
        mean = torch.zeros(dim) if mean is None else mean.detach().double().cpu()
        std = torch.ones(dim) if std is None else std.detach().double().cpu()
        mean, std = torch.where(periodic, 0.0, mean), torch.where(periodic, 1.0, std)
        if spec.get("architecture") == "equivariant_flow_matching":
            prep = []  # the vector field acts on positions directly (equivariance)
        elif spec["coordinates"] == "cartesian":
            prep = [Standardize(mean, std)]
        elif spec["coordinates"] == "torus":
            prep = [TorusScale(torch.as_tensor(spec["box"], dtype=torch.float64))]
        else:
            internal = InternalCoordinates(spec["zmatrix"])
            prep = [Standardize(mean, std), BondAngleDomain(internal.n_bonds, internal.n_angles), internal]
        self.prep = FlowChain(prep)
        self.base: GaussianBase | ThermalBase = latent_base(spec, periodic)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return self.periodic.device

    # ------------------------------------------------------------------ maps
    def push(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent y → configuration x; log|det ∂x/∂y|."""
        h, ld_t = self.couplings(y)
        x, ld_p = self.prep(h)
        return x, ld_t + ld_p

    def pull(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Configuration x → latent y; log|det ∂y/∂x|."""
        h, ld_p = self.prep.inverse(x)
        y, ld_t = self.couplings.inverse(h)
        return y, ld_p + ld_t

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """P⁻¹(x), the (unstandardized) coordinates the couplings see, for statistics."""
        h = x
        for layer in reversed(self.prep.layers):
            if not isinstance(layer, Standardize):
                h, _ = layer.inverse(h)
        return h

    # ---------------------------------------------------------------- densities
    def to_flow(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=self.dtype, device=self.device)

    def draw_base(self, n: int, generator: torch.Generator):
        """A fresh base batch: latent y (Gaussian) or (x₀, u₀) (thermal; chains advance)."""
        if isinstance(self.base, GaussianBase):
            return self.base.sample(n, generator, self.dtype).to(self.device)  # no copy if on the device
        return self.base.draw(n, generator)

    def push_base(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Map a base batch to configurations x with their flow log-density log q(x)."""
        if isinstance(self.base, GaussianBase):
            x, ld = self.push(batch)
            return x, self.base.log_prob(batch) - ld
        x0, u0 = batch
        h0, ld0 = self.prep.inverse(self.to_flow(x0))  # P⁻¹ only: the couplings act once, forwards
        x, ld1 = self.push(h0)
        log_q0 = self.base.log_prob_unnormalized(u0.to(dtype=self.dtype, device=self.device))
        return x, log_q0 - ld0 - ld1

    def log_q(self, x: torch.Tensor, base_energy=None) -> torch.Tensor:
        """log q(x) by the inverse map. A thermal base needs u at x₀ = flow⁻¹(x):
        ``base_energy(x0) -> u0`` (charged; with gradient when training)."""
        y, ld = self.pull(self.to_flow(x))
        if isinstance(self.base, GaussianBase):
            return self.base.log_prob(y) + ld
        x0, ld0 = self.prep(y)  # y = T⁻¹(P⁻¹(x)) = P⁻¹(x₀)
        return self.base.log_prob_unnormalized(base_energy(x0)) + ld + ld0


def trained_layers(spec: dict[str, Any], periodic: torch.Tensor, generator: torch.Generator) -> nn.Module:
    """The trained map T of ``spec["architecture"]`` (default "mlp"): a module with
    ``forward(y) -> (x, log|det ∂x/∂y|)`` and ``inverse(x) -> (y, log|det ∂y/∂x|)`` on (B, D)."""
    architecture = spec.get("architecture", "mlp")
    if architecture == "periodic_equivariant":
        from boltzbench.samplers.flows.periodic_equivariant import build_couplings
        return build_couplings(spec, generator)
    if architecture == "equivariant_flow_matching":
        from boltzbench.samplers.flows.flow_matching import EquivariantCNF
        return EquivariantCNF(spec, generator)
    masks = alternating_masks(len(periodic), spec["n_layers"])
    return FlowChain([Coupling(m, periodic, spec["hidden"], spec["n_hidden"], spec["n_bins"],
                               generator=generator) for m in masks])


def latent_base(spec: dict[str, Any], periodic: torch.Tensor) -> GaussianBase:
    """The latent density of ``spec``: N(0, I) / uniform angles, or, for equivariant flow
    matching, the mean-free Gaussian (centre of mass removed)."""
    if spec.get("architecture") == "equivariant_flow_matching":
        from boltzbench.samplers.flows.flow_matching import MeanFreeGaussianBase
        return MeanFreeGaussianBase(spec["n_particles"], spec["spatial_dim"])
    return GaussianBase(periodic)


def energy(system: System, x: torch.Tensor) -> torch.Tensor:
    """u(x) through the charged ``system.energy``, as float64 on the flow's device."""
    with torch.no_grad():
        u = system.energy(x.detach().to(dtype=system.dtype, device=device_of(system)))
    return u.to(dtype=torch.float64, device=x.device)


def energy_surrogate(system: System, x: torch.Tensor, force_clip: float | None = None):
    """u(x) with a gradient with respect to x, from the system's forces (no autograd through
    the system, so any System works, OpenMM included): the surrogate
    ũ = u + Σ g·(x − x.detach()) has value u and gradient g = −f·c, where

        c = min(1, κ·median_batch |f| / |f|)          (κ = ``force_clip``; None: c = 1)

    clips each row's force to κ times the batch's median force norm, keeping its direction.
    Overlapping atoms have forces many orders of magnitude above the rest, and after
    gradient-norm clipping one such row would set the whole step; clipping per row bounds
    its influence. Noé et al. (2019, supplementary) regularize the energy instead,
    logarithmically above a threshold; that makes the reverse KL unbounded below (a flow
    stretching d harmonic degrees of freedom by λ gains d·log λ of entropy for ~2·log λ of
    regularized energy), and on alanine dipeptide it tore the flow's bonds apart. Every
    row below the cap, the bulk of the batch, sees its true gradient, and a clipped row
    still pays a cost growing linearly with distance, so the loss stays bounded below.
    Rows with a non-finite energy or force get value NaN and zero gradient (the caller
    drops them).
    Returns (surrogate, u as float64, finite mask). Charges one force evaluation per row.
    """
    xs = x.detach().to(dtype=system.dtype, device=device_of(system))
    u, f = system.energy_and_forces(xs)
    u, f = u.to(dtype=x.dtype, device=x.device), f.to(dtype=x.dtype, device=x.device)
    finite = torch.isfinite(u) & torch.isfinite(f).all(-1)
    u0 = torch.where(finite, u, torch.zeros_like(u))
    f0 = torch.where(finite[:, None], f, torch.zeros_like(f))
    if force_clip is not None and finite.any():
        norm = torch.linalg.vector_norm(f0, dim=-1)
        cap = force_clip * norm[finite].median()
        f0 = f0 * torch.clamp(cap / norm.clamp(min=torch.finfo(norm.dtype).tiny), max=1.0)[:, None]
    surrogate = u0 + (-f0 * (x - x.detach())).sum(-1)
    surrogate = torch.where(finite, surrogate, torch.full_like(surrogate, math.nan))
    return surrogate, u.to(torch.float64), finite
