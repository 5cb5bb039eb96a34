"""Shared move kernels at per-walker inverse temperatures β, against exact answers.

Error bars: walkers are independent, so per-walker time averages are i.i.d. and their
standard error (std over walkers / √B) is honest whatever the autocorrelation in time.
"""

import math

import numpy as np
import pytest
import torch

from boltzbench import get_system
from boltzbench.samplers.mc import metropolis_step
from boltzbench.samplers.md import baoab_step
from boltzbench.samplers.moves import (LangevinMove, MetropolisMove, Mixture, Sequence, Walkers, acceptance,
                                       make_move, sweep, tune, tune_step)

BETAS = (1.0, 0.2)  # target and a hot replica (T_eff = 5)


def group_betas(n_per_group: int) -> torch.Tensor:
    return torch.tensor(BETAS, dtype=torch.float64).repeat_interleave(n_per_group)


def test_beta_none_is_bit_for_bit_beta_one():
    """The optional β of the shared steps changes nothing at β = 1 (the MD/MC baselines)."""
    system = get_system("double_well")
    x = system.sample_initial(64, torch.Generator().manual_seed(0))
    u, f = system.energy_and_forces(x)
    ones = torch.ones(64, dtype=torch.float64)
    a = metropolis_step(x, u, system, 0.3, torch.Generator().manual_seed(1))
    b = metropolis_step(x, u, system, 0.3, torch.Generator().manual_seed(1), beta=ones)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    a = baoab_step(x, v, f, system, 0.05, 1.0, 1.0, torch.Generator().manual_seed(3))
    b = baoab_step(x, v, f, system, 0.05, 1.0, 1.0, torch.Generator().manual_seed(3), beta=ones)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_metropolis_acceptance_at_beta_is_min_1_exp_minus_beta_du():
    """Detailed balance w.r.t. exp(−β·u) for a symmetric proposal: P(accept | Δu) = min(1, exp(−β·Δu)),
    per walker with its own β. The proposals are regenerated from a same-state generator."""
    system = get_system("double_well")
    n, step = 200_000, 0.4
    beta = group_betas(n // 2)
    x = torch.tensor([[-2.0, 0.3]], dtype=torch.float64).repeat(n, 1)
    u = system.energy(x)
    _, _, accept = metropolis_step(x, u, system, step, torch.Generator().manual_seed(5), beta=beta)
    proposal = x + step * torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    du = (system.energy(proposal) - u).numpy()
    accept, beta = accept.numpy(), beta.numpy()
    assert accept[du <= 0].all()
    for b in BETAS:
        for lo, hi in [(0.0, 0.5), (0.5, 1.5), (1.5, 3.0), (3.0, 6.0)]:
            inside = (beta == b) & (du > lo) & (du <= hi)
            expected = np.exp(-b * du[inside]).mean()
            se = math.sqrt(expected * (1 - expected) / inside.sum())
            assert abs(accept[inside].mean() - expected) < 4.5 * se + 1e-12, (b, lo, hi)


def test_baoab_o_step_noise_variance_is_one_minus_c2_over_beta_m():
    """Derivation: at kT_eff = 1/β the O step is the exact Ornstein–Uhlenbeck flow
    dv = −γ·v dt + sqrt(2γ/(β·m)) dW over dt, so v ← c·v + sqrt((1 − c²)/(β·m))·ξ with
    c = exp(−γ·dt), whose stationary variance is 1/(β·m). On a free particle (forces ≈ 0)
    started at v = 0, k BAOAB steps give Var(v) = (1 − c^{2k})/(β·m) exactly."""
    system = get_system("harmonic", dim=1, sigma=1e6)  # forces ~1e-12·x: a free particle
    n, dt, friction, mass = 100_000, 0.1, 2.0, 3.0
    c = math.exp(-friction * dt)
    beta = group_betas(n // 2)
    x = torch.zeros(n, 1, dtype=torch.float64)
    v = torch.zeros_like(x)
    _, f = system.energy_and_forces(x)
    gen = torch.Generator().manual_seed(0)
    for k in (1, 2, 3):
        x, v, _, f = baoab_step(x, v, f, system, dt, friction, mass, gen, beta=beta)
        for b in BETAS:
            var = v[beta == b].var().item()
            exact = (1 - c ** (2 * k)) / (b * mass)
            assert var == pytest.approx(exact, rel=4 * math.sqrt(2 / (n // 2))), (k, b)


def moves_under_test():
    return {
        "mc": make_move("mc", step=0.8, dt=0.1, friction=1.0, mass=1.0),
        "md": make_move("md", step=0.8, dt=0.1, friction=1.0, mass=1.0),
        "mc+md": make_move("mc+md", step=0.8, dt=0.1, friction=1.0, mass=1.0),
        "mixture": Mixture([MetropolisMove(0.8), LangevinMove(0.1, 1.0, 1.0)], [0.3, 0.7]),
    }


@pytest.mark.parametrize("kind", sorted(moves_under_test()))
def test_moves_keep_the_tempered_harmonic_distribution(kind):
    """Each move (and compositions) keeps exp(−β·u) per walker: started from exact draws at
    each walker's β, time averages of u stay at dim/(2β) and of x1² at σ1²/β (BAOAB is
    exact in configuration for harmonic forces, Leimkuhler & Matthews 2013). The MC step
    size is per walker: hot walkers get a larger one (σ/√β)."""
    system = get_system("harmonic", dim=2, sigma=[1.0, 0.5])
    n, n_steps = 1000, 600
    beta = group_betas(n // 2)
    x = torch.cat([system.sample_exact(n // 2, torch.Generator().manual_seed(i), b) for i, b in enumerate(BETAS)])
    walkers = Walkers.start(system, x, beta)
    move = moves_under_test()[kind]
    for leaf in move.leaves():
        if leaf.tunable:
            leaf.set_step(0.8 / torch.sqrt(beta), n)
    gen = torch.Generator().manual_seed(11)
    u_sum, x1_sq = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    for _ in range(n_steps):
        move(walkers, system, gen)
        u_sum += walkers.u
        x1_sq += walkers.x[:, 0] ** 2
    assert torch.allclose(walkers.u, system._energy(walkers.x))  # cached energies stay true
    for b in BETAS:
        group = (beta == b).numpy()
        for values, exact in [(u_sum.numpy()[group] / n_steps, system.mean_energy(b)),
                              (x1_sq.numpy()[group] / n_steps, 1.0 / b)]:
            se = values.std(ddof=1) / math.sqrt(group.sum())
            assert abs(values.mean() - exact) < 4.5 * se, (kind, b, values.mean(), exact, se)
            assert se < 0.05 * exact  # power: a wrong temperature is far outside
    if kind == "md":  # velocities thermalized at each walker's own temperature
        kinetic = (walkers.velocities**2).mean(dim=1)
        for b in BETAS:
            assert kinetic[beta == b].mean().item() == pytest.approx(1 / b, rel=0.08)


def test_retemper_rescales_velocities_and_take_carries_state():
    system = get_system("harmonic", dim=3)
    n = 50_000
    x = system.sample_exact(n, torch.Generator().manual_seed(0))
    walkers = Walkers.start(system, x, torch.full((n,), 0.5, dtype=torch.float64))
    LangevinMove(0.05, 1.0, 2.0)(walkers, system, torch.Generator().manual_seed(1))
    assert walkers.velocities.var().item() == pytest.approx(1 / (0.5 * 2.0), rel=0.03)
    before = walkers.velocities.clone()
    walkers.retemper(torch.full((n,), 2.0, dtype=torch.float64))
    assert torch.allclose(walkers.velocities, before * 0.5)  # sqrt(0.5/2)
    picked = walkers.take(torch.tensor([3, 3, 0]))
    assert torch.equal(picked.x[0], picked.x[1]) and torch.equal(picked.velocities[2], walkers.velocities[0])
    assert torch.equal(picked.forces[1], walkers.forces[3]) and picked.beta.tolist() == [2.0] * 3


def test_tuning_reaches_the_target_acceptance_per_temperature():
    """Warm-up tuning: per-group step sizes move towards the target acceptance (hot groups get
    larger steps); afterwards the statistics are reset and the steps are left alone."""
    assert tune_step(torch.tensor([1.0]), torch.tensor([0.9]), 0.4).item() > 1.0
    assert tune_step(torch.tensor([1.0]), torch.tensor([0.1]), 0.4).item() < 1.0
    system = get_system("harmonic", dim=4)
    betas = torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64)
    groups = torch.arange(3).repeat_interleave(200)
    walkers = Walkers.start(system, system.sample_initial(600, torch.Generator().manual_seed(0)), betas[groups])
    move, gen = MetropolisMove(0.1), torch.Generator().manual_seed(1)
    for _ in range(40):
        sweep(move, walkers, system, gen, 5)
        tune(move, groups, 3, target=0.4)
    assert move.accepted is None  # reset after tuning
    steps = move.step.view(3, 200)[:, 0]
    assert steps[0] < steps[1] < steps[2]
    sweep(move, walkers, system, gen, 50)
    per_group = acceptance(move).view(3, 200).mean(dim=1)
    assert torch.allclose(per_group, torch.full((3,), 0.4, dtype=torch.float64), atol=0.06), per_group
    assert torch.equal(move.step.view(3, 200)[:, 0], steps)  # sweeping never adapts


def test_sequence_and_mixture_leaves_and_bad_mixture():
    seq = Sequence([MetropolisMove(0.1), LangevinMove(0.1, 1.0, 1.0)])
    assert [type(m).__name__ for m in seq.leaves()] == ["MetropolisMove", "LangevinMove"]
    with pytest.raises(ValueError):
        Mixture([MetropolisMove(0.1)], [1.0, 2.0])
    with pytest.raises(ValueError):
        make_move("hmc", step=0.1, dt=0.1, friction=1.0, mass=1.0)
