"""Equivariant flow matching for clusters (DW-4, LJ-13): an E(n)-equivariant continuous flow.

Method: L. Klein, A. Krämer & F. Noé, "Equivariant flow matching", NeurIPS 2023,
arXiv:2306.15030. A continuous normalizing flow (Chen et al., NeurIPS 2018) transports the
mean-free Gaussian base (t = 0) to the configurations (t = 1) along dx/dt = v_θ(t, x), with

    log q(x(1)) = log q₀(x(0)) − ∫₀¹ div v_θ(t, x(t)) dt                    (instantaneous
                                                                           change of variables)

The divergence is exact (the trace of the D×D Jacobian, D = N·d ≤ 39, by D vector-Jacobian
products); the ODE is solved by torchdiffeq
(``odeint``, dopri5, rtol = atol = ``spec["ode_tol"]``).

Vector field: an EGNN (Satorras, Hoogeboom & Welling, "E(n) equivariant graph neural
networks", ICML 2021, eqs. 3–6) on the fully connected graph of the particles; node
features h⁰ = (time features of t, one-hot species), edge features the current and the
input distance; coordinate updates x_i ← x_i + (1/(N−1)) Σ_{j≠i} (x_i − x_j)/(r_ij + 1)·φ_x(m_ij)
(the normalization of the relative vector for stability, as in Klein et al.'s code); the
velocity is x^L − x⁰ minus its mean over the particles. It is invariant under translations
(only differences enter), equivariant under rotations/reflections and under permutations of
same-species particles, and mean-free, so a mean-free state stays mean-free.

Density on the mean-free subspace: the target exp(−u) (u translation invariant for DW-4 and
LJ-13, whose restraint acts on x − x̄) and the base are both densities on the
(N−1)·d-dimensional subspace Σ_i x_i = 0. Because v is translation invariant and mean-free,
its Jacobian J satisfies J = P J P (P the projection onto the subspace), so the trace of J
over R^{N·d} equals its trace on the subspace: the full divergence is the subspace one.

Training: conditional flow matching (Lipman et al., ICLR 2023; Tong et al., TMLR 2024,
"OT-CFM") with the linear path x_t = (1 − t)x₀ + t·x₁ and target velocity x₁ − x₀; the pairs
(x₀, x₁) come from minibatch optimal transport made equivariant (Klein et al. §4): the
minibatch assignment (Hungarian) on the cost min_R |R·x₀ − x₁|² (Kabsch), then each base
sample x₀ is aligned to its partner by a permutation within species (Hungarian on squared
particle distances) and a rotation (Kabsch). Aligning x₀ (not x₁) keeps both marginals
exact: the base is invariant under permutations and rotations.

Spec keys: ``n_particles``, ``spatial_dim``, ``species``, ``hidden`` (width of every MLP),
``n_layers`` (EGNN layers; ``n_hidden`` is not used: every MLP has one hidden layer),
``ode_tol``.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from boltzbench.samplers.flows.base import LOG_2PI, GaussianBase
from boltzbench.samplers.flows.layers import linear

N_TIME_FEATURES = 3  #: t, sin(πk t), cos(πk t) for k = 1..N_TIME_FEATURES


# ------------------------------------------------------------------------ base


def remove_mean(x: torch.Tensor, n_particles: int, spatial_dim: int) -> torch.Tensor:
    """(B, N·d) → the same with the centre of mass of every row moved to 0."""
    p = x.reshape(x.shape[0], n_particles, spatial_dim)
    return (p - p.mean(1, keepdim=True)).reshape(x.shape)


class MeanFreeGaussianBase(GaussianBase):
    """The standard Gaussian on the mean-free subspace {Σ_i y_i = 0} of dimension k = (N−1)·d.

    Drawn as P·z, z ~ N(0, I_{N·d}) (P removes the centre of mass), which is N(0, I_k) in
    any orthonormal basis of the subspace; its density with respect to the Lebesgue measure
    on the subspace is  log q₀(y) = −|y|²/2 − (k/2)·log 2π  (|·| of the projected y, so the
    value is translation invariant). The target is taken as a density on the same subspace
    (exp(−u) at mean-free x); the normalizing constants cancel in self-normalized weights and
    Metropolis–Hastings ratios. ``defensive`` = α > 0: the exact mixture
    (1 − α)·N(0, I_k) + α·N(0, τ²I_k) on the subspace (τ = ``defensive_scale``).
    """

    def __init__(self, n_particles: int, spatial_dim: int, defensive: float = 0.0, defensive_scale: float = 2.0):
        super().__init__(torch.zeros(n_particles * spatial_dim, dtype=torch.bool), defensive, defensive_scale)
        self.n_particles, self.spatial_dim = int(n_particles), int(spatial_dim)

    @property
    def subspace_dim(self) -> int:
        return (self.n_particles - 1) * self.spatial_dim

    def with_defensive(self, defensive: float, defensive_scale: float) -> "MeanFreeGaussianBase":
        return type(self)(self.n_particles, self.spatial_dim, defensive, defensive_scale)

    def sample(self, n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        """(n, N·d) mean-free draws on the generator's device."""
        device = generator.device
        z = torch.randn(n, self.n_particles * self.spatial_dim, generator=generator, dtype=dtype, device=device)
        if self.defensive > 0:
            wide = torch.rand(n, 1, generator=generator, dtype=dtype, device=device) < self.defensive
            z = torch.where(wide, self.defensive_scale * z, z)
        return remove_mean(z, self.n_particles, self.spatial_dim)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        k = self.subspace_dim
        sq = (remove_mean(z, self.n_particles, self.spatial_dim) ** 2).sum(-1)
        log_p = -0.5 * sq - 0.5 * k * LOG_2PI
        if self.defensive > 0:
            tau = self.defensive_scale
            log_wide = -0.5 * sq / tau**2 - 0.5 * k * LOG_2PI - k * math.log(tau)
            log_p = torch.logaddexp(log_p + math.log1p(-self.defensive), log_wide + math.log(self.defensive))
        return log_p


# ------------------------------------------------------------------------ EGNN


def _mlp(n_in: int, hidden: int, n_out: int, generator: torch.Generator, last_scale: float = 1.0) -> nn.Sequential:
    out = linear(hidden, n_out, generator)
    with torch.no_grad():
        out.weight.mul_(last_scale)
        out.bias.mul_(last_scale)
    return nn.Sequential(linear(n_in, hidden, generator), nn.SiLU(), linear(hidden, hidden, generator), nn.SiLU(), out)


class EGNNLayer(nn.Module):
    """One E(n)-equivariant layer (Satorras et al. 2021, eqs. 3–6) on the complete graph:
    m_ij = φ_e(h_i, h_j, r_ij, r⁰_ij); x_i += mean_j (x_i − x_j)/(r_ij + 1)·φ_x(m_ij);
    h_i += φ_h(h_i, Σ_j m_ij)."""

    def __init__(self, hidden: int, generator: torch.Generator):
        super().__init__()
        self.phi_e = nn.Sequential(linear(2 * hidden + 2, hidden, generator), nn.SiLU(),
                                   linear(hidden, hidden, generator), nn.SiLU())
        self.phi_x = _mlp(hidden, hidden, 1, generator, last_scale=1e-2)
        self.phi_h = _mlp(2 * hidden, hidden, hidden, generator)

    def forward(self, h, x, r0, ii, jj):
        b, n, _ = x.shape
        diff = x[:, ii] - x[:, jj]  # (B, E, d), E = N(N−1) ordered pairs grouped by i
        r = torch.sqrt((diff * diff).sum(-1, keepdim=True) + 1e-12)
        m = self.phi_e(torch.cat([h[:, ii], h[:, jj], r, r0], -1))  # (B, E, H)
        shift = (diff / (r + 1.0) * self.phi_x(m)).reshape(b, n, n - 1, -1).mean(2)
        agg = m.reshape(b, n, n - 1, -1).sum(2)
        return h + self.phi_h(torch.cat([h, agg], -1)), x + shift


class EGNNField(nn.Module):
    """v_θ(t, x): (B,) or scalar t, (B, N, d) x → (B, N, d) velocity (mean-free)."""

    def __init__(self, n_particles: int, species: list[int], hidden: int, n_layers: int, generator: torch.Generator):
        super().__init__()
        n = int(n_particles)
        species_t = torch.as_tensor(species, dtype=torch.long)
        n_species = int(species_t.max()) + 1
        self.register_buffer("species_onehot", torch.nn.functional.one_hot(species_t, n_species).double())
        ii, jj = zip(*[(i, j) for i in range(n) for j in range(n) if j != i])
        self.register_buffer("ii", torch.tensor(ii, dtype=torch.long))
        self.register_buffer("jj", torch.tensor(jj, dtype=torch.long))
        self.embed = linear(1 + 2 * N_TIME_FEATURES + n_species, hidden, generator)
        self.layers = nn.ModuleList([EGNNLayer(hidden, generator) for _ in range(n_layers)])

    def time_features(self, t: torch.Tensor, b: int, n: int) -> torch.Tensor:
        t = t.reshape(-1, 1).expand(b, 1) if t.numel() > 1 else t.reshape(1, 1).expand(b, 1)
        k = torch.arange(1, N_TIME_FEATURES + 1, dtype=t.dtype, device=t.device) * math.pi
        feats = torch.cat([t, torch.sin(k * t), torch.cos(k * t)], -1)
        return feats[:, None, :].expand(b, n, feats.shape[-1])

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        onehot = self.species_onehot.to(x.dtype)[None].expand(b, n, -1)
        h = self.embed(torch.cat([self.time_features(t.to(x.dtype), b, n), onehot], -1))
        diff0 = x[:, self.ii] - x[:, self.jj]
        r0 = torch.sqrt((diff0 * diff0).sum(-1, keepdim=True) + 1e-12)
        x0, xl = x, x
        for layer in self.layers:
            h, xl = layer(h, xl, r0, self.ii, self.jj)
        v = xl - x0
        return v - v.mean(1, keepdim=True)


# ------------------------------------------------------------------------ CNF


class EquivariantCNF(nn.Module):
    """The trained map T of ``architecture = "equivariant_flow_matching"``: the time-1 map of
    dx/dt = v_θ(t, x) (base at t = 0, data at t = 1), on (B, N·d) particle-major tensors.
    ``forward(y) -> (x, log|det ∂x/∂y|)``, ``inverse(x) -> (y, log|det ∂y/∂x|)``; the log-dets
    are ±∫ div v dt on the mean-free subspace (see the module docstring)."""

    def __init__(self, spec: dict[str, Any], generator: torch.Generator | None = None):
        super().__init__()
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.n_particles, self.spatial_dim = int(spec["n_particles"]), int(spec["spatial_dim"])
        species = spec.get("species") or [0] * self.n_particles
        if len(species) != self.n_particles:
            raise ValueError(f"spec['species'] has {len(species)} entries for n_particles = {self.n_particles}")
        if self.n_particles < 2:  # the centred positions of one particle are the origin: nothing to sample
            raise ValueError(f"spec['n_particles'] must be >= 2 for equivariant flow matching, got {self.n_particles}")
        self.tol = float(spec.get("ode_tol", 1e-5))
        self.field = EGNNField(self.n_particles, species, int(spec["hidden"]), int(spec["n_layers"]), generator)

    @property
    def dim(self) -> int:
        return self.n_particles * self.spatial_dim

    def velocity(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """v_θ(t, x) on flat (B, N·d) states."""
        b = x.shape[0]
        return self.field(t, x.reshape(b, self.n_particles, self.spatial_dim)).reshape(b, -1)

    def velocity_and_divergence(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v and its exact divergence tr(∂v/∂x): one forward pass and D backward passes, each
        giving one diagonal element ∂v_k/∂x_k for the whole batch (on the CPU 3–4× faster than
        ``torch.func.vmap(torch.func.jacrev(...))``, measured for DW-4 and LJ-13). Under an
        outer ``torch.no_grad`` both results are detached; with gradients on they stay
        differentiable (e.g. the Jacobian of the time-1 map by autograd)."""
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            v = self.velocity(t, x)
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for k in range(self.dim):
                (grad,) = torch.autograd.grad(v[:, k].sum(), x, retain_graph=differentiable or k < self.dim - 1,
                                              create_graph=differentiable)
                div = div + grad[:, k]
        return (v, div) if differentiable else (v.detach(), div.detach())

    def _integrate(self, z: torch.Tensor, t0: float, t1: float) -> tuple[torch.Tensor, torch.Tensor]:
        from torchdiffeq import odeint

        def rhs(t, state):
            return self.velocity_and_divergence(t, state[0])

        times = torch.tensor([t0, t1], dtype=z.dtype, device=z.device)
        state = (z, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device))
        xs, ints = odeint(rhs, state, times, method="dopri5", rtol=self.tol, atol=self.tol)
        return xs[-1], ints[-1]

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base latent y (t = 0) → configuration x (t = 1); log|det ∂x/∂y| = ∫₀¹ div v dt."""
        return self._integrate(y, 0.0, 1.0)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Configuration x → latent y; log|det ∂y/∂x| = ∫₁⁰ div v dt = −∫₀¹ div v dt."""
        return self._integrate(x, 1.0, 0.0)


# ------------------------------------------------------------------------ OT pairing


def kabsch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rotations R (det +1) minimizing |a·Rᵀ − b|² for batches a, b (..., N, d) of centred
    point sets (Kabsch, Acta Cryst. A32, 922 (1976)): H = aᵀb = U S Vᵀ, R = V·diag(1, …, s)·Uᵀ,
    s = sign det(V Uᵀ). Returns (..., d, d)."""
    h = a.transpose(-1, -2) @ b
    u, _, vh = torch.linalg.svd(h)
    v = vh.transpose(-1, -2)
    s = torch.sign(torch.linalg.det(v @ u.transpose(-1, -2)))
    fix = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device)
    fix[..., -1] = s
    return (v * fix[..., None, :]) @ u.transpose(-1, -2)


def _det3(m: torch.Tensor) -> torch.Tensor:
    """Determinants of (..., 3, 3) matrices by the cofactor expansion (elementwise: batched
    LU is slow for millions of tiny matrices)."""
    return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))


def _symmetric_3x3_eigenvalues(a: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending) of symmetric (..., 3, 3) matrices in closed form, elementwise
    (O. K. Smith, Commun. ACM 4, 168 (1961)): with q = tr A/3, p² = tr((A − qI)²)/6 and
    r = det((A − qI)/p)/2, they are q + 2p·cos(φ + 2πk/3), φ = arccos(r)/3."""
    q = a.diagonal(dim1=-2, dim2=-1).sum(-1) / 3
    shifted = a - q[..., None, None] * torch.eye(3, dtype=a.dtype, device=a.device)
    p = torch.sqrt((shifted * shifted).sum((-1, -2)) / 6)
    r = _det3(shifted / p.clamp_min(torch.finfo(a.dtype).tiny)[..., None, None]) / 2  # (1e-300 is 0 in float32)
    phi = torch.arccos(r.clamp(-1.0, 1.0)) / 3
    first, last = q + 2 * p * torch.cos(phi), q + 2 * p * torch.cos(phi + 2 * math.pi / 3)
    return torch.stack([first, 3 * q - first - last, last], -1)


def aligned_sq_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min over rotations R (det +1) of |a·Rᵀ − b|² for centred point sets (..., N, d), without
    forming R: |a|² + |b|² − 2·max_R tr(R·H), H = aᵀb, and max_R tr(R·H) = σ₁ + … + σ_{d−1} +
    sign(det H)·σ_d (Kabsch 1976; Umeyama, IEEE TPAMI 13, 376 (1991)); in 2D it is
    √((H₀₀ + H₁₁)² + (H₀₁ − H₁₀)²), in 3D the σ's are the roots of the closed-form eigenvalues
    of HᵀH (no batched SVD or LU: ~4× faster for the B² pairs of a minibatch; where HᵀH has
    repeated eigenvalues, e.g. collinear points, accurate to ~1e-4·(|a|² + |b|²), ample for a
    transport cost; computed in float64 whatever the inputs' dtype). Returns (...) in a's dtype."""
    dtype, a, b = a.dtype, a.double(), b.double()
    h = a.transpose(-1, -2) @ b
    if h.shape[-1] == 2:
        best = torch.hypot(h[..., 0, 0] + h[..., 1, 1], h[..., 0, 1] - h[..., 1, 0])
    else:
        if h.shape[-1] == 3:
            sv, det = torch.sqrt(_symmetric_3x3_eigenvalues(h.transpose(-1, -2) @ h).clamp_min(0.0)), _det3(h)
        else:
            sv, det = torch.linalg.svdvals(h), torch.linalg.det(h)
        best = sv[..., :-1].sum(-1) + torch.sign(det) * sv[..., -1]
    return ((a * a).sum((-1, -2)) + (b * b).sum((-1, -2)) - 2.0 * best).to(dtype)


MAX_ENUMERATED_PERMUTATIONS = 720  #: up to this many within-species permutations the alignment is exact


def species_permutations(species: np.ndarray) -> np.ndarray | None:
    """All permutations that map every particle to one of its species, (K, N), or None when
    there are more than ``MAX_ENUMERATED_PERMUTATIONS`` (K = Π_s n_s!)."""
    groups = [np.flatnonzero(species == s) for s in np.unique(species)]
    if math.prod(math.factorial(len(g)) for g in groups) > MAX_ENUMERATED_PERMUTATIONS:
        return None
    perms = np.arange(len(species))[None]
    for g in groups:
        choices = np.array(list(itertools.permutations(g)))
        expanded = np.repeat(perms, len(choices), axis=0)
        expanded[:, g] = np.tile(choices, (len(perms), 1))
        perms = expanded
    return perms


def permute_within_species(a: np.ndarray, b: np.ndarray, species: np.ndarray) -> np.ndarray:
    """The permutation π (within each species) minimizing Σ_i |a_π(i) − b_i|² (Hungarian,
    scipy ``linear_sum_assignment``); returns a[π]."""
    out = a.copy()
    for s in np.unique(species):
        idx = np.flatnonzero(species == s)
        cost = ((b[idx][:, None, :] - a[idx][None, :, :]) ** 2).sum(-1)  # rows: b's particles
        _, col = linear_sum_assignment(cost)
        out[idx] = a[idx[col]]
    return out


def _alternate(a: torch.Tensor, target: torch.Tensor, species: np.ndarray, rounds: int = 2) -> torch.Tensor:
    """``rounds`` times: permute each a (B, N, d) within species onto its target, then rotate it (Kabsch)."""
    t_np = target.cpu().numpy()
    for _ in range(rounds):
        a_np = a.cpu().numpy()
        a = torch.as_tensor(np.stack([permute_within_species(a_np[k], t_np[k], species) for k in range(len(a_np))]),
                            device=target.device)
        a = a @ kabsch(a, target).transpose(-1, -2)
    return a


def align_to(a: torch.Tensor, target: torch.Tensor, species: np.ndarray) -> torch.Tensor:
    """Each a (B, N, d) moved by a within-species permutation and a rotation as close as found to
    its target (B, N, d). Exact (all permutations, each with its optimal rotation) when there
    are at most ``MAX_ENUMERATED_PERMUTATIONS``; otherwise Hungarian permutation and Kabsch
    rotation alternated twice, from a as drawn and from a first rotated, the closer kept (a
    heuristic for the joint minimum, as in Klein et al. 2023, §4)."""
    perms = species_permutations(species)
    if perms is not None:
        candidates = a[:, torch.as_tensor(perms, device=a.device)]  # (B, K, N, d)
        best = aligned_sq_distance(candidates, target[:, None]).argmin(1)
        a = candidates[torch.arange(len(a), device=a.device), best]
        return a @ kabsch(a, target).transpose(-1, -2)
    permuted_first = _alternate(a, target, species)
    rotated_first = _alternate(a @ kabsch(a, target).transpose(-1, -2), target, species)
    closer = ((rotated_first - target) ** 2).sum((-1, -2)) < ((permuted_first - target) ** 2).sum((-1, -2))
    return torch.where(closer[:, None, None], rotated_first, permuted_first)


def equivariant_ot_pairs(x0: torch.Tensor, x1: torch.Tensor, species: np.ndarray) -> torch.Tensor:
    """Base samples x0 (B, N, d) reordered and aligned to the data x1 (B, N, d), both centred.

    1. Minibatch OT: the assignment (Hungarian) minimizing Σ_i c(x0_σ(i), x1_i) with
       c = min over rotations of the squared distance (:func:`aligned_sq_distance`).
    2. Each assigned x0 is permuted within species and rotated onto its x1 (:func:`align_to`).
    Aligning x0 (not x1) keeps both marginals exact: the base is invariant under permutations
    and rotations.
    """
    with torch.no_grad():
        a, target = x0.double(), x1.double()
        cost = aligned_sq_distance(a[:, None], target[None])  # (B0, B1)
        row, col = linear_sum_assignment(cost.cpu().numpy())
        order = np.empty(len(a), dtype=np.int64)
        order[col] = row
        a = align_to(a[torch.as_tensor(order, device=a.device)], target, species)
    return a.to(x0.dtype)


# ------------------------------------------------------------------------ training


def fm_batch(cnf: EquivariantCNF, base: MeanFreeGaussianBase, x1: torch.Tensor, generator: torch.Generator,
             species: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, x_t, target velocity) for centred data x1 (B, D) with OT-paired base samples."""
    b, n, d = x1.shape[0], cnf.n_particles, cnf.spatial_dim
    x0 = base.sample(b, generator, x1.dtype).to(x1.device)
    x0 = equivariant_ot_pairs(x0.reshape(b, n, d), x1.reshape(b, n, d), species).reshape(b, -1)
    t = torch.rand(b, 1, generator=generator, dtype=x1.dtype, device=generator.device).to(x1.device)
    return t[:, 0], (1 - t) * x0 + t * x1, x1 - x0


def fm_loss(cnf: EquivariantCNF, batch) -> torch.Tensor:
    """Conditional flow-matching loss: mean over the batch of |v_θ(t, x_t) − (x₁ − x₀)|²/D."""
    t, xt, target = batch
    return ((cnf.velocity(t, xt) - target) ** 2).mean()


def train_flow_matching(bg, settings, generator: torch.Generator, *, data_train: torch.Tensor,
                        data_val: torch.Tensor | None, data_weights: torch.Tensor | None = None,
                        should_stop: Callable[[], str | None] = lambda: None) -> dict[str, Any]:
    """Train ``bg.couplings`` (an :class:`EquivariantCNF`) by equivariant OT conditional flow
    matching on centred data; no energies. Adam (Kingma & Ba 2015), gradient-norm clipping at
    ``settings.clip_norm``; every ``eval_every`` steps the flow-matching loss on a fixed
    held-out batch (paired once; ``data_val``, or the training data when None) decides which
    parameters are kept; ``patience`` evaluations without improvement stop training.
    Returns the diagnostics of :func:`boltzbench.samplers.flows.train.train`."""
    cnf: EquivariantCNF = bg.couplings
    base = bg.base if isinstance(bg.base, MeanFreeGaussianBase) else MeanFreeGaussianBase(cnf.n_particles,
                                                                                        cnf.spatial_dim)
    if data_train is None or len(data_train) == 0:
        raise RuntimeError("equivariant_flow_matching trains on data: none were given")
    species = np.asarray(bg.spec.get("species") or [0] * cnf.n_particles)
    n, d = cnf.n_particles, cnf.spatial_dim
    data_train = remove_mean(data_train, n, d)
    val_source = remove_mean(data_val, n, d) if data_val is not None and len(data_val) else data_train
    val_gen = torch.Generator(device=generator.device).manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
    val_idx = torch.randperm(len(val_source), generator=val_gen, device=generator.device)[:4 * settings.batch_size]
    val_batch = fm_batch(cnf, base, val_source[val_idx.to(val_source.device)], val_gen, species)
    params = [p for p in cnf.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=settings.lr)
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    best_val, best_state, best_step, bad, skipped, stopped_by, step = math.inf, None, None, 0, 0, "steps", 0
    for step in range(settings.steps):
        reason = should_stop()
        if reason:
            stopped_by = reason
            break
        if data_weights is None:
            idx = torch.randint(len(data_train), (settings.batch_size,), generator=generator, device=generator.device)
        else:
            idx = torch.multinomial(data_weights.to(generator.device), settings.batch_size, replacement=True,
                                    generator=generator)
        loss = fm_loss(cnf, fm_batch(cnf, base, data_train[idx.to(data_train.device)], generator, species))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, settings.clip_norm)
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            skipped += 1
            opt.zero_grad(set_to_none=True)
            continue
        opt.step()
        if (step + 1) % settings.eval_every == 0:
            with torch.no_grad():
                val = float(fm_loss(cnf, val_batch))
            history.append({"step": step + 1, "fm": float(loss.detach()), "val": val, "val_fm": val})
            if math.isfinite(val) and val < best_val:
                best_val, best_step, bad = val, step + 1, 0
                best_state = copy.deepcopy(cnf.state_dict())
            else:
                bad += 1
                if bad >= settings.patience:
                    stopped_by, step = "early_stopping", step + 1
                    break
    else:
        step = settings.steps
    if best_state is not None:
        cnf.load_state_dict(best_state)
    return {"steps": step, "stopped_by": stopped_by, "best_step": best_step,
            "best_val": best_val if math.isfinite(best_val) else None, "skipped_steps": skipped,
            "nonfinite_samples": 0, "train_wall_s": time.perf_counter() - started, "history": history}
