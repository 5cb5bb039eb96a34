"""Equivariant flow matching (samplers/flows/flow_matching.py) against exact answers.

Exact answers: the symmetry group of the cluster densities (rotations, translations,
permutations within a species leave log q unchanged, a swap across species does not), the
change of variables by brute force (the Jacobian of the time-1 map by autograd, restricted to
the mean-free subspace in an orthonormal basis), the normalization of the mean-free Gaussian
on its subspace (1D quadrature for N = 2, d = 1), and self-normalized importance estimates of
⟨|x|²⟩ under a mean-free Gaussian target, whose exact value is (N − 1)·d·σ².
"""

import math

import numpy as np
import pytest
import scipy.integrate
import torch

import boltzbench
from boltzbench import Budget
from boltzbench.contracts import ParameterError
from boltzbench.samplers.flows.flow_matching import (EquivariantCNF, MeanFreeGaussianBase, align_to,
                                                     aligned_sq_distance, equivariant_ot_pairs, kabsch, remove_mean,
                                                     species_permutations)
from boltzbench.samplers.flows.model import BoltzmannGenerator
from boltzbench.samplers.flows.persistence import load_flow, save_flow
from boltzbench.samplers.flows.sampler import FlowSampler


def cluster_spec(n, d, species=None, hidden=8, n_layers=2, tol=1e-7):
    return {"dof": n * d, "coordinates": "cartesian", "architecture": "equivariant_flow_matching",
            "n_particles": n, "spatial_dim": d, "species": species or [0] * n, "diameters": [1.0] * n,
            "hidden": hidden, "n_layers": n_layers, "n_hidden": 2, "n_bins": 8, "ode_tol": tol}


def generator_with_field(spec, seed=0, strength=30.0):
    """A BoltzmannGenerator (float64) whose random vector field is far from zero: the
    coordinate heads start near zero (training starts at the identity), so they are scaled up."""
    bg = BoltzmannGenerator(spec, generator=torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():
        for layer in bg.couplings.field.layers:
            layer.phi_x[-1].weight.mul_(strength)
            layer.phi_x[-1].bias.mul_(strength)
        bg.couplings.field.embed.weight.mul_(5.0)  # a clear dependence on time and species
    return bg


def random_rotation(d, seed):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def mean_free_basis(n, d):
    """(N·d, (N−1)·d) orthonormal basis of {Σ_i x_i = 0} (particle-major order)."""
    p = torch.eye(n * d, dtype=torch.float64) - torch.kron(torch.full((n, n), 1.0 / n, dtype=torch.float64),
                                                           torch.eye(d, dtype=torch.float64))
    u, s, _ = torch.linalg.svd(p)
    return u[:, : (n - 1) * d]


# ------------------------------------------------------------------ symmetries


def test_log_q_is_invariant_under_rotations_translations_and_same_species_permutations():
    n, d, b = 4, 3, 2
    bg = generator_with_field(cluster_spec(n, d, species=[0, 0, 1, 1], tol=1e-6), strength=10.0)
    x = remove_mean(torch.randn(b, n * d, generator=torch.Generator().manual_seed(1), dtype=torch.float64), n, d)
    rot = random_rotation(d, 2)
    with torch.no_grad():
        ref = bg.log_q(x)
        moved = [(x.reshape(b, n, d) @ rot.T).reshape(b, -1),
                 x + torch.tensor([0.7, -1.1, 0.4], dtype=torch.float64).repeat(n),
                 x.reshape(b, n, d)[:, [1, 0, 3, 2]].reshape(b, -1)]
        for other in moved:
            assert torch.allclose(bg.log_q(other), ref, atol=1e-5, rtol=0)
        # the map: equivariant under rotations and same-species swaps, not under a cross-species swap
        out, ld = bg.push(x)
        out_rot, ld_rot = bg.push(moved[0])
        assert torch.allclose(out_rot, (out.reshape(b, n, d) @ rot.T).reshape(b, -1), atol=1e-5)
        assert torch.allclose(ld_rot, ld, atol=1e-5)
        out_same, _ = bg.push(moved[2])
        assert torch.allclose(out_same, out.reshape(b, n, d)[:, [1, 0, 3, 2]].reshape(b, -1), atol=1e-5)
        cross = [2, 1, 0, 3]
        out_cross, _ = bg.push(x.reshape(b, n, d)[:, cross].reshape(b, -1))
        assert (out_cross - out.reshape(b, n, d)[:, cross].reshape(b, -1)).abs().max() > 1e-4  # 10× the tolerance above
        assert (out - x).abs().max() > 1e-2  # a non-trivial map
        assert remove_mean(out, n, d).sub(out).abs().max() < 1e-10  # mean-free stays mean-free


# ------------------------------------------------------------------ change of variables


def test_forward_inverse_round_trip_and_log_det_against_brute_force_jacobian():
    n, d = 2, 2
    bg = generator_with_field(cluster_spec(n, d, tol=1e-8), seed=5)
    cnf = bg.couplings
    with torch.no_grad():  # a net outward push, so that the volume change is O(1)
        for layer in cnf.field.layers:
            layer.phi_x[-1].bias.fill_(0.5)
    y = remove_mean(torch.randn(2, n * d, generator=torch.Generator().manual_seed(6), dtype=torch.float64), n, d)
    with torch.no_grad():
        x, ld = cnf(y)
        y_back, ld_inv = cnf.inverse(x)
    assert torch.allclose(y_back, y, atol=1e-6)
    assert torch.allclose(ld + ld_inv, torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert ld.abs().min() > 0.1  # the volume changes: the check below is not 0 = 0
    q = mean_free_basis(n, d)
    for k in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: cnf(v[None])[0][0], y[k])
        sign, brute = torch.linalg.slogdet(q.T @ jac @ q)
        assert sign > 0
        assert abs(float(brute - ld[k])) < 1e-4


# ------------------------------------------------------------------ base


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_mean_free_base_is_normalized_on_its_subspace_and_samples_are_mean_free(alpha):
    base = MeanFreeGaussianBase(2, 1, defensive=alpha, defensive_scale=2.0)
    # N = 2, d = 1: the subspace is s·(1, −1)/√2 with s the orthonormal coordinate
    direction = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2.0)

    def density(s):
        return float(torch.exp(base.log_prob(torch.tensor([[s]], dtype=torch.float64) * direction)))

    total, _ = scipy.integrate.quad(density, -np.inf, np.inf)
    assert abs(total - 1.0) < 1e-8
    z = base.sample(100_000, torch.Generator().manual_seed(0), torch.float64)
    assert z.sum(-1).abs().max() < 1e-12
    s2 = (z @ direction) ** 2
    exact = (1 - alpha) + alpha * 4.0
    assert abs(float(s2.mean()) - exact) < 5 * float(s2.std()) / math.sqrt(len(s2))
    # larger clusters: translation invariant log-density, mean-free draws
    big = MeanFreeGaussianBase(5, 3)
    zb = big.sample(10, torch.Generator().manual_seed(1), torch.float64)
    assert zb.reshape(10, 5, 3).mean(1).abs().max() < 1e-12
    assert torch.allclose(big.log_prob(zb + 3.0), big.log_prob(zb))
    assert torch.allclose(big.log_prob(zb), -0.5 * (zb ** 2).sum(-1) - 6.0 * math.log(2 * math.pi))


# ------------------------------------------------------------------ OT pairing


def test_equivariant_ot_pairing_undoes_rotations_shuffles_and_same_species_permutations():
    n, d = 5, 3
    gen = torch.Generator().manual_seed(0)
    x1 = remove_mean(torch.randn(4, n * d, generator=gen, dtype=torch.float64), n, d).reshape(4, n, d)
    species = np.array([0, 0, 0, 1, 1])
    rot = random_rotation(d, 7)
    rotated = (x1 @ rot.T)[[3, 1, 0, 2]]  # rotated copies, shuffled within the batch
    assert torch.allclose(equivariant_ot_pairs(rotated, x1, species), x1, atol=1e-8)
    permuted = x1[:, [2, 0, 1, 4, 3]]  # one configuration at a time: permuted within species
    for k in range(4):
        assert torch.allclose(equivariant_ot_pairs(permuted[k:k + 1], x1[k:k + 1], species), x1[k:k + 1], atol=1e-8)
    r = kabsch(x1 @ rot.T, x1)
    assert torch.allclose(torch.linalg.det(r), torch.ones(4, dtype=torch.float64))
    # random partners: the pairing lowers the transport cost and never mixes species
    x0 = remove_mean(torch.randn(4, n * d, generator=gen, dtype=torch.float64), n, d).reshape(4, n, d)
    x0[:, 3:] += 10.0  # species 1 far from species 0: a cross-species swap would show
    x0 = x0 - x0.mean(1, keepdim=True)
    paired = equivariant_ot_pairs(x0, x1, species)
    assert ((paired - x1) ** 2).sum() < ((x0 - x1) ** 2).sum()
    intra0 = (x0[:, 3] - x0[:, 4]).norm(dim=-1)  # distance of the two species-1 particles
    intra = (paired[:, 3] - paired[:, 4]).norm(dim=-1)
    assert torch.allclose(intra.sort().values, intra0.sort().values, atol=1e-8)  # rigid moves only
    assert (paired[:, :3, None] - paired[:, None, 3:]).norm(dim=-1).min() > 4.0


@pytest.mark.parametrize("d", [2, 3])
def test_aligned_distance_is_the_kabsch_minimum_and_no_rotation_beats_it(d):
    gen = torch.Generator().manual_seed(d)
    a = torch.randn(64, 5, d, generator=gen, dtype=torch.float64)
    b = torch.randn(64, 5, d, generator=gen, dtype=torch.float64)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    by_kabsch = ((a @ kabsch(a, b).transpose(-1, -2) - b) ** 2).sum((-1, -2))
    assert torch.allclose(aligned_sq_distance(a, b), by_kabsch, atol=1e-10)
    for seed in range(20):  # random rotations never come closer
        r = random_rotation(d, 100 + seed)
        assert (((a @ r.T - b) ** 2).sum((-1, -2)) >= by_kabsch - 1e-10).all()


def test_aligned_distance_in_3d_agrees_with_kabsch_for_degenerate_point_sets():
    """The closed-form 3×3 eigenvalues where they are delicate: a set against itself rotated
    (distance 0), collinear and planar sets (rank-deficient H), equal eigenvalues (a regular
    tetrahedron: HᵀH ∝ I). Repeated eigenvalues of HᵀH cost precision (φ = arccos(r)/3 near
    r = ±1, and σ = √λ): within 1e-4·(|a|² + |b|²), ample for a transport cost."""
    from boltzbench.samplers.flows.flow_matching import _symmetric_3x3_eigenvalues

    gen = torch.Generator().manual_seed(3)
    line = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 2.0, -0.5]], dtype=torch.float64)
    plane = torch.randn(5, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    tetra = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    for a in (line, plane - plane.mean(0), tetra):
        for r in (torch.eye(3, dtype=torch.float64), random_rotation(3, 11)):
            b = a @ r.T
            scale = float(2 * (a * a).sum())
            assert abs(float(aligned_sq_distance(a[None], b[None])[0])) < 1e-4 * scale
            noisy = b + 0.1 * torch.randn(b.shape, generator=gen, dtype=torch.float64)
            noisy = noisy - noisy.mean(0)
            by_kabsch = ((a @ kabsch(a[None], noisy[None])[0].T - noisy) ** 2).sum()
            assert abs(float(aligned_sq_distance(a[None], noisy[None])[0] - by_kabsch)) < 1e-4 * scale
    m = torch.randn(1000, 3, 3, generator=gen, dtype=torch.float64)
    sym = m @ m.transpose(-1, -2)
    assert torch.allclose(_symmetric_3x3_eigenvalues(sym), torch.linalg.eigvalsh(sym).flip(-1), atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_aligned_distance_of_sets_with_isotropic_h_is_finite_in_every_dtype(dtype):
    """HᵀH = c·I exactly (p = 0 in the closed form): one particle (a centred set is the
    origin) and a set against zero; in float32 the old guard p ≥ 1e-300 was 0, so 0/0 = NaN."""
    from boltzbench.samplers.flows.flow_matching import _symmetric_3x3_eigenvalues

    tetra = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=dtype)
    assert torch.equal(aligned_sq_distance(torch.zeros(2, 1, 3, dtype=dtype), torch.zeros(2, 1, 3, dtype=dtype)),
                       torch.zeros(2, dtype=dtype))
    assert float(aligned_sq_distance(tetra, torch.zeros_like(tetra))) == pytest.approx(12.0)  # |a|² + 0 − 0
    assert torch.equal(_symmetric_3x3_eigenvalues(4 * torch.eye(3, dtype=dtype)), torch.full((3,), 4.0, dtype=dtype))


def test_exact_alignment_is_the_brute_force_minimum_over_permutations_and_rotations():
    """DW-4-sized (4 identical particles in 2D: 24 permutations): the enumerated alignment
    reaches the minimum over all permutations of a, each rotated optimally."""
    import itertools

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(32, 4, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(32, 4, 2, generator=gen, dtype=torch.float64)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    species = np.zeros(4, dtype=int)
    assert species_permutations(species).shape == (24, 4)
    assert species_permutations(np.array([0, 0, 1, 1, 1])).shape == (12, 5)
    assert species_permutations(np.zeros(7, dtype=int)) is None  # 5040 > the enumeration limit
    brute = torch.stack([aligned_sq_distance(a[:, list(p)], b) for p in itertools.permutations(range(4))]).min(0).values
    aligned = align_to(a, b, species)
    assert torch.allclose(((aligned - b) ** 2).sum((-1, -2)), brute, atol=1e-10)
    assert torch.allclose(torch.cdist(aligned, aligned).flatten(1).sort(-1).values,  # a rigid move of a
                          torch.cdist(a, a).flatten(1).sort(-1).values, atol=1e-10)


def test_heuristic_alignment_of_many_identical_particles_undoes_a_permutation_or_a_rotation():
    """Beyond the enumeration limit (7 identical particles): Hungarian and Kabsch alternated
    recover a permuted copy and a rotated copy exactly, and never end farther than Kabsch alone."""
    gen = torch.Generator().manual_seed(2)
    b = torch.randn(8, 7, 3, generator=gen, dtype=torch.float64)
    b = b - b.mean(1, keepdim=True)
    species = np.zeros(7, dtype=int)
    assert torch.allclose(align_to(b[:, [3, 6, 0, 1, 5, 2, 4]], b, species), b, atol=1e-8)
    assert torch.allclose(align_to(b @ random_rotation(3, 5).T, b, species), b, atol=1e-8)
    a = torch.randn(8, 7, 3, generator=gen, dtype=torch.float64)
    a = a - a.mean(1, keepdim=True)
    assert (((align_to(a, b, species) - b) ** 2).sum((-1, -2)) <= aligned_sq_distance(a, b) + 1e-10).all()


# ------------------------------------------------------------------ reweighting


def test_reweighting_a_nontrivial_flow_recovers_the_exact_second_moment():
    """Target: the mean-free Gaussian of width σ on the subspace, ⟨|x|²⟩ = (N−1)·d·σ²; the
    proposal: a random (non-trivial) equivariant flow with the defensive base mixture. A wrong
    sign of the log-det moves the estimate by 38 standard errors, a missing one by 23, half of
    it by 11 (checked by hand when the test was written)."""
    n, d, sigma = 3, 2, 1.4
    bg = generator_with_field(cluster_spec(n, d, tol=1e-6), seed=8, strength=10.0)
    with torch.no_grad():  # a net outward push: log|det| ≈ 1.4 ± 0.5, so dropping or flipping it shows
        for layer in bg.couplings.field.layers:
            layer.phi_x[-1].bias.fill_(0.5)
    bg.base = bg.base.with_defensive(0.2, 2.0)
    with torch.no_grad():
        x, log_q = bg.push_base(bg.draw_base(3000, torch.Generator().manual_seed(9)))
    sq = (x * x).sum(-1)
    log_w = -0.5 * sq / sigma**2 - log_q
    w = torch.exp(log_w - log_w.max()).numpy()
    f = sq.numpy()
    mu = (w * f).sum() / w.sum()
    se = math.sqrt(np.sum((w * (f - mu)) ** 2)) / w.sum()
    exact = (n - 1) * d * sigma**2
    assert abs(mu - exact) < 4.5 * se, f"{mu:.4f} ± {se:.4f}, exact {exact}"
    assert se < 0.1 * exact
    kish = w.sum() ** 2 / (w * w).sum()
    assert kish < 0.98 * len(w)  # the weights are not trivial


# ------------------------------------------------------------------ persistence


def test_saved_and_reloaded_flow_has_the_same_log_q(tmp_path):
    spec = cluster_spec(4, 2, species=[0, 1, 0, 1])
    bg = generator_with_field(spec, seed=11).float()
    x = remove_mean(torch.randn(5, 8, generator=torch.Generator().manual_seed(12)) * 2, 4, 2)
    path = save_flow(tmp_path / "flow.pt", bg.state_dict(), bg.spec, {"setup_cost": {}})
    state, spec2, _, _ = load_flow(path)
    bg2 = BoltzmannGenerator(spec2)
    bg2.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(bg2.log_q(x), bg.log_q(x))


# ------------------------------------------------------------------ the flow sampler


TINY = dict(architecture="equivariant_flow_matching", n_layers=2, hidden=16, train_steps=30, eval_every=10,
            batch_size=64, data_steps=80, data_chains=4, sample_batch=512, n_chains=64,
            train_fraction=0.9, ode_tol=1e-4)
TINY_BUDGET = 1700  # setup: 4 starts relaxed (100 evaluations each) + 4 × 80 MD steps; the rest samples


@pytest.mark.slow  # ~40 s each on the shared 2-core machine
@pytest.mark.parametrize("mode", ["reweight", "mcmc"])
def test_flow_sampler_runs_equivariant_flow_matching_on_dw4(mode, tmp_path):
    system = boltzbench.get_system("dw4")
    sampler = FlowSampler(mode=mode, train_seed=0, reuse_dir=str(tmp_path), **TINY)
    snaps = list(sampler.run(system, Budget(max_evals=TINY_BUDGET, n_snapshots=1), torch.Generator().manual_seed(0)))
    last = snaps[-1]
    assert torch.isfinite(last.energies).all()
    assert last.diagnostics["training"]["steps"] > 0
    assert system.ledger.total_evals <= TINY_BUDGET + sampler.sample_batch
    pos = last.positions.reshape(-1, 4, 2)
    assert pos.mean(1).abs().max() < 1e-4  # mean-free samples
    if mode == "reweight":
        assert last.diagnostics["kish_ess"] > 1.0
    else:
        assert last.diagnostics["flow_acceptance"] > 0.0
    (path,) = tmp_path.glob("flow-*.pt")
    state, spec, _, _ = load_flow(path)
    bg = BoltzmannGenerator(spec)
    bg.load_state_dict(state)
    assert spec["architecture"] == "equivariant_flow_matching" and spec["species"] == [0, 0, 0, 0]


def test_bad_input_names_the_field():
    with pytest.raises(ParameterError) as info:
        FlowSampler(architecture="equivariant_flow_matching", base="thermal")
    assert info.value.field == "base"
    with pytest.raises(ValueError, match="species"):
        EquivariantCNF(cluster_spec(3, 2, species=[0, 1]))
    with pytest.raises(ValueError, match=r"n_particles'\] must be >= 2"):  # was: "not enough values to unpack"
        EquivariantCNF(cluster_spec(1, 3))
