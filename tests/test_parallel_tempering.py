"""Parallel tempering against exact answers: the swap move, the ladder, round trips, and the
double well at kT = 1 where plain MD and MC never cross.

Error bars: the n_chains PT chains of a run (and runs with different seeds) are
independent, so per-chain time averages of the β = 1 samples are i.i.d. and their standard
error (std over chains / √C) is honest whatever the autocorrelation within a chain. Warm-up
samples never reach the snapshots, so no further burn-in is discarded.
"""

import math

import numpy as np
import pytest
import torch

from boltzbench import Budget, ParameterError, get_sampler, get_system
from boltzbench.cli import main
from boltzbench.samplers.parallel_tempering import (RoundTrips, equalize_ladder, exchange, geometric_ladder,
                                                    swap_proposals)
from boltzbench.testing import Trimer, trimer_observables, trimer_quadrature


def run(system, budget, seed=0, **params):
    snapshots = list(get_sampler("pt", **params).run(system, budget, torch.Generator().manual_seed(seed)))
    return snapshots[-1], snapshots


def assert_within(per_chain, exact, z=4.5, what=""):
    mean, se = per_chain.mean(), per_chain.std(ddof=1) / math.sqrt(len(per_chain))
    assert abs(mean - exact) < z * se, f"{what}: {mean:.5f} ± {se:.5f}, exact {exact:.5f}"
    return se


# ------------------------------------------------------------------------- the swap move

def test_swap_acceptance_is_min_1_exp_dbeta_du_on_a_two_replica_toy():
    """Detailed balance of the swap: P(accept | u_0, u_1) = min(1, exp((β_0 − β_1)(u_0 − u_1)))."""
    n = 400_000
    betas = torch.tensor([1.0, 0.4], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    u = 6.0 * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    perm, accepted = exchange(u, betas, torch.ones(n, 1, dtype=torch.bool), gen)
    accepted = accepted[:, 0].numpy()
    assert (perm.numpy() == np.where(accepted[:, None], [1, 0], [0, 1])).all()
    log_ratio = (0.6 * (u[:, 0] - u[:, 1])).numpy()
    assert accepted[log_ratio >= 0].all()
    for lo, hi in [(-0.5, 0.0), (-1.0, -0.5), (-2.0, -1.0), (-3.6, -2.0)]:
        inside = (log_ratio > lo) & (log_ratio <= hi)
        expected = np.exp(log_ratio[inside]).mean()
        se = math.sqrt(expected * (1 - expected) / inside.sum())
        assert abs(accepted[inside].mean() - expected) < 4.5 * se, (lo, hi)
    # pairs that are not proposed never swap
    perm, accepted = exchange(u, betas, torch.zeros(n, 1, dtype=torch.bool), gen)
    assert not accepted.any() and (perm == torch.tensor([0, 1])).all()


def test_swap_keeps_the_product_of_tempered_distributions():
    """Exact draws of a harmonic oscillator at β = (1, 0.5, 0.25) stay exact after one round of
    swaps (even pairs, then odd): per slot ⟨u⟩ = dim/(2β_k). Always accepting would not."""
    system = get_system("harmonic", dim=2)
    n, betas = 200_000, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.stack([system.sample_exact(n, gen, float(b)) for b in betas], dim=1)  # (n, R, dim)
    u = system._energy(x.reshape(-1, 2)).view(n, 3)
    swapped = 0
    for parity in (0, 1):
        proposed = swap_proposals(n, 3, parity, "deo", gen)
        perm, accepted = exchange(u, betas, proposed, gen)
        u = u.gather(1, perm)
        swapped += int(accepted.sum())
    assert swapped > 0.3 * n
    for k, b in enumerate(betas.tolist()):
        se = math.sqrt(system.dim / 2) / b / math.sqrt(n)
        assert abs(u[:, k].mean().item() - system.mean_energy(b)) < 4.5 * se, k


def test_swap_proposals_deo_alternates_and_seo_is_random_per_chain():
    gen = torch.Generator().manual_seed(2)
    even, odd = swap_proposals(3, 6, 0, "deo", gen), swap_proposals(3, 6, 1, "deo", gen)
    assert even.tolist() == [[True, False, True, False, True]] * 3
    assert odd.tolist() == [[False, True, False, True, False]] * 3
    seo = swap_proposals(10_000, 6, 0, "seo", gen)
    first = seo[:, 0].double()
    assert abs(first.mean().item() - 0.5) < 0.02
    assert (seo[:, 1] == ~seo[:, 0]).all() and (seo[:, 2] == seo[:, 0]).all()  # even or odd, never mixed


def test_round_trips_count_cold_hot_cold_journeys():
    """Walker ids at slots 0..2 of one chain, round by round; walker 0 goes cold → hot → cold
    (one trip); walker 2 starts hot and only counts after a full cold → hot → cold."""
    path = [[0, 1, 2], [1, 0, 2], [1, 2, 0], [2, 1, 0], [2, 0, 1], [0, 2, 1],  # walker 0 back: 1 trip
            [2, 0, 1], [2, 1, 0], [0, 1, 2]]                                     # walker 0 again: 2; walker 2? no
    trips = RoundTrips(torch.tensor([path[0]]))
    for ids in path[1:]:
        trips.update(torch.tensor([ids]))
    assert trips.count.tolist() == [[2, 0, 0]]


def test_equalize_ladder_converges_to_geometric_for_a_scale_free_barrier():
    """If a pair's rejection is κ·ln(β_k/β_{k+1}) (the harmonic oscillator's scale invariance),
    equal rejection means a geometric ladder; re-spacing converges there from a linear one."""
    betas = np.linspace(1.0, 0.05, 7)
    for _ in range(30):
        betas = equalize_ladder(betas, 0.1 * np.log(betas[:-1] / betas[1:]))
    assert betas[0] == 1.0 and betas[-1] == 0.05
    assert np.allclose(betas, geometric_ladder(7, 20.0), rtol=0.01)
    unchanged = equalize_ladder(geometric_ladder(5, 10.0), np.full(4, 0.3))
    assert np.allclose(unchanged, geometric_ladder(5, 10.0))


# ------------------------------------------------------------------------ whole sampler

@pytest.fixture(scope="module")
def double_well_run():
    system = get_system("double_well")  # kT = 1: barrier ≈ 11.5 kT
    budget = Budget(max_evals=64 * 8 * 2500, n_snapshots=3)
    snapshot, snapshots = run(system, budget, seed=0, n_chains=64, n_replicas=8, t_max=10.0, thin=1)
    return system, snapshot, snapshots


def test_pt_double_well_at_kT_1_matches_quadrature(double_well_run):
    """At kT = 1 plain MD/MC stay in their starting well (README); PT with t_max = 10 crosses.
    ⟨u⟩, P(right) = 0.0083 and the x1 marginal in bins match quadrature."""
    system, snapshot, _ = double_well_run
    ref = system.reference()
    x1, u = snapshot.positions[..., 0].numpy(), snapshot.energies.numpy()
    se_u = assert_within(u.mean(axis=0), ref.exact["mean_energy"], what="<u>")
    se_p = assert_within((x1 > 0).mean(axis=0), ref.exact["p_right"], what="P(right)")
    assert se_u < 0.01 and se_p < 0.0006  # power: a stuck chain is off by > 10 se
    grid, cdf = ref.cdfs["x1"]
    edges = np.array([-4.0, -3.0, -2.5, -2.0, -1.0, 0.0, 1.5, 2.5, 4.0])
    for lo, hi, p in zip(edges[:-1], edges[1:], np.diff(np.interp(edges, grid, cdf))):
        assert_within(((x1 >= lo) & (x1 < hi)).mean(axis=0), p, z=5.0, what=f"P({lo} <= x1 < {hi})")


def test_pt_diagnostics_and_frozen_production(double_well_run):
    system, snapshot, snapshots = double_well_run
    d = snapshot.diagnostics
    assert len(d["betas"]) == 8 and d["betas"][0] == 1.0 and d["betas"][-1] == pytest.approx(0.1)
    assert len(d["pair_acceptance"]) == 7 and all(0.3 < a < 1 for a in d["pair_acceptance"])
    assert len(d["acceptance"]) == 8 and all(abs(a - 0.4) < 0.1 for a in d["acceptance"])
    assert len(d["round_trips_per_replica"]) == 8 and sum(d["round_trips_per_replica"]) == d["round_trips"] > 1000
    assert d["evals_per_round_trip"] < 500  # Noé et al.: ~4·10⁶ MC steps per round trip at kT = 1
    # the step sizes were tuned in warm-up (hot replicas take larger steps) and never change after
    assert d["step_sizes"] == sorted(d["step_sizes"])
    assert all(s.diagnostics["step_sizes"] == d["step_sizes"] for s in snapshots)
    # snapshots: β = 1 replicas only, one per chain per round, growing; the cost is charged
    assert snapshot.positions.shape == (d["rounds"], 64, 2)
    assert torch.allclose(snapshot.energies, system._energy(snapshot.positions.reshape(-1, 2)).view(-1, 64))
    assert [s.positions.shape[0] for s in snapshots] == sorted(s.positions.shape[0] for s in snapshots)
    rounds_total = d["rounds"] + d["warmup_rounds"]
    assert snapshot.cost["energy_evals"] == 64 * 8 * (rounds_total + 1)  # + the initial evaluation
    assert d["warmup_evals"] >= 0.1 * 64 * 8 * 2500


def test_pt_harmonic_pair_acceptance_and_energy_match_exact():
    """On a harmonic oscillator the swap acceptance of a geometric ladder is known exactly:
    E[min(1, exp((β_k − β_{k+1})(u_k − u_{k+1})))] with independent u_k ~ Γ(dim/2, 1/β_k),
    evaluated here with 10⁶ exact draws. Five independent seeds give the error bar."""
    dim, ratio, R = 4, 2.0, 5
    rng = np.random.default_rng(9)
    u_cold = rng.gamma(dim / 2, 1.0, 1_000_000)          # u at β = 1
    u_hot = rng.gamma(dim / 2, 1.0, 1_000_000) * ratio   # u at β = 1/ratio
    exact = np.minimum(1.0, np.exp((1 - 1 / ratio) * (u_cold - u_hot))).mean()
    rates, means = [], []
    for seed in range(5):
        system = get_system("harmonic", dim=dim)
        snapshot, _ = run(system, Budget(max_evals=16 * R * 600, n_snapshots=1), seed=seed,
                          n_chains=16, n_replicas=R, t_max=ratio ** (R - 1))
        rates.append(snapshot.diagnostics["pair_acceptance"])
        means.extend(snapshot.energies.numpy().mean(axis=0))
    rates = np.array(rates)
    for k in range(R - 1):
        assert_within(rates[:, k], exact, z=5.0, what=f"pair {k} acceptance")
    assert rates.std(ddof=1) < 0.02  # power
    assert_within(np.array(means), dim / 2, what="<u> at the target")


def test_deo_makes_more_round_trips_than_seo():
    """Non-reversible even/odd swaps move walkers ballistically along the ladder, the
    reversible scheme diffusively (Syed et al. 2022): with 16 replicas and swap acceptance
    ≈ 0.9 DEO makes several times more round trips for the same cost."""
    trips = {}
    for scheme in ("deo", "seo"):
        system = get_system("harmonic", dim=2)
        snapshot, _ = run(system, Budget(max_evals=16 * 16 * 1200, n_snapshots=1), seed=3,
                          n_replicas=16, t_max=30.0, n_chains=16, scheme=scheme)
        trips[scheme] = snapshot.diagnostics["round_trips"]
    assert trips["deo"] > 3 * trips["seo"] > 0, trips


def test_adaptive_ladder_equalizes_swap_acceptance_in_warmup_only():
    """Started from a bad (linear) ladder, warm-up re-spaces it; on a harmonic oscillator the
    equal-acceptance ladder is geometric. The ladder is frozen in production."""
    system = get_system("harmonic", dim=6)
    betas = [1.0, 0.8, 0.6, 0.4, 0.2, 0.05]
    snapshot, snapshots = run(system, Budget(max_evals=32 * 6 * 4000, n_snapshots=3), seed=4,
                              betas=betas, ladder="adaptive", n_chains=32, warmup=0.5)
    d = snapshot.diagnostics
    assert d["betas"][0] == 1.0 and d["betas"][-1] == 0.05
    assert np.allclose(d["betas"], geometric_ladder(6, 20.0), rtol=0.06), d["betas"]
    assert max(d["pair_acceptance"]) - min(d["pair_acceptance"]) < 0.06, d["pair_acceptance"]
    assert all(s.diagnostics["betas"] == d["betas"] for s in snapshots)
    fixed, _ = run(get_system("harmonic", dim=6), Budget(max_evals=32 * 6 * 1000, n_snapshots=1), seed=4,
                   betas=betas, n_chains=32)
    assert fixed.diagnostics["betas"] == betas
    assert max(fixed.diagnostics["pair_acceptance"]) - min(fixed.diagnostics["pair_acceptance"]) > 0.3


def test_same_seed_same_numbers_different_seed_different():
    def once(seed):
        snapshot, _ = run(get_system("double_well"), Budget(max_evals=4 * 4 * 300), seed=seed,
                          n_chains=4, n_replicas=4, scheme="seo", move="mc+md")
        return snapshot

    a, b, c = once(5), once(5), once(6)
    assert torch.equal(a.positions, b.positions) and a.diagnostics == b.diagnostics
    assert not torch.equal(a.positions, c.positions)


def test_budget_too_small_for_warmup_is_a_clear_error():
    with pytest.raises(RuntimeError, match="warm-up"):
        run(get_system("double_well"), Budget(max_evals=10), n_chains=4)


# ------------------------------------------------------------------------- swap moves

def test_pt_with_swap_moves_samples_the_trimer_exactly():
    """move = 'swap' (displacements and identity swaps at each replica's β, p_swap = 0.5) on the
    kit's Kob-Andersen trimer at kT = 0.8: per-chain means of u, u², the A–A and the A–B
    distance at β = 1 match quadrature. Mixing the identities without the Metropolis test
    moves ⟨r_AA⟩ by 0.09 (≈ 90 se); ignoring the replica's β biases the exchanges."""
    system = Trimer()
    snapshot, _ = run(system, Budget(max_evals=450_000, n_snapshots=1), seed=0, move="swap", p_swap=0.5,
                      n_chains=64, n_replicas=3, t_max=3.0, thin=1)
    exact = trimer_quadrature()
    u = snapshot.energies.double()
    observables = {"u": u, "u2": u * u, **trimer_observables(snapshot.positions)}
    for key, values in observables.items():
        se = assert_within(values.mean(dim=0).numpy(), exact[key], what=key)
        assert key.startswith("u") or se < 0.002  # power
    d = snapshot.diagnostics
    assert len(d["acceptance_identity_swap"]) == 3 and all(0.3 < a < 0.95 for a in d["acceptance_identity_swap"])
    assert d["acceptance_identity_swap"] == sorted(d["acceptance_identity_swap"])  # hotter: more swaps accepted
    assert all(abs(a - 0.4) < 0.1 for a in d["acceptance"])  # displacement steps tuned per temperature
    assert d["step_sizes"] == sorted(d["step_sizes"])
    assert torch.allclose(u, system._energy(snapshot.positions.reshape(-1, 6)).view(u.shape), rtol=1e-10)


def test_pt_swap_move_refuses_systems_without_particles_or_with_unknown_pairs():
    """Errors name the field (and the valid choices) before anything is charged."""
    for system, params, field, match in [
        (get_system("double_well"), {}, "system", "particle system"),
        (Trimer(), {"swap_pairs": ["AC"]}, "swap_pairs", "valid choices: AB"),
        (get_system("dw4"), {}, "p_swap", "single species"),
    ]:
        with pytest.raises(ParameterError, match=match) as info:
            run(system, Budget(max_evals=1000), move="swap", **params)
        assert info.value.field == field and system.ledger.total_evals == 0
    snapshot, _ = run(get_system("dw4"), Budget(max_evals=4000, n_snapshots=1), move="swap", p_swap=0.0,
                      n_chains=2, n_replicas=2)
    assert snapshot.diagnostics["acceptance_identity_swap"] == [None, None]  # displacements only


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("params,field", [
    ({"betas": []}, "betas"),
    ({"betas": [1.0]}, "betas"),
    ({"betas": [1.0, 0.5, 0.7]}, "betas"),
    ({"betas": [0.9, 0.5]}, "betas"),
    ({"betas": [1.0, 0.5, 0.0]}, "betas"),
    ({"n_replicas": 1}, "n_replicas"),
    ({"t_max": 0.5}, "t_max"),
    ({"scheme": "random"}, "scheme"),
    ({"ladder": "linear"}, "ladder"),
    ({"move": "hmc"}, "move"),
    ({"warmup": 1.0}, "warmup"),
    ({"target_acceptance": 1.0}, "target_acceptance"),
    ({"move": "swap", "p_swap": 1.5}, "p_swap"),
    ({"move": "swap", "p_swap": -0.1}, "p_swap"),
    ({"move": "swap", "swap_pairs": "AC"}, "swap_pairs"),
    ({"move": "swap", "swap_pairs": []}, "swap_pairs"),
    ({"move": "mc", "swap_pairs": ["AC"]}, "swap_pairs"),
])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ParameterError) as info:
        get_sampler("pt", **params)
    assert info.value.field == field


@pytest.mark.parametrize("value", ["[]", "[1.0, 0.5, 0.7]"])
def test_bad_ladder_through_the_matrix_gives_exit_2(tmp_path, capsys, value):
    path = tmp_path / "bad.toml"
    path.write_text('seeds = [0]\n[budget]\nmax_evals = 1000\n[[systems]]\nname = "double_well"\n'
                    f'[[samplers]]\nname = "pt"\nparams = {{ betas = {value} }}\n')
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "samplers[0].params.betas: " in err and "must" in err


# --------------------------------------------------------------------------------- slow

@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["deo", "seo"])
def test_round_trip_rate_matches_syed_et_al(scheme):
    """With (nearly) efficient local exploration — 20 local moves between swaps — the round trip
    rate per round (all walkers of a chain together) is 1/(2 + 2Λ) for DEO and 1/(2N + 2Λ)
    for SEO, Λ = Σ_k r_k/(1 − r_k), N = R − 1 pairs (Syed et al. 2022, round-trip rates of the
    non-reversible and reversible schemes). Our
    conservative count (a walker's first trip starts at the cold end) loses ~3 %."""
    R, C, rounds = 8, 32, 1500
    system = get_system("harmonic", dim=2)
    snapshot, _ = run(system, Budget(max_evals=C * R * rounds * 20, n_snapshots=1), seed=1,
                      n_replicas=R, t_max=30.0, n_chains=C, scheme=scheme, local_steps=20)
    d = snapshot.diagnostics
    r = 1 - np.array(d["pair_acceptance"])
    lam = float(np.sum(r / (1 - r)))
    theory = 1 / (2 + 2 * lam) if scheme == "deo" else 1 / (2 * (R - 1) + 2 * lam)
    measured = d["round_trips"] / (C * d["rounds"])
    assert measured == pytest.approx(theory, rel=0.08), (measured, theory)


@pytest.mark.slow
@pytest.mark.parametrize("temperature,move", [(1.0, "md"), (2.0, "mc")])
def test_pt_double_well_other_moves_and_temperatures(temperature, move):
    """PT with Langevin moves at kT = 1, and with MC at kT = 2 (a second quadrature reference)."""
    system = get_system("double_well", temperature=temperature)
    ref = system.reference()
    params = dict(dt=0.05, local_steps=5) if move == "md" else {}
    snapshot, _ = run(system, Budget(max_evals=64 * 8 * 3000 * (5 if move == "md" else 1), n_snapshots=1),
                      seed=2, n_chains=64, move=move, thin=1, **params)
    x1, u = snapshot.positions[..., 0].numpy(), snapshot.energies.numpy()
    assert_within(u.mean(axis=0), ref.exact["mean_energy"], what="<u>")
    se = assert_within((x1 > 0).mean(axis=0), ref.exact["p_right"], what="P(right)")
    assert se < 0.2 * ref.exact["p_right"]
