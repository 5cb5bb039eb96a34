"""The double well: energies, forces, cost charging, and the exact reference."""

import numpy as np
import pytest
import scipy.integrate
import torch

from boltzbench import get_system
from boltzbench.metrics.wasserstein import w1_to_cdf


def test_energy_matches_formula_and_temperature_scaling():
    system = get_system("double_well", temperature=2.0)
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-2.0, -1.0]], dtype=torch.float64)
    expected = torch.tensor([0.0, 1 / 4 - 3 + 1 + 2, 4 - 12 - 2 + 0.5]) / 2.0
    assert torch.allclose(system.energy(x), expected.double())


def test_analytic_forces_equal_minus_autograd_gradient(generator):
    system = get_system("double_well", a=1.3, b=5.0, c=-0.7, d=2.0, temperature=0.8)
    x = 3 * torch.randn(50, 2, generator=generator, dtype=torch.float64)
    u, f = system.energy_and_forces(x)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(system._energy(xg).sum(), xg)
    assert torch.allclose(u, system.energy(x))
    assert torch.allclose(f, -grad, rtol=1e-12, atol=1e-12)


def test_every_evaluation_is_charged_and_setup_kept_apart():
    system = get_system("double_well")
    x = torch.zeros(7, 2, dtype=torch.float64)
    system.energy(x)
    system.energy_and_forces(x)
    with system.ledger.setup_phase():
        system.energy(x[:3])
    cost = system.ledger.as_dict()
    assert (cost["energy_evals"], cost["force_evals"]) == (7, 7)
    assert cost["setup"]["energy_evals"] == 3
    assert cost["total_evals"] == 17


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_quadrature_reference_against_an_independent_2d_integration(temperature):
    """The reference factorizes the density; integrate the full 2D density on a grid instead."""
    system = get_system("double_well", temperature=temperature)
    ref = system.reference()
    x2 = np.linspace(-12, 12, 1201)

    def integrate_well(x1):
        """(Z, ∫u·p) over one well, on a 2D grid that ends at the cut x1 = 0."""
        X1, X2 = np.meshgrid(x1, x2, indexing="ij")
        u = system.energy(torch.tensor(np.stack([X1.ravel(), X2.ravel()], 1))).numpy().reshape(X1.shape)
        p = np.exp(-u)
        def integrate(values):
            return scipy.integrate.simpson(scipy.integrate.simpson(values, x=x2, axis=1), x=x1)
        return integrate(p), integrate(u * p)

    z_left, up_left = integrate_well(np.linspace(-7, 0, 4001))
    z_right, up_right = integrate_well(np.linspace(0, 7, 4001))
    assert ref.exact["mean_energy"] == pytest.approx((up_left + up_right) / (z_left + z_right), abs=1e-6)
    p_right = z_right / (z_left + z_right)
    assert ref.exact["p_right"] == pytest.approx(p_right, rel=1e-6)
    assert ref.exact["delta_f"] == pytest.approx(-np.log(p_right / (1 - p_right)), abs=1e-5)


def test_reference_samples_follow_the_exact_distribution():
    ref = get_system("double_well").reference()
    n = ref.energies.size
    se = ref.energies.std() / np.sqrt(n)
    assert abs(ref.energies.mean() - ref.exact["mean_energy"]) < 4 * se
    assert abs(np.mean(ref.observables["x1"] > 0) - ref.exact["p_right"]) < 4 * np.sqrt(ref.exact["p_right"] / n)
    grid, cdf = ref.cdfs["x1"]
    assert w1_to_cdf(ref.observables["x1"], None, grid, cdf) < 0.01
    # and W1 does see a wrong distribution: the same samples shifted by 0.1
    assert w1_to_cdf(ref.observables["x1"] + 0.1, None, grid, cdf) == pytest.approx(0.1, abs=0.01)


def test_initial_configurations_sit_in_both_wells(generator):
    system = get_system("double_well")
    x = system.sample_initial(1000, generator)
    left, right = system.minima()
    assert left == pytest.approx(-2.5, abs=0.1) and right == pytest.approx(2.4, abs=0.1)
    near = np.minimum(abs(x[:, 0].numpy() - left), abs(x[:, 0].numpy() - right))
    assert near.max() < 0.6
    assert 0.4 < float((x[:, 0] > 0).double().mean()) < 0.6


def test_single_well_parameters_are_rejected_at_construction():
    with pytest.raises(ValueError, match="b: .*single well"):
        get_system("double_well", b=-1.0)


def test_nested_setup_phases_keep_the_outer_phase():
    system = get_system("double_well")
    x = torch.zeros(5, 2, dtype=torch.float64)
    with system.ledger.setup_phase():
        with system.ledger.setup_phase():
            system.energy(x)
        system.energy(x)  # still setup after the inner block ended
    system.energy(x)
    cost = system.ledger.as_dict()
    assert cost["setup"]["energy_evals"] == 10 and cost["energy_evals"] == 5
