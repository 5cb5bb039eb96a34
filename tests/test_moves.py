"""Shared move kernels at per-walker inverse temperatures β, against exact answers.

Error bars: walkers are independent, so per-walker time averages are i.i.d. and their
standard error (std over walkers / √B) is honest whatever the autocorrelation in time.
"""

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from boltzbench import get_system
from boltzbench.contracts import ParameterError, param
from boltzbench.samplers.mc import metropolis_step
from boltzbench.samplers.md import baoab_step
from boltzbench.systems.compiled_pairs import KIND_SMOOTH_LJ
from boltzbench.samplers.moves import (DISP_ACCEPTED, HAVE_NUMBA, MOVES, SWAP_ACCEPTED,
                                       SWAP_ATTEMPTS, SWAPS_SKIPPED, LangevinMove, MetropolisMove, Mixture, Sequence,
                                       SwapMove, SweepRandoms, Walkers, acceptance, check_swap_pairs, compile_table,
                                       draw_sweep, identical_pairs, make_move, skipped_pairs, swap_pair_names, sweep,
                                       sweep_numba, sweep_torch, tunable_leaves, tune, tune_step)
from boltzbench.systems.particles import (R_MIN_FRACTION, PairTable, ParticleSystem, device_param, lennard_jones,
                                          precision_param, smooth_lennard_jones)
from boltzbench.testing import Trimer

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


# --------------------------------------------------------------------------- swap moves


@dataclass
class Hexamer(ParticleSystem):
    """Two particles each of species A, B, C (σ and ε of the Jung–Biroli–Berthier ternary
    mixture) in a periodic square: Lennard-Jones truncated and shifted at 1.5·σ_αβ, or with
    ``smooth`` the smoothed Lennard-Jones cut at 2.5·σ_αβ (constants C0, C2, C4 of the issue)
    in a box wide enough for it."""

    name: ClassVar[str] = "hexamer"
    species_names: ClassVar[tuple[str, ...]] = ("A", "B", "C")
    n_particles: ClassVar[int] = 6  # type: ignore[misc]
    dim: ClassVar[int] = 2  # type: ignore[misc]

    temperature: float = param(1.0, "kT")
    smooth: bool = param(False, "smoothed LJ cut at 2.5σ instead of truncated-and-shifted LJ at 1.5σ")
    precision: str = precision_param()
    device: str = device_param()

    SIGMA: ClassVar[list] = [[1.0, 0.8, 0.9], [0.8, 0.88, 0.8], [0.9, 0.8, 0.94]]
    EPSILON: ClassVar[list] = [[1.0, 1.5, 0.75], [1.5, 0.5, 1.5], [0.75, 1.5, 0.75]]

    @property
    def box_edges(self) -> tuple[float, ...]:
        return (5.0, 5.0) if self.smooth else (3.6, 3.6)

    @functools.cached_property
    def species(self) -> torch.Tensor:
        return torch.tensor([0, 0, 1, 1, 2, 2])

    @functools.cached_property
    def diameters(self) -> torch.Tensor:
        return torch.tensor([self.SIGMA[s][s] for s in self.species.tolist()], dtype=torch.float64)

    def pair_table(self) -> PairTable:
        s = self.species
        sig = torch.tensor(self.SIGMA, dtype=torch.float64)[s[:, None], s[None, :]]
        eps = torch.tensor(self.EPSILON, dtype=torch.float64)[s[:, None], s[None, :]]
        cut = 2.5 if self.smooth else 1.5
        rc2 = (cut * sig) ** 2
        rc2.fill_diagonal_(0.0)
        r2_min = float(R_MIN_FRACTION * sig.min()) ** 2
        if self.smooth:
            return PairTable(smooth_lennard_jones, rc2=rc2, r2_min=r2_min,
                             params={"sig2": sig ** 2, "eps4": 4 * eps, "c0": 0.04049023795,
                                     "c2": -0.00970155098, "c4": 0.00062012616})
        return PairTable(lennard_jones, rc2=rc2, r2_min=r2_min,
                         params={"c12": 4 * eps * sig ** 12, "c6": 4 * eps * sig ** 6,
                                 "shift": 4 * eps * (cut ** -12 - cut ** -6)})

    def _initial_positions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.box_edges[0] * torch.rand((n, 6, 2), generator=generator, dtype=torch.float64)


SWAP_BACKENDS = ["torch", pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing"))]


def trimer_arrangements() -> torch.Tensor:
    """Three trimer configurations (3, 6) on the same three sites P_0, P_1, P_2: in arrangement
    k the B particle (index 2) sits on P_k and the two A particles on the other sites."""
    sites = torch.tensor([[0.0, 0.0], [1.05, 0.0], [0.45, 0.85]], dtype=torch.float64)
    rows = []
    for k in range(3):
        a0, a1 = (m for m in range(3) if m != k)
        rows.append(torch.cat([sites[a0], sites[a1], sites[k]]))
    return torch.stack(rows)


def arrangement_of(x: torch.Tensor, arrangements: torch.Tensor) -> torch.Tensor:
    """The arrangement (site of the B particle) of trimer configurations x (B, 6)."""
    b_site = x[:, 4:6]
    return (b_site[:, None, :] - arrangements[None, :, 4:6]).norm(dim=-1).argmin(dim=1)


def exact_swap_sweep(u: torch.Tensor, beta: float) -> torch.Tensor:
    """The exact kernel of one swap-only sweep (three attempts) between the arrangements of
    energies u (3,): an attempt draws an ordered pair i ≠ j uniformly (6 pairs); the A–A pairs
    (1/3) are skipped, and each of the two arrangements m ≠ k is proposed with probability 1/3
    and accepted with min(1, exp(−β·(u_m − u_k))). A sweep is three attempts: T³."""
    t = (torch.exp(-beta * (u[None, :] - u[:, None])).clamp(max=1.0) / 3).fill_diagonal_(0.0)
    t += torch.diag(1.0 - t.sum(dim=1))
    return torch.linalg.matrix_power(t, 3)


@pytest.mark.parametrize("backend", SWAP_BACKENDS)
def test_swap_move_kernel_is_exact_and_in_detailed_balance_at_two_betas(backend):
    """Walkers at β = 1 and β = 0.4 in one batch, positions fixed (p_swap = 1): the trimer's
    three arrangements form a 3-state chain. From each arrangement, one SwapMove sweep lands in
    arrangement m with the exact probability (T³)_km of :func:`exact_swap_sweep` at the
    walker's own β, which satisfies π_k K_km = π_m K_mk with π ∝ exp(−β·u); a move that
    used β = 1 for every walker, or accepted every swap, is many standard errors off. Energies
    from full evaluations (not the local API); the cached energies stay u(x)."""
    system = Trimer()
    arrangements = trimer_arrangements()
    u = system._energy(arrangements)
    per = 3000
    betas = (1.0, 0.4)
    start = torch.arange(3).repeat_interleave(per).repeat(len(betas))          # (2·3·per,)
    beta = torch.tensor(betas, dtype=torch.float64).repeat_interleave(3 * per)
    walkers = Walkers.start(system, arrangements[start].clone(), beta)
    move = SwapMove(0.1, p_swap=1.0, backend=backend)
    move(walkers, system, torch.Generator().manual_seed(0))
    end = arrangement_of(walkers.x, arrangements)
    assert torch.allclose(walkers.u, system._energy(walkers.x), rtol=1e-10, atol=1e-10)
    for g, b in enumerate(betas):
        exact = exact_swap_sweep(u, b)
        pi = torch.softmax(-b * u, 0)
        assert torch.allclose(pi[:, None] * exact, (pi[:, None] * exact).T, atol=1e-12)  # detailed balance
        assert torch.allclose(pi @ exact, pi, atol=1e-12)
        for k in range(3):
            sel = end[(start == k) & (beta == b)]
            observed = torch.bincount(sel, minlength=3).double() / per
            se = torch.sqrt((exact[k] * (1 - exact[k])).clamp(min=1e-4) / per)
            assert ((observed - exact[k]).abs() < 4.5 * se).all(), (b, k, observed, exact[k])
    far = exact_swap_sweep(u, 1.0)[1] - exact_swap_sweep(u, 0.4)[1]
    assert far.abs().max() > 0.06  # power: β = 1 for every walker is > 6 standard errors (≤ 0.0092) off


@pytest.mark.parametrize("backend", SWAP_BACKENDS)
def test_swap_move_at_two_betas_reaches_the_boltzmann_arrangement_weights(backend):
    """Many swap-only sweeps from arrangement 1 (the highest energy): the arrangement
    populations reach π_k ∝ exp(−β·u_k) at each walker's β."""
    system = Trimer()
    arrangements = trimer_arrangements()
    u = system._energy(arrangements)
    per = 2000
    beta = torch.tensor([1.0, 0.4], dtype=torch.float64).repeat_interleave(per)
    walkers = Walkers.start(system, arrangements[torch.ones(2 * per, dtype=torch.long)].clone(), beta)
    sweep(SwapMove(0.1, p_swap=1.0, backend=backend), walkers, system, torch.Generator().manual_seed(1), 30)
    end = arrangement_of(walkers.x, arrangements)
    for g, b in enumerate((1.0, 0.4)):
        pi = torch.softmax(-b * u, 0)
        observed = torch.bincount(end[g * per:(g + 1) * per], minlength=3).double() / per
        se = torch.sqrt(pi * (1 - pi) / per)
        assert ((observed - pi).abs() < 4.5 * se).all(), (b, observed, pi)


def test_skipped_pairs_follow_swap_pairs_and_bad_names_are_errors_naming_the_field():
    system = Hexamer()
    s = system.species
    allowed = {frozenset("AC"), frozenset("BC")}
    names = system.species_names
    expected = torch.tensor([[i == j or s[i] == s[j] or frozenset((names[s[i]], names[s[j]])) not in allowed
                              for j in range(6)] for i in range(6)])
    assert torch.equal(skipped_pairs(system, ["AC", "BC"]), expected)
    assert torch.equal(skipped_pairs(system, ["CA", "CB"]), expected)  # either order
    assert torch.equal(skipped_pairs(system, None), identical_pairs(system))
    assert swap_pair_names(system) == {"AB": (0, 1), "AC": (0, 2), "BC": (1, 2)}
    for bad, match in [(["AD"], "valid choices: AB, AC, BC"), (["AA"], "valid choices: AB, AC, BC"),
                       (["AB", "B C"], "'B C'")]:
        with pytest.raises(ParameterError, match=match) as err:
            skipped_pairs(system, bad)
        assert err.value.field == "swap_pairs"
    with pytest.raises(ParameterError, match="valid choices: AB$"):
        skipped_pairs(Trimer(), ["AC"])                      # the trimer has no C
    with pytest.raises(ParameterError, match="single species") as err:
        skipped_pairs(get_system("soft_spheres", dim=2, n_particles=64), ["allall"])
    assert err.value.field == "swap_pairs"
    for bad in ("AC", [], [1], [""]):
        with pytest.raises(ParameterError, match="non-empty list") as err:
            check_swap_pairs(bad)
        assert err.value.field == "swap_pairs"


@pytest.mark.parametrize("backend", SWAP_BACKENDS)
def test_forbidden_pairs_are_skipped_uncharged_and_allowed_pairs_swap(backend):
    """Every ordered pair (i, j) of the hexamer proposed once (one walker each, always
    accepted): with swap_pairs = ['AC', 'BC'] exactly the A–C and B–C pairs are attempted,
    charged 2/N each and exchange positions; A–B and same-species pairs are skipped and
    leave the configuration alone."""
    system = Hexamer(temperature=5.0)
    pairs = [(i, j) for i in range(6) for j in range(6) if i != j]
    i, j = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    x0 = system.sample_initial(1, torch.Generator().manual_seed(0)).expand(len(pairs), -1).clone()
    u0 = system._energy(x0)
    r = SweepRandoms(torch.ones((1, len(pairs)), dtype=torch.bool), i[None], j[None],
                     torch.zeros((1, len(pairs), 2), dtype=torch.float64),
                     torch.full((1, len(pairs)), -1e300, dtype=torch.float64))
    beta = torch.ones(len(pairs), dtype=torch.float64)
    skip = skipped_pairs(system, ["AC", "BC"])
    before = system.ledger.total_evals
    if backend == "numba":
        x, u, counts = sweep_numba(x0, u0, beta, system, r, compile_table(system, skip))
    else:
        x, u = x0.clone(), u0.clone()
        counts = sweep_torch(x, u, beta, system, r, skip)
    names = [system.species_names[k] for k in system.species.tolist()]
    allowed = torch.tensor([{names[a], names[b]} in ({"A", "C"}, {"B", "C"}) for a, b in pairs])
    assert allowed.sum() == 16
    assert torch.equal(counts[:, SWAP_ATTEMPTS].bool(), allowed)
    assert torch.equal(counts[:, SWAP_ACCEPTED].bool(), allowed)
    assert torch.equal(counts[:, SWAPS_SKIPPED].bool(), ~allowed)
    assert system.ledger.total_evals - before == pytest.approx(16 * 2 / 6)
    swapped = x0.view(-1, 6, 2).clone()
    rows = torch.arange(len(pairs))
    swapped[rows, i], swapped[rows, j] = x0.view(-1, 6, 2)[rows, j], x0.view(-1, 6, 2)[rows, i]
    assert torch.equal(x[allowed], swapped.reshape(len(pairs), -1)[allowed]) and torch.equal(x[~allowed], x0[~allowed])
    assert torch.allclose(u, system._energy(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", SWAP_BACKENDS)
def test_a_species_outside_swap_pairs_never_moves_under_swaps(backend):
    """swap_pairs = ['AB'], swaps only, at kT = 5 (most swaps accepted): after 50 sweeps the C
    particles sit exactly where they started while the A and B particles have moved; the
    skipped fraction is that of the 22 of 30 ordered pairs that are not A–B."""
    system = Hexamer(temperature=5.0)
    walkers = Walkers.start(system, system.sample_initial(64, torch.Generator().manual_seed(2)),
                            torch.ones(64, dtype=torch.float64))
    x0 = walkers.x.clone()
    move = SwapMove(0.1, p_swap=1.0, backend=backend, swap_pairs=["AB"])
    sweep(move, walkers, system, torch.Generator().manual_seed(3), 50)
    pos, pos0 = walkers.x.view(64, 6, 2), x0.view(64, 6, 2)
    assert torch.equal(pos[:, 4:], pos0[:, 4:])
    assert (pos[:, :4] != pos0[:, :4]).any(dim=(1, 2)).float().mean() > 0.9
    counts = move.counts.sum(0)
    n = float(counts[SWAP_ATTEMPTS] + counts[SWAPS_SKIPPED])
    assert n == 64 * 50 * 6 and counts[SWAP_ACCEPTED] > 0.5 * counts[SWAP_ATTEMPTS]
    p = 22 / 30
    assert abs(float(counts[SWAPS_SKIPPED]) / n - p) < 4.5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
def test_compiled_sweep_of_smoothed_lennard_jones_follows_the_local_energy_api():
    """The numba kernel's smoothed Lennard-Jones (the JBB ternary model's pair potential)
    reproduces the torch backend move for move, at three β."""
    system = Hexamer(smooth=True, temperature=0.5)
    b = 3
    x = system.sample_initial(b, torch.Generator().manual_seed(0))
    u = system.energy(x).double()
    beta = torch.tensor([1.0, 0.7, 0.4], dtype=torch.float64)
    table, skip = compile_table(system), identical_pairs(system)
    assert table is not None and table.kind == KIND_SMOOTH_LJ
    xt, ut, xn, un = x.clone(), u.clone(), x.clone(), u.clone()
    for seed in range(4):
        r = draw_sweep(system.n_particles, system.dim, torch.full((b,), 0.3, dtype=torch.float64), 0.4,
                       torch.Generator().manual_seed(seed))
        counts_t = sweep_torch(xt, ut, beta, system, r, skip)
        xn, un, counts_n = sweep_numba(xn, un, beta, system, r, table)
        assert torch.equal(counts_t, counts_n)
    assert counts_n[:, DISP_ACCEPTED].sum() > 0 and counts_n[:, SWAP_ACCEPTED].sum() > 0
    assert torch.allclose(xn, xt, rtol=0, atol=1e-12)
    assert torch.allclose(un, system.energy(xn).double(), rtol=1e-10, atol=1e-9)


def test_make_move_swap():
    assert "swap" in MOVES
    move = make_move("swap", step=0.2, dt=0.1, friction=1.0, mass=1.0, p_swap=0.3, swap_pairs=["AC"])
    assert isinstance(move, SwapMove) and move.tunable and move.p_swap == 0.3 and move.swap_pairs == ["AC"]
    assert tunable_leaves(move) == [move] and move.initial_step == 0.2
    with pytest.raises(ParameterError, match="particle system") as err:
        move(Walkers.start(get_system("double_well"), torch.zeros(2, 2, dtype=torch.float64),
                           torch.ones(2, dtype=torch.float64)), get_system("double_well"), torch.Generator())
    assert err.value.field == "system"
