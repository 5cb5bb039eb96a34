"""Permutation-equivariant coupling flow on the torus for periodic particle systems.

The architecture of Wirnsberger et al., "Normalizing flows for atomic solids", Mach. Learn.:
Sci. Technol. 3, 025009 (2022) (and, for the attention over particles with periodic
features, Wirnsberger et al., J. Chem. Phys. 153, 144112 (2020)); this is our own code.

Positions are angles θ (B, N·d) in [−π, π), particle-major (θ = 2π·x/L − π, the flow's
``TorusScale`` layer). Coupling layer l transforms one Cartesian component a = l mod d of
*every* particle, conditioned on the other d − 1 components of all particles:

    θ'_{i,a} = wrap(S_i(θ_{i,a}) + t_i),   θ'_{i,b} = θ_{i,b} (b ≠ a),

S_i a circular rational-quadratic spline (:func:`~boltzbench.samplers.flows.layers.circular_spline`;
Durkan et al. 2019, Rezende et al. 2020) and t_i a rotation, both with parameters from a
permutation-equivariant conditioner c_i(θ_{·,−a}, s):

* per-particle input: the periodic embedding of the conditioning components,
  (cos kθ_{i,b}, sin kθ_{i,b}) for k = 1..n_freq (Wirnsberger et al. 2022, "circular
  embedding"), and the particle's features s_i: one-hot species and diameter; a linear
  embedding to ``hidden``;
* ``n_hidden`` transformer blocks (pre-layer-norm multi-head self-attention over particles
  with a residual, then a residual SiLU MLP; Vaswani et al. 2017). No positional encoding
  over the particle index. Each head's attention logits get an additive pair bias, a
  linear function of the periodic embedding of the pair displacements of the conditioning
  components, Δ_ij = wrap(θ_{j,b} − θ_{i,b}) (Wirnsberger et al. 2020 feed relative
  periodic displacements to the attention). In 2D the conditioner sees one axis only; the
  pair bias lets particle i attend directly to its neighbours along that axis (a particle
  j with Δ_ij ≈ 0 shares i's row and bounds where θ_{i,a} can go);
* a per-particle head (layer norm, linear) to the 3K + 1 parameters of its spline and
  shift, parametrized as in :class:`~boltzbench.samplers.flows.layers.Coupling` (softmax
  widths/heights with a minimum, softplus knot derivatives equal to 1 at zero output). The
  head starts at zero: every coupling starts as the identity.

Equivariance: the conditioner treats particles only through their features and pairwise
terms, so for a permutation π that maps every particle to one with the same features
(same species and diameter), c(θ∘π) = c(θ)∘π; the transformed output is permuted and
log|det| = Σ_i log S_i'(θ_{i,a}) is unchanged. Permuting particles of different species
changes their features, so it changes the density in general. Exact log-determinant: the
Jacobian of a coupling is triangular in (transformed, conditioning) blocks with the
transformed block diagonal (particle i's component a depends on θ_{i,a} only among the
transformed entries).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from boltzbench.samplers.flows.layers import FlowChain, circular_spline, linear, spline_parameters, wrap

N_FREQUENCIES = 4  #: harmonics k = 1..4 of the periodic embeddings (default; spec["n_frequencies"])
N_HEADS = 4  #: attention heads (default; spec["n_heads"]; 1 if hidden is not divisible)


def circular_embedding(theta: torch.Tensor, n_freq: int) -> torch.Tensor:
    """(..., C) angles → (..., 2·C·n_freq): [cos kθ_c, sin kθ_c] for k = 1..n_freq, c = 1..C."""
    k = torch.arange(1, n_freq + 1, dtype=theta.dtype, device=theta.device)
    phase = (theta[..., None] * k).flatten(-2)
    return torch.cat([torch.cos(phase), torch.sin(phase)], -1)


def particle_features(species: list[int], diameters: list[float]) -> torch.Tensor:
    """(N, S + 1) features: one-hot species (S = max species + 1) and the diameter σ_i minus
    the mean diameter (zero column for a one-component system)."""
    s = torch.as_tensor(species, dtype=torch.long)
    d = torch.as_tensor(diameters, dtype=torch.float64)
    one_hot = nn.functional.one_hot(s, int(s.max()) + 1).double()
    return torch.cat([one_hot, (d - d.mean())[:, None]], -1)


class AttentionBlock(nn.Module):
    """h ← h + MHA(LN(h), pair bias); h ← h + MLP(LN(h)) over particles (B, N, W).

    The pair bias of head h is b_h(i, j) = Σ_f a_hf·cos(Δ_ijf) + c_hf·sin(Δ_ijf) over the
    periodic pair features Δ_ijf = k·(φ_j − φ_i) (harmonic k of a conditioning angle φ). By
    cos(φ_j − φ_i) = cos φ_i cos φ_j + sin φ_i sin φ_j and sin(φ_j − φ_i) = cos φ_i sin φ_j −
    sin φ_i cos φ_j it is the inner product of [cos φ_i, sin φ_i] with
    [a cos φ_j + c sin φ_j, a sin φ_j − c cos φ_j], appended to the queries and keys: the
    same function without the (B, N, N, F) tensor of pair features.
    """

    def __init__(self, width: int, n_heads: int, n_pair: int, generator: torch.Generator):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = linear(width, 3 * width, generator)
        self.out = linear(width, width, generator)
        bound = 1.0 / math.sqrt(2 * n_pair)
        self.pair_cos = nn.Parameter((2 * torch.rand(n_heads, n_pair, generator=generator) - 1) * bound)
        self.pair_sin = nn.Parameter((2 * torch.rand(n_heads, n_pair, generator=generator) - 1) * bound)
        self.mlp = nn.Sequential(linear(width, 2 * width, generator), nn.SiLU(), linear(2 * width, width, generator))

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """h (B, N, W); cos, sin (B, N, F) of the periodic features φ of every particle."""
        b, n, w = h.shape
        heads, dh = self.n_heads, w // self.n_heads
        q, k, v = self.qkv(self.norm1(h)).reshape(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
        a, c = self.pair_cos[None, :, None, :], self.pair_sin[None, :, None, :]  # (1, H, 1, F)
        cos_j, sin_j = cos[:, None], sin[:, None]  # (B, 1, N, F)
        q = torch.cat([q / math.sqrt(dh), torch.cat([cos_j, sin_j], -1).expand(b, heads, n, -1)], -1)
        k = torch.cat([k, a * cos_j + c * sin_j, a * sin_j - c * cos_j], -1)
        att = torch.softmax(q @ k.transpose(-1, -2), -1) @ v  # (B, H, N, W/H)
        h = h + self.out(att.transpose(1, 2).reshape(b, n, w))
        return h + self.mlp(self.norm2(h))


class EquivariantCoupling(nn.Module):
    """Circular-spline coupling of component ``axis`` of every particle, conditioned on the
    other components by a permutation-equivariant transformer (see the module docstring).

    Parameters
    ----------
    features : (N, F) particle features (species one-hot, diameter); a buffer.
    spatial_dim : d; axis : the transformed component (0 ≤ axis < d).
    hidden, n_blocks, n_bins, n_freq, n_heads : width, transformer blocks, spline bins K,
        harmonics of the periodic embeddings, attention heads.
    """

    def __init__(self, features: torch.Tensor, spatial_dim: int, axis: int, hidden: int, n_blocks: int,
                 n_bins: int, n_freq: int, n_heads: int, generator: torch.Generator):
        super().__init__()
        if spatial_dim < 2:
            raise ValueError(f"the periodic equivariant flow needs spatial_dim >= 2, got {spatial_dim}")
        self.register_buffer("features", features.clone())
        self.d, self.axis, self.n_bins, self.n_freq = spatial_dim, axis, n_bins, n_freq
        self.cond = [b for b in range(spatial_dim) if b != axis]
        n_emb = 2 * len(self.cond) * n_freq
        self.embed = linear(n_emb + features.shape[1], hidden, generator)
        self.blocks = nn.ModuleList(AttentionBlock(hidden, n_heads, n_emb // 2, generator) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(hidden)
        self.head = linear(hidden, 3 * n_bins + 1, None)  # zero: the coupling starts as the identity

    def _conditioner(self, cond: torch.Tensor):
        """Spline widths, heights, knot derivatives (B, N, K) and shift (B, N) from the
        conditioning angles (B, N, d − 1)."""
        b, n = cond.shape[:2]
        feats = self.features.to(cond).expand(b, n, -1)
        emb = circular_embedding(cond, self.n_freq)
        h = self.embed(torch.cat([emb, feats], -1))
        cos, sin = emb.chunk(2, -1)
        for block in self.blocks:
            h = block(h, cos, sin)
        out = self.head(self.norm(h))
        return spline_parameters(out, self.n_bins)

    def _transform(self, z: torch.Tensor, inverse: bool):
        theta = z.reshape(z.shape[0], -1, self.d)
        widths, heights, derivs, shift = self._conditioner(theta[..., self.cond])
        angle = theta[..., self.axis]
        if inverse:
            angle = wrap(angle - shift)
        y, log_deriv = circular_spline(wrap(angle), widths, heights, derivs, inverse)
        if not inverse:
            y = wrap(y + shift)
        out = torch.cat([theta[..., :self.axis], y[..., None], theta[..., self.axis + 1:]], -1)
        return out.reshape(z.shape), log_deriv.sum(-1)

    def forward(self, z: torch.Tensor):
        return self._transform(z, inverse=False)

    def inverse(self, x: torch.Tensor):
        return self._transform(x, inverse=True)


def build_couplings(spec: dict[str, Any], generator: torch.Generator) -> nn.Module:
    """The trained map T of ``architecture = "periodic_equivariant"``: ``spec["n_layers"]``
    :class:`EquivariantCoupling` layers transforming the axes x, y, (z), x, ... in turn, each
    with ``spec["hidden"]`` width, ``spec["n_hidden"]`` transformer blocks and
    ``spec["n_bins"]`` spline bins; particle features from ``spec["species"]`` and
    ``spec["diameters"]``. Optional keys: ``n_frequencies`` (default 4), ``n_heads`` (4)."""
    missing = [k for k in ("n_particles", "spatial_dim", "species", "diameters", "dof") if k not in spec]
    if missing:
        raise ValueError(f"architecture 'periodic_equivariant' needs spec fields {missing} (a periodic particle system)")
    n, d = int(spec["n_particles"]), int(spec["spatial_dim"])
    if n * d != int(spec["dof"]) or len(spec["species"]) != n or len(spec["diameters"]) != n:
        raise ValueError(f"spec: dof = {spec['dof']} must be n_particles·spatial_dim = {n}·{d}, with one "
                         f"species and diameter per particle (got {len(spec['species'])}, {len(spec['diameters'])})")
    features = particle_features(spec["species"], spec["diameters"])
    hidden = int(spec["hidden"])
    heads = int(spec.get("n_heads", N_HEADS))
    heads = heads if hidden % heads == 0 else 1
    n_freq = int(spec.get("n_frequencies", N_FREQUENCIES))
    return FlowChain([EquivariantCoupling(features, d, layer % d, hidden, int(spec["n_hidden"]), int(spec["n_bins"]),
                                          n_freq, heads, generator) for layer in range(int(spec["n_layers"]))])
