"""The harmonic oscillator against closed forms: energies, forces, Z(β), exact samples."""

import math

import numpy as np
import pytest
import scipy.integrate
import torch

from boltzbench import ParameterError, get_system
from boltzbench.cli import main

SIGMA = [0.5, 1.0, 2.0]


def test_energy_forces_and_charging():
    system = get_system("harmonic", dim=3, sigma=SIGMA)
    x = torch.tensor([[1.0, 2.0, -4.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    u, f = system.energy_and_forces(x)
    assert u.tolist() == pytest.approx([0.5 * (4.0 + 4.0 + 4.0), 0.0])
    # forces are −∇u: check against autograd through the generic System path
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(system._energy(xg).sum(), xg)
    assert torch.allclose(f, -grad)
    assert system.energy(x).tolist() == u.tolist()
    assert system.ledger.sampling.force_evals == 2 and system.ledger.sampling.energy_evals == 2


def test_log_partition_matches_quadrature_at_several_temperatures():
    system = get_system("harmonic", dim=3, sigma=SIGMA)
    for beta in (0.1, 0.37, 1.0, 2.5):
        by_quadrature = sum(math.log(scipy.integrate.quad(lambda y: math.exp(-beta * y * y / (2 * s * s)),
                                                          -np.inf, np.inf)[0]) for s in SIGMA)
        assert system.log_partition(beta) == pytest.approx(by_quadrature, rel=1e-10)
    # the quantity the tempering tests use: ln Z(1)/Z(β₀) = (dim/2)·ln β₀
    assert system.log_partition(1.0) - system.log_partition(0.2) == pytest.approx(1.5 * math.log(0.2))


def test_exact_samples_and_reference():
    """Exact draws at β have ⟨u⟩ = dim/(2β) and Var(u) = dim/(2β²) (a χ² with dim degrees
    of freedom, scaled by 1/(2β)); the reference samples and CDF are those of β = 1."""
    system = get_system("harmonic", dim=3, sigma=SIGMA)
    n = 200_000
    for beta in (0.25, 1.0):
        u = system._energy(system.sample_exact(n, torch.Generator().manual_seed(7), beta)).numpy()
        se = math.sqrt(system.dim / 2) / beta / math.sqrt(n)
        assert abs(u.mean() - system.mean_energy(beta)) < 4 * se
        assert u.var() == pytest.approx(system.dim / (2 * beta**2), rel=0.03)
    ref = system.reference()
    assert ref.exact["mean_energy"] == 1.5
    assert abs(ref.energies.mean() - 1.5) < 4 * math.sqrt(1.5 / ref.energies.size)
    grid, cdf = ref.cdfs["x1"]
    empirical = np.searchsorted(np.sort(ref.observables["x1"]), [-0.5, 0.0, 0.25]) / ref.energies.size
    assert np.interp([-0.5, 0.0, 0.25], grid, cdf) == pytest.approx(empirical, abs=0.006)
    assert np.interp(0.5, grid, cdf) == pytest.approx(0.5 * (1 + math.erf(0.5 / (0.5 * math.sqrt(2)))), abs=1e-9)


def test_scalar_sigma_and_initial_state():
    system = get_system("harmonic", dim=4, sigma=2)
    assert system.sigma == 2.0 and system.dof == 4
    x = system.sample_initial(50_000, torch.Generator().manual_seed(0))
    assert x.shape == (50_000, 4)
    assert x.std().item() == pytest.approx(4.0, rel=0.02)  # over-dispersed: twice σ


@pytest.mark.parametrize("params,field", [
    ({"dim": 0}, "dim"),
    ({"sigma": -1.0}, "sigma"),
    ({"sigma": 0}, "sigma"),
    ({"dim": 3, "sigma": [1.0, 2.0]}, "sigma"),
    ({"dim": 2, "sigma": [1.0, "a"]}, "sigma"),
])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ParameterError) as info:
        get_system("harmonic", **params)
    assert info.value.field == field


def test_bad_parameter_through_the_matrix_gives_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('seeds = [0]\n[budget]\nmax_evals = 1000\n[[systems]]\nname = "harmonic"\n'
                    'params = { dim = 3, sigma = [1.0, 2.0] }\n[[samplers]]\nname = "mc"\n')
    assert main(["validate", str(path)]) == 2
    assert "systems[0].params.sigma: " in capsys.readouterr().err
