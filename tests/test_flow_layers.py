"""Flow layers: exact inverses and exact log-determinants, checked against autograd.

Every layer gets random (non-identity) weights; then inverse(forward(z)) = z, the inverse's
log-det is minus the forward one, and the forward log-det equals log|det J| of the
Jacobian computed by autograd (float64, small dimensions). The internal-coordinate layer
maps 3N − 6 numbers to 3N: its log-det is checked on the square map extended by a
translation and ZYZ Euler angles, whose volume element is known (sin β).
"""

import math

import pytest
import torch

from boltzbench.samplers.flows.layers import (SPLINE_MIN_DERIV, SPLINE_MIN_WIDTH, BondAngleDomain, Coupling, FlowChain,
                                              InternalCoordinates, Standardize, TorusScale, alternating_masks,
                                              bond_angle, circular_spline, dihedral_angle, spline_parameters, wrap,
                                              zmatrix_from_bonds)
from boltzbench.samplers.flows.model import BoltzmannGenerator

DTYPE = torch.float64


def randomize(module, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def latent(n, periodic, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(periodic), generator=g, dtype=DTYPE)
    angles = (torch.rand(n, len(periodic), generator=g, dtype=DTYPE) * 2 - 1) * math.pi
    return torch.where(periodic, angles, z)


def angle_aware_diff(a, b, periodic):
    d = a - b
    return torch.where(periodic, wrap(d), d)


def autograd_logdet(layer, z):
    out = []
    for row in z:
        jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], row)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def check_exact(layer, z, periodic):
    x, logdet = layer(z)
    back, logdet_inv = layer.inverse(x)
    assert angle_aware_diff(back, z, periodic).abs().max() < 1e-8
    assert (logdet + logdet_inv).abs().max() < 1e-8
    assert torch.allclose(logdet[:5], autograd_logdet(layer, z[:5]), atol=1e-8, rtol=0)
    return x, logdet


PERIODIC = {
    "affine (real)": torch.zeros(6, dtype=torch.bool),
    "spline (periodic)": torch.ones(6, dtype=torch.bool),
    "mixed": torch.tensor([False, True, False, True, True, False]),
}


@pytest.mark.parametrize("kind", sorted(PERIODIC))
@pytest.mark.parametrize("which_mask", [0, 1, 2, 3])
def test_coupling_is_exactly_invertible_with_autograd_logdet(kind, which_mask):
    periodic = PERIODIC[kind]
    mask = alternating_masks(6, 4)[which_mask]
    layer = randomize(Coupling(mask, periodic, hidden=16, n_hidden=2, n_bins=5).double(), seed=which_mask)
    z = latent(20, periodic)
    x, logdet = check_exact(layer, z, periodic)
    # power: the random layer moves the transformed entries, not the conditioning ones
    assert angle_aware_diff(x, z, periodic)[:, mask].abs().max() > 1e-2
    assert torch.equal(x[:, ~mask], z[:, ~mask])
    assert logdet.std() > 1e-3


def test_coupling_starts_as_identity():
    periodic = PERIODIC["mixed"]
    layer = Coupling(alternating_masks(6, 1)[0], periodic).double()
    z = latent(10, periodic)
    x, logdet = layer(z)
    assert angle_aware_diff(x, z, periodic).abs().max() < 1e-12 and logdet.abs().max() < 1e-12


def test_spline_parameters_are_valid_bins_for_any_conditioner_output():
    """Widths and heights positive, at least 2π·m, summing to 2π, equal to the softmax formula
    (the written-out softmax must not overflow at huge logits); a zero output is the
    identity: equal bins, knot derivatives 1."""
    k = 8
    raw = torch.cat([torch.randn(50, 3 * k + 1, dtype=DTYPE, generator=torch.Generator().manual_seed(0)),
                     torch.full((1, 3 * k + 1), 1e4, dtype=DTYPE), torch.full((1, 3 * k + 1), -1e4, dtype=DTYPE),
                     torch.linspace(-800, 800, 3 * k + 1, dtype=DTYPE)[None]])
    widths, heights, derivs, shift = spline_parameters(raw, k)
    for bins, logits in ((widths, raw[:, :k]), (heights, raw[:, k:2 * k])):
        assert torch.isfinite(bins).all() and (bins >= 2 * math.pi * SPLINE_MIN_WIDTH * (1 - 1e-12)).all()
        torch.testing.assert_close(bins.sum(-1), torch.full((len(raw),), 2 * math.pi, dtype=DTYPE))
        expected = 2 * math.pi * (SPLINE_MIN_WIDTH + (1 - k * SPLINE_MIN_WIDTH) * torch.softmax(logits, -1))
        torch.testing.assert_close(bins, expected, rtol=1e-12, atol=1e-14)
    assert (derivs >= SPLINE_MIN_DERIV).all() and torch.equal(shift, raw[:, 3 * k])
    w0, h0, d0, _ = spline_parameters(torch.zeros(1, 3 * k + 1, dtype=DTYPE), k)
    torch.testing.assert_close(w0, torch.full((1, k), 2 * math.pi / k, dtype=DTYPE))
    torch.testing.assert_close(d0, torch.ones(1, k, dtype=DTYPE))


def random_spline(n, k=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    widths = torch.softmax(torch.randn(n, k, generator=g, dtype=DTYPE), -1) * 2 * math.pi
    heights = torch.softmax(torch.randn(n, k, generator=g, dtype=DTYPE), -1) * 2 * math.pi
    derivs = torch.exp(torch.randn(n, k, generator=g, dtype=DTYPE))
    return widths, heights, derivs


def test_circular_spline_is_a_smooth_bijection_of_the_circle():
    """Continuous, with continuous derivative, across the seam at ±π (δ_K = δ_0), strictly
    increasing, and onto: its inverse undoes it everywhere including near the seam."""
    n = 7
    widths, heights, derivs = random_spline(n)
    eps = 1e-7
    lo = torch.full((n,), -math.pi + eps, dtype=DTYPE)
    hi = torch.full((n,), math.pi - eps, dtype=DTYPE)
    y_lo, ld_lo = circular_spline(lo, widths, heights, derivs)
    y_hi, ld_hi = circular_spline(hi, widths, heights, derivs)
    assert wrap(y_hi - y_lo).abs().max() < 1e-5  # the two sides of the seam meet
    assert (ld_hi - ld_lo).abs().max() < 1e-4  # with the same derivative
    grid = torch.linspace(-math.pi, math.pi - 1e-9, 2001, dtype=DTYPE)
    x = grid[:, None].expand(-1, n).clone().requires_grad_(True)
    y, log_d = circular_spline(x, widths[None].expand(2001, -1, -1),
                               heights[None].expand(2001, -1, -1), derivs[None].expand(2001, -1, -1))
    (dy_dx,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(torch.log(dy_dx), log_d, atol=1e-9)  # the log-det is the derivative's log
    y, log_d = y.detach(), log_d.detach()
    assert (torch.diff(y, dim=0) > 0).all()  # increasing from −π to π: a bijection
    back, log_inv = circular_spline(y, widths[None].expand(2001, -1, -1), heights[None].expand(2001, -1, -1),
                                    derivs[None].expand(2001, -1, -1), inverse=True)
    assert wrap(back - grid[:, None]).abs().max() < 1e-9
    assert (log_inv + log_d).abs().max() < 1e-8


def test_standardize_and_torus_scale_are_exact():
    periodic = torch.zeros(4, dtype=torch.bool)
    layer = Standardize(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=DTYPE), torch.tensor([2.0, 0.3, 1.5, 4.0], dtype=DTYPE))
    check_exact(layer, latent(10, periodic), periodic)
    edges = torch.tensor([5.0, 5.0, 7.0, 7.0], dtype=DTYPE)
    torus = TorusScale(edges)
    theta = latent(10, torch.ones(4, dtype=torch.bool))
    x, _ = check_exact(torus, theta, torch.ones(4, dtype=torch.bool))
    assert (x >= 0).all() and (x < edges).all()
    # positions outside the box are wrapped: the inverse sees the periodic image
    back, _ = torus.inverse(x + edges * torch.tensor([1.0, -2.0, 3.0, 0.0], dtype=DTYPE))
    assert wrap(back - theta).abs().max() < 1e-10


# ---------------------------------------------------------------- internal coordinates

CHAIN = {"first": [0, 1, 2], "a2_ref": 1, "rows": [[3, 2, 1, 0], [4, 3, 2, 1]], "n_atoms": 5}


def random_internals(ic, n, seed=2):
    g = torch.Generator().manual_seed(seed)
    bonds = 1.0 + 0.2 * torch.rand(n, ic.n_bonds, generator=g, dtype=DTYPE)
    angles = 0.6 + 1.9 * torch.rand(n, ic.n_angles, generator=g, dtype=DTYPE)
    dihedrals = (torch.rand(n, ic.n_dihedrals, generator=g, dtype=DTYPE) * 2 - 1) * math.pi
    return torch.cat([bonds, angles, dihedrals], -1)


def euler_rotation(alpha, beta, gamma):
    def rz(t):
        c, s, o, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
        return torch.stack([torch.stack([c, -s, z]), torch.stack([s, c, z]), torch.stack([z, z, o])])

    def ry(t):
        c, s, o, z = torch.cos(t), torch.sin(t), torch.ones_like(t), torch.zeros_like(t)
        return torch.stack([torch.stack([c, z, s]), torch.stack([z, o, z]), torch.stack([-s, z, c])])

    return rz(alpha) @ ry(beta) @ rz(gamma)


@pytest.mark.parametrize("zmatrix", [CHAIN, {**CHAIN, "a2_ref": 0, "rows": [[3, 2, 0, 1], [4, 3, 2, 0]]}],
                         ids=["a2-bonded-to-a1", "a2-bonded-to-a0"])
def test_internal_coordinates_invert_and_logdet_matches_autograd_with_rigid_motions(zmatrix):
    ic = InternalCoordinates(zmatrix).double()
    q = random_internals(ic, 6)
    periodic = ic.periodic_mask()
    x, logdet = ic(q)
    back, logdet_inv = ic.inverse(x)
    assert angle_aware_diff(back, q, periodic).abs().max() < 1e-10
    assert (logdet + logdet_inv).abs().max() < 1e-10
    # canonical frame: a0 at the origin, a1 on +z, a2 in the xz-plane with x > 0
    p = x.reshape(-1, 5, 3)
    assert p[:, 0].abs().max() < 1e-12 and p[:, 1, :2].abs().max() < 1e-12 and (p[:, 1, 2] > 0).all()
    assert p[:, 2, 1].abs().max() < 1e-12 and (p[:, 2, 0] > 0).all()
    for row, beta in zip(q, [0.4, 1.1, 2.5, 1.9, 0.8, 2.9]):
        def full(v):
            rot = euler_rotation(v[3], v[4], v[5])
            canonical = ic(v[6:][None])[0][0].reshape(5, 3)
            return (canonical @ rot.T + v[:3]).reshape(-1)

        v = torch.cat([torch.tensor([0.3, -1.2, 0.7, 0.5, beta, -2.0], dtype=DTYPE), row])
        jac = torch.autograd.functional.jacobian(full, v)
        expected = ic(row[None])[1][0] + math.log(math.sin(beta))
        assert abs(torch.linalg.slogdet(jac)[1] - expected) < 1e-9


def test_internal_coordinates_measure_what_they_say():
    ic = InternalCoordinates(CHAIN).double()
    q = random_internals(ic, 4)
    p = ic(q)[0].reshape(-1, 5, 3)
    for n, (i, j, k, l) in enumerate(CHAIN["rows"]):
        r = torch.linalg.vector_norm(p[:, i] - p[:, j], dim=-1)
        assert torch.allclose(r, q[:, 2 + n])
        assert torch.allclose(bond_angle(p[:, i], p[:, j], p[:, k]), q[:, ic.n_bonds + 1 + n])
        assert torch.allclose(wrap(dihedral_angle(p[:, i], p[:, j], p[:, k], p[:, l]) - q[:, -2 + n]),
                              torch.zeros(4, dtype=DTYPE), atol=1e-10)


def test_dihedral_sign_is_iupac():
    """Looking along b→c (+z), a clockwise turn is a positive rotation about +z: a at +x
    turned clockwise by 90° lies at +y, which is +90° (IUPAC); its mirror image is −90°."""
    a = torch.tensor([[1.0, 0.0, 0.0]], dtype=DTYPE)
    b = torch.tensor([[0.0, 0.0, 0.0]], dtype=DTYPE)
    c = torch.tensor([[0.0, 0.0, 1.0]], dtype=DTYPE)
    d_plus = torch.tensor([[0.0, 1.0, 1.0]], dtype=DTYPE)
    assert dihedral_angle(a, b, c, d_plus).item() == pytest.approx(math.pi / 2)
    assert dihedral_angle(a, b, c, d_plus * torch.tensor([1.0, -1.0, 1.0], dtype=DTYPE)).item() == pytest.approx(-math.pi / 2)


BRANCHED = [(0, 1), (1, 2), (1, 3), (3, 4), (3, 5), (5, 6)]  # a 7-atom tree with two branch points


def test_zmatrix_from_bonds_reconstructs_any_configuration_up_to_a_rigid_motion():
    zmatrix = zmatrix_from_bonds(7, BRANCHED)
    bonded = {frozenset(b) for b in BRANCHED}
    assert all(frozenset((i, j)) in bonded for i, j, _, _ in zmatrix["rows"])
    assert frozenset((zmatrix["first"][2], zmatrix["a2_ref"])) in bonded
    ic = InternalCoordinates(zmatrix).double()
    x = torch.randn(8, 21, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    q, _ = ic.inverse(x)
    rebuilt, _ = ic(q)

    def distances(y):
        p = y.reshape(-1, 7, 3)
        return torch.cdist(p, p)

    assert torch.allclose(distances(rebuilt), distances(x), atol=1e-9)
    with pytest.raises(ValueError, match="not connected"):
        zmatrix_from_bonds(7, BRANCHED[:-1])


def test_bond_angle_domain_is_exact_and_lands_in_the_domain():
    periodic = torch.tensor([False] * 5 + [True] * 2)
    layer = BondAngleDomain(n_bonds=3, n_angles=2)
    z = 4.0 * latent(50, periodic)  # far tails included
    q, _ = check_exact(layer, z, periodic)
    bonds, angles = q[:, :3], q[:, 3:5]
    assert (bonds > 0).all() and (angles > 0).all() and (angles < math.pi).all()
    assert torch.equal(q[:, 5:], z[:, 5:])  # dihedrals pass through


def test_invalid_internal_coordinates_get_nan_logdet():
    ic = InternalCoordinates(CHAIN).double()
    q = random_internals(ic, 3)
    q[0, 1] = -0.5  # negative bond
    q[1, ic.n_bonds] = math.pi + 0.1  # angle beyond π
    _, logdet = ic(q)
    assert torch.isnan(logdet[:2]).all() and torch.isfinite(logdet[2])


# ------------------------------------------------------------------- whole generator

#: standardization of CHAIN's features: log-bonds around log 1.1, logit-angles around θ = 1.9
INTERNAL_STATS = (torch.tensor([math.log(1.1)] * 4 + [math.log(1.9 / (math.pi - 1.9))] * 3 + [0.0] * 2, dtype=DTYPE),
                  torch.tensor([0.05] * 4 + [0.2] * 3 + [1.0] * 2, dtype=DTYPE))

SPECS = {
    "cartesian": {"dof": 4, "coordinates": "cartesian"},
    "torus": {"dof": 4, "coordinates": "torus", "box": [3.0, 3.0, 4.0, 4.0]},
    "internal": {"dof": 15, "coordinates": "internal", "zmatrix": CHAIN},
}


@pytest.mark.parametrize("coordinates", sorted(SPECS))
def test_generator_push_pull_are_inverse_with_consistent_densities(coordinates):
    spec = {**SPECS[coordinates], "n_layers": 4, "hidden": 16, "n_hidden": 1, "n_bins": 4}
    bg = randomize(BoltzmannGenerator(spec).double(), scale=0.3)
    if coordinates == "internal":
        bg = randomize(BoltzmannGenerator(spec, *INTERNAL_STATS).double(), scale=0.3)
    y = bg.base.sample(12, torch.Generator().manual_seed(0), DTYPE)
    x, log_q = bg.push_base(y)
    assert torch.isfinite(log_q).all()  # internal too: every latent is a valid molecule
    # the density from the inverse pass equals the one from the forward pass
    assert torch.allclose(bg.log_q(x), log_q, atol=1e-8)
    y_back, _ = bg.pull(x)
    assert angle_aware_diff(y_back, y, bg.periodic).abs().max() < 1e-8
    if coordinates != "internal":  # square maps: log-det against autograd
        chain = FlowChain([*bg.couplings.layers, *bg.prep.layers])
        assert torch.allclose(chain(y[:4])[1], autograd_logdet(chain, y[:4]), atol=1e-8)


def test_thermal_base_density_forward_and_inverse_paths_agree():
    """log q(x) for a thermal base, x = P(T(P⁻¹(x₀))): from the base energy and the forward
    log-dets, and by the inverse map with u evaluated at flow⁻¹(x). Internal coordinates
    make every log-det configuration-dependent, so no term may be dropped."""
    from boltzbench.samplers.flows.base import ThermalBase

    spec = {**SPECS["internal"], "n_layers": 4, "hidden": 16, "n_hidden": 1, "n_bins": 4}
    bg = randomize(BoltzmannGenerator(spec, *INTERNAL_STATS).double(), scale=0.2)

    def u(x):  # any energy will do: the identity is exact for every base density
        return (x ** 2).sum(-1) / 10

    q0 = random_internals(InternalCoordinates(CHAIN).double(), 16)
    noise = torch.randn(16, 4, generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    q0 = torch.cat([1.1 + 0.05 * noise, q0[:, 4:7].clamp(1.6, 2.2), q0[:, 7:]], -1)
    x0 = InternalCoordinates(CHAIN).double()(q0)[0]
    bg.base = ThermalBase.restore(None, 0.4, "mc", 1, {"x": x0, "u": u(x0), "step": 0.1})
    x, log_q = bg.push_base((x0, u(x0)))
    assert torch.isfinite(log_q).all()
    assert torch.allclose(bg.log_q(x, u), log_q, atol=1e-8)
    # the map x₀ → x is not the identity (the couplings act, once)
    q_in, q_out = bg.features(x0), bg.features(x)
    assert angle_aware_diff(q_out, q_in, bg.periodic).abs().max() > 1e-2


def test_thermal_base_density_is_the_change_of_variables_of_the_base():
    """Cartesian thermal base: log q(x) = −β·u(x₀) − log|det ∂x/∂x₀|, with the Jacobian of
    the whole map x₀ → x = P(T(P⁻¹(x₀))) taken by autograd: independent of the model's
    own log-det bookkeeping."""
    from boltzbench.samplers.flows.base import ThermalBase

    spec = {**SPECS["cartesian"], "n_layers": 4, "hidden": 16, "n_hidden": 1, "n_bins": 4}
    bg = randomize(BoltzmannGenerator(spec, torch.tensor([0.5, -1.0, 0.0, 2.0]), torch.tensor([1.5, 0.7, 1.0, 2.0])).double(),
                   scale=0.3)
    beta = 0.4

    def u(x):
        return (x ** 2).sum(-1) / 3 + x[:, 0] * x[:, 1]

    x0 = latent(6, torch.zeros(4, dtype=torch.bool), seed=5)
    bg.base = ThermalBase.restore(None, beta, "mc", 1, {"x": x0, "u": u(x0), "step": 0.1})
    x, log_q = bg.push_base((x0, u(x0)))
    assert (x - x0).abs().max() > 1e-2

    def whole_map(v):
        return bg.push_base((v[None], u(v[None])))[0][0]

    for row, value in zip(x0, log_q):
        jac = torch.autograd.functional.jacobian(whole_map, row)
        expected = -beta * u(row[None])[0] - torch.linalg.slogdet(jac)[1]
        assert abs(value - expected) < 1e-8


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_gaussian_base_with_defensive_mixture_is_a_normalized_density_it_samples(alpha):
    """∫ q = 1 on R × circle (quadrature), and the samples' E[z²] = (1 − α) + α·τ²."""
    from boltzbench.samplers.flows.base import GaussianBase

    base = GaussianBase(torch.tensor([False, True]), defensive=alpha, defensive_scale=2.5)
    r = torch.linspace(-15, 15, 3001, dtype=DTYPE)
    grid = torch.stack([r, torch.zeros_like(r)], -1)
    density = torch.exp(base.log_prob(grid))
    total = torch.trapezoid(density, r) * 2 * math.pi  # the periodic entry is uniform
    assert abs(total.item() - 1.0) < 1e-8
    z = base.sample(200_000, torch.Generator().manual_seed(0), DTYPE)
    expected = (1 - alpha) + alpha * 2.5**2
    assert abs((z[:, 0] ** 2).mean().item() - expected) < 0.03 * expected
    assert (z[:, 1].abs() <= math.pi).all()
