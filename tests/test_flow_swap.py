"""Flow moves and the ``flow_swap`` sampler against exact answers.

The flows here are deliberately wrong (randomly perturbed weights, a few training steps): an
exact Metropolis–Hastings move must sample the target whatever its proposal, so any error in
the density or Jacobian bookkeeping shows up as a bias. References: the double well's
quadrature (at kT = 1 for the targets, kT = 3 for the exchange partners) and the conformance
kit's trimer (two species, quadrature). Error bars: per-chain averages of independent chains.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzbench import get_system
from boltzbench.contracts import Budget, ParameterError
from boltzbench.registry import get_sampler
from boltzbench.samplers.flows.base import ThermalBase
from boltzbench.samplers.flows.flow_move import FlowMove, exchange_proposal, pull_to_base, push_from_base
from boltzbench.samplers.flows.model import BoltzmannGenerator
from boltzbench.samplers.flows.sampler import FlowSampler
from boltzbench.samplers.flow_swap import FlowSwap
from boltzbench.samplers.moves import MetropolisMove, Walkers
from boltzbench.testing import Trimer, check_sampler


def perturbed_flow(system, architecture: str = "mlp", scale: float = 0.3, seed: int = 0, **spec_params):
    """A float64 flow for ``system`` whose weights are random (so the map is far from the identity)."""
    spec = FlowSampler(architecture=architecture, n_layers=4, hidden=16, **spec_params)._spec(system)
    generator = torch.Generator().manual_seed(seed)
    n = system.dof
    bg = BoltzmannGenerator(spec, torch.zeros(n), torch.tensor([2.5, 1.0][:n] if n == 2 else [1.0] * n),
                            generator=generator).double()
    with torch.no_grad():
        for p in bg.couplings.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return bg


def per_chain_mean(values: torch.Tensor, burn: float = 0.2) -> tuple[float, float]:
    """(T, C) → mean of per-chain time averages after burn-in, and its standard error."""
    per_chain = values[int(burn * values.shape[0]):].double().mean(0)
    return float(per_chain.mean()), float(per_chain.std() / math.sqrt(per_chain.numel()))


def assert_exact(values: torch.Tensor, exact: float, what: str, z: float = 4.5) -> float:
    mean, se = per_chain_mean(values)
    assert abs(mean - exact) <= z * se, f"{what}: {mean:.5f} ± {se:.5f}, exact {exact:.5f}"
    return se


def exact_double_well(kT: float, n: int, seed: int) -> torch.Tensor:
    """(n, 2) independent draws of the double well at kT: x1 by inverting the quadrature CDF,
    x2 ~ N(0, kT/d) (the density factorizes)."""
    system = get_system("double_well", temperature=kT)
    grid, cdf = system.reference().cdfs["x1"]
    generator = torch.Generator().manual_seed(seed)
    x1 = np.interp(torch.rand(n, generator=generator, dtype=torch.float64).numpy(), cdf, grid)
    x2 = torch.randn(n, generator=generator, dtype=torch.float64) * math.sqrt(kT / system.d)
    return torch.stack([torch.from_numpy(x1), x2], 1)


def run_moves(moves, walkers, system, n_steps: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    xs, us = [], []
    for _ in range(n_steps):
        for move in moves:
            move(walkers, system, generator)
        xs.append(walkers.x.clone())
        us.append(walkers.u.clone())
    return torch.stack(xs), torch.stack(us)


def test_independence_move_of_a_perturbed_flow_samples_the_double_well_exactly():
    """Flow proposals alternate with random-walk Metropolis (which alone would stay in the
    left well: P(right) ≈ 0.008 at kT = 1). A log q of the current state that is stale or
    missing its Jacobian biases ⟨u⟩ or P(right) by many standard errors."""
    system = get_system("double_well")
    bg = perturbed_flow(system, scale=0.2)
    c = 1024
    walkers = Walkers.start(system, system.sample_initial(c, torch.Generator().manual_seed(1)),
                            torch.ones(c, dtype=torch.float64))
    flow_move = FlowMove(bg)
    x, u = run_moves([flow_move, MetropolisMove(0.3)], walkers, system, 300, seed=2)
    exact = system.reference().exact
    assert not flow_move.exchange and 0.03 < float(flow_move.accepted.mean()) / flow_move.attempts < 0.9
    assert_exact(u, exact["mean_energy"], "<u>")
    se = assert_exact((x[..., 0] > 0).double(), exact["p_right"], "P(right)")
    assert se < 0.002
    assert torch.allclose(walkers.u, system.energy(walkers.x).double())


def test_learned_exchange_of_a_perturbed_flow_samples_both_temperatures_exactly():
    """Targets at kT = 1 exchange through the flow with partners at kT = 3 (each side also
    makes Metropolis moves at its own temperature), both started from exact draws: both
    sides stay at their quadrature values. A missing Jacobian, or a partner that keeps its
    configuration (independence MH from a base chain), drifts away."""
    system = get_system("double_well")
    bg = perturbed_flow(system, scale=0.2, seed=3)
    c, beta_b = 1024, 1.0 / 3.0
    start = torch.cat([exact_double_well(1.0, c, seed=4), exact_double_well(3.0, c, seed=5)])
    bg.base = ThermalBase(system, beta_b, start[c:], "mc", 0.5, 1, torch.Generator().manual_seed(5))
    beta = torch.cat([torch.ones(c), torch.full((c,), beta_b)]).double()
    walkers = Walkers.start(system, start, beta)
    flow_move = FlowMove(bg)
    local = MetropolisMove(0.5)
    local.set_step(torch.cat([torch.full((c,), 0.3), torch.full((c,), 0.6)]).double(), 2 * c)
    x, u = run_moves([flow_move, local], walkers, system, 300, seed=6)
    assert flow_move.exchange and 0.02 < float(flow_move.accepted.mean()) / flow_move.attempts < 0.9
    for side, kT in ((slice(0, c), 1.0), (slice(c, None), 3.0)):
        exact = get_system("double_well", temperature=kT).reference().exact
        # the partners' u is reduced at the target (kT = 1): at kT = 3 it is u/3
        assert_exact(u[:, side] / kT, exact["mean_energy"], f"<u> at kT = {kT}")
        assert_exact((x[:, side, 0] > 0).double(), exact["p_right"], f"P(right) at kT = {kT}")


@pytest.mark.parametrize("case", ["double_well_mlp", "trimer_periodic_equivariant"])
def test_the_exchange_is_an_involution_accepted_with_the_brute_force_jacobian(case):
    """F⁻¹(F(y)) = y, and the exchange's log acceptance ratio equals the one computed from the
    energies and slogdet of the autograd Jacobians of F at y and F⁻¹ at x (1e-8): the
    deterministic involution (x, y) → (F y, F⁻¹ x) then satisfies detailed balance (Green,
    Biometrika 82, 711 (1995)). The chain test above is blind to a Jacobian left out: for
    these flows its average nearly cancels."""
    if case == "double_well_mlp":
        system, bg = get_system("double_well"), perturbed_flow(get_system("double_well"))
    else:
        system = Trimer()
        bg = perturbed_flow(system, architecture="periodic_equivariant", scale=0.1)
    starts = system.sample_initial(8, torch.Generator().manual_seed(7)).double()
    x, y = starts[:4], starts[4:]
    u, v = system.energy(x).double(), system.energy(y).double()
    beta, beta_b = torch.ones(4, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        x_new, y_new, u_new, v_new, log_ratio = exchange_proposal(bg, system, x, y, u, v, beta, beta_b)
        y_back, _ = pull_to_base(bg, x_new)
    difference = y_back - y
    if system.box is not None:  # the same point of the torus
        box = torch.as_tensor(system.box, dtype=torch.float64).repeat(system.dof // len(system.box))
        difference = torch.remainder(difference + box / 2, box) - box / 2
    assert difference.abs().max() < 1e-8
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda z: push_from_base(bg, z[None])[0][0], y[i]).detach()
        jac_inv = torch.autograd.functional.jacobian(lambda z: pull_to_base(bg, z[None])[0][0], x[i]).detach()
        brute = (-float(system._energy(x_new[i:i + 1])) - 0.5 * float(system._energy(y_new[i:i + 1]))
                 + float(u[i]) + 0.5 * float(v[i])
                 + float(torch.linalg.slogdet(jac).logabsdet) + float(torch.linalg.slogdet(jac_inv).logabsdet))
        assert float(log_ratio[i]) == pytest.approx(brute, abs=1e-8)
        assert abs(float(torch.linalg.slogdet(jac).logabsdet)) > 1e-3  # the Jacobian matters here


SMALL_FLOW = dict(data_sampler="mc", data_step=0.3, data_chains=16, data_steps=400, train_steps=40, n_layers=4,
                  hidden=16, precision="float64")
THERMAL = dict(base="thermal", base_temperature=2.0, base_sampler="mc", base_step=0.3, base_chains=16,
               base_pool=1024, base_warmup=100)


@pytest.mark.parametrize("base", ["gaussian", "thermal"])
def test_flow_swap_passes_the_conformance_kit_on_the_trimer(base):
    """Contract, charging, seeds, and ⟨u⟩, ⟨r_AA⟩, ⟨r_AB⟩ of the two-species trimer against
    quadrature; the double well (no particles) is refused before any evaluation. Small
    numbers of chains: the trimer's starting configurations are relaxed (100 force
    evaluations each) and the kit's short runs have 20 000 evaluations."""
    flow = {**SMALL_FLOW, **(THERMAL if base == "thermal" else {})}
    sampler = FlowSwap(n_chains=32, p_flow=0.3, p_swap=0.5, step=0.3, flow=flow)
    assert check_sampler(sampler, particle_evals=300_000) == ["particles"]


def test_flow_swap_diagnostics_and_refinement_on_the_trimer():
    """Every move kind happens, warm-up counts from the end of setup, the refinement trains on
    the targets' and the partners' warm-up states, and the energies stay exact."""
    sampler = FlowSwap(n_chains=256, p_flow=0.3, p_swap=0.5, step=0.3, refine_steps=20, flow={**SMALL_FLOW, **THERMAL})
    system = Trimer()
    snapshot = list(sampler.run(system, Budget(max_evals=2e5, n_snapshots=1), torch.Generator().manual_seed(1)))[-1]
    d = snapshot.diagnostics
    assert d["flow_move"] == "exchange" and d["partner_beta"] == pytest.approx(0.5)
    assert 0.1 < d["flow_acceptance"] < 1 and d["flow_moves"] > 10 and d["flow_nonfinite"] == 0
    assert 0.2 < d["acceptance_displacement"] < 0.7 and 0.2 < d["partner_acceptance_displacement"] < 0.7
    refined = d["refined"]
    assert d["warmup_steps"] > 10 and refined["steps"] == 20
    assert refined["target_states"] == refined["partner_states"] > 256 and refined["target_states"] % 256 == 0
    assert d["partner_step"] > d["step"]  # tuned per temperature: wider where it is hotter
    assert snapshot.cost["setup"]["energy_evals"] > 0
    assert torch.allclose(snapshot.energies[-1], system.energy(snapshot.positions[-1]).to(snapshot.energies.dtype))


@pytest.mark.parametrize("params, field", [
    ({"p_flow": 1.5}, "p_flow"),
    ({"flow": {"hidden": 0}}, "flow.hidden"),
    ({"flow": {"mode": "mcmc"}}, "flow.mode"),
    ({"flow": {"architecture": "equivariant_flow_matching"}}, "flow.architecture"),
    ({"flow": {"no_such_field": 1}}, "flow"),
    ({"refine_steps": 5, "warmup": 0.0}, "refine_steps"),
    ({"refine_loss": "elbo"}, "refine_loss"),
])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ParameterError) as err:
        get_sampler("flow_swap", **params)
    assert err.value.field == field


def test_a_system_without_particles_is_refused_before_any_work():
    system = get_system("double_well")
    with pytest.raises(ParameterError, match="particle system") as err:
        list(FlowSwap().run(system, Budget(max_evals=1e4), torch.Generator().manual_seed(0)))
    assert err.value.field == "system" and system.ledger.total_evals == 0


def test_an_untrained_flow_makes_the_exchange_plain_replica_exchange():
    """train_steps = 0 leaves the coupling flow at its identity initialization: the exchange
    proposes (y, x) and its log ratio is the replica-exchange rule (β − β_b)·(u(x) − u(y))."""
    system = Trimer()
    flow = FlowSampler(architecture="periodic_equivariant", base="thermal", base_temperature=2.0, base_sampler="mc",
                       base_step=0.3, base_chains=16, base_pool=16, base_warmup=10, data_sampler="none",
                       ml_weight=0.0, train_steps=0, n_layers=4, hidden=16, precision="float64")
    bg, info = flow.setup(system, Budget(max_evals=1e5), torch.Generator().manual_seed(0))
    assert info["steps"] == 0 and info["base"]["pool"] == 16
    starts = system.sample_initial(8, torch.Generator().manual_seed(1)).double()
    x, y = starts[:4], torch.remainder(starts[4:], 3.0)  # the flow returns positions in the box
    u, v = system.energy(x).double(), system.energy(y).double()
    with torch.no_grad():
        x_new, y_new, _, _, log_ratio = exchange_proposal(bg, system, x, y, u, v, torch.ones(4).double(),
                                                          torch.full((4,), 0.5).double())
    assert torch.allclose(x_new, y, atol=1e-9) and torch.allclose(y_new, torch.remainder(x, 3.0), atol=1e-9)
    assert torch.allclose(log_ratio, 0.5 * (u - v), atol=1e-9)
