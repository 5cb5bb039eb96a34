"""The conformance kit passes the built-in samplers and catches broken ones."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from boltzbench import get_sampler
from boltzbench.contracts import ParameterError
from boltzbench.samplers import moves
from boltzbench.samplers.chains import ChainTrace
from boltzbench.samplers.mc import MetropolisMC
from boltzbench.samplers.swap_mc import SwapMC
from boltzbench.testing import (SamplerRefused, Trimer, check_double_well_exact, check_every_evaluation_charged,
                                check_particles_exact, check_sampler, check_seed_reproducibility,
                                check_snapshot_contract, trimer_quadrature)


@pytest.mark.parametrize("name,params", [("md", {"dt": 0.05, "n_chains": 64}), ("mc", {"step": 0.7, "n_chains": 64})])
def test_builtin_samplers_conform(name, params):
    assert check_sampler(get_sampler(name, **params), max_evals=64 * 20_000) == ["double_well"]


@pytest.mark.parametrize("name,params", [
    ("swap_mc", {}),
    ("pt", {"move": "swap", "n_chains": 16, "n_replicas": 3, "t_max": 3.0}),
    ("pa", {"move": "swap", "population": 50, "initial_sweeps": 20, "sweeps": 2}),
])
def test_particle_samplers_refuse_the_double_well_and_conform_on_the_trimer(name, params):
    """swap_mc, PT and PA with swap moves refuse the double well (ParameterError before any
    evaluation), so the kit checks them on its particle system, where they pass."""
    sampler = get_sampler(name, **params)
    with pytest.raises(SamplerRefused, match="refused the kit system 'double_well'.*particle system"):
        check_snapshot_contract(sampler)
    assert check_sampler(sampler) == ["particles"]


@dataclass
class SwapsWithoutMetropolis(SwapMC):
    """Swap MC that accepts every identity swap (no Metropolis test; displacements are
    right, energies stay u(x)): the species mix freely."""

    name: ClassVar[str] = "swaps_without_metropolis"
    backend: str = "torch"

    def run(self, system, budget, generator):
        original = moves.swap_attempt
        moves.swap_attempt = lambda x, u, beta, *rest: original(x, u, torch.zeros_like(beta), *rest)  # β = 0: accept
        try:
            yield from super().run(system, budget, generator)
        finally:
            moves.swap_attempt = original


def test_kit_catches_swaps_accepted_without_the_metropolis_test():
    """The broken swap sampler honours the contract on the trimer but fails its exact check
    (⟨r_AA⟩ and ⟨r_AB⟩ move towards each other by > 10 standard errors)."""
    sampler = SwapsWithoutMetropolis()
    check_snapshot_contract(sampler, system="particles")
    with pytest.raises(AssertionError, match="exact.*trimer"):
        check_particles_exact(sampler, max_evals=40_000)
    check_particles_exact(SwapMC(backend="torch"), max_evals=40_000)  # the same budget passes when right


@dataclass
class RefusesEverything(MetropolisMC):
    name: ClassVar[str] = "refuses_everything"

    def run(self, system, budget, generator):
        raise ParameterError("system", f"no system suits me, not even {system.name!r}")
        yield


@dataclass
class BreaksAfterStarting(MetropolisMC):
    """Raises a TypeError after charging evaluations: a bug, not a refusal."""

    name: ClassVar[str] = "breaks_after_starting"

    def run(self, system, budget, generator):
        system.energy(system.sample_initial(2, generator))
        raise TypeError("a bug in the middle of the run")
        yield


def test_kit_refusal_rule():
    with pytest.raises(AssertionError, match="refused every kit system.*double_well.*kit_trimer"):
        check_sampler(RefusesEverything())
    with pytest.raises(TypeError, match="a bug"):
        check_sampler(BreaksAfterStarting())
    with pytest.raises(SamplerRefused, match="'double_well'"):
        check_sampler(get_sampler("swap_mc"), systems=("double_well", "particles"))  # named: must be accepted
    with pytest.raises(ValueError, match="valid choices: double_well, particles"):
        check_sampler(get_sampler("mc"), systems=("liquid",))


def test_kit_trimer_energies_are_kob_andersen_by_an_independent_formula():
    """The kit's particle system against plain numpy: 4ε[(σ/r)¹² − (σ/r)⁶] − its value at
    1.5σ, for r < 1.5σ (KA σ/ε: AA 1/1, AB 0.8/1.5, BB 0.88/0.5), minimum image in a 3×3
    box, divided by kT = 0.8; and the quadrature's averages are averages (⟨u²⟩ ≥ ⟨u⟩²)."""
    system = Trimer()
    x = system.sample_initial(50, torch.Generator().manual_seed(0)).numpy().reshape(50, 3, 2)
    sigma, eps = np.array([[1.0, 0.8], [0.8, 0.88]]), np.array([[1.0, 1.5], [1.5, 0.5]])
    species = [0, 0, 1]
    expected = np.zeros(50)
    for i in range(3):
        for j in range(i + 1, 3):
            d = x[:, i] - x[:, j]
            d -= 3.0 * np.round(d / 3.0)
            r = np.linalg.norm(d, axis=1)
            s, e = sigma[species[i], species[j]], eps[species[i], species[j]]
            lj = lambda q: 4 * e * ((s / q) ** 12 - (s / q) ** 6)  # noqa: E731
            expected += np.where(r < 1.5 * s, lj(r) - lj(1.5 * s), 0.0)
    assert np.allclose(system._energy(torch.from_numpy(x.reshape(50, 6))).numpy(), expected / 0.8, rtol=1e-10)
    exact = trimer_quadrature()
    assert exact["u2"] > exact["u"] ** 2 and exact["r_aa"] > exact["r_ab"] + 0.1


@dataclass
class Uncharged(MetropolisMC):
    """Evaluates proposals through the private kernel: nothing is charged."""

    name: ClassVar[str] = "uncharged"

    def run(self, system, budget, generator):
        x = system.sample_initial(self.n_chains, generator)
        u, trace, schedule = system.energy(x), ChainTrace(self.thin), budget.schedule()
        while not budget.exhausted(system.ledger):
            proposal = x + self.step * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            u_new = system._energy(proposal)
            system.ledger.charge(energy=1)  # charges one configuration for a whole batch
            accept = torch.rand(u.shape, generator=generator, dtype=u.dtype).log() < u - u_new
            x, u = torch.where(accept[:, None], proposal, x), torch.where(accept, u_new, u)
            trace.step(x, u)
            if schedule.due(system.ledger):
                yield trace.snapshot(system.ledger, {})


@dataclass
class GlobalRandom(MetropolisMC):
    """Ignores the generator it is given."""

    name: ClassVar[str] = "global_random"

    def run(self, system, budget, generator):
        return super().run(system, budget, torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()))))


@dataclass
class WrongTemperature(MetropolisMC):
    """Accepts with exp(−Δu/2): samples kT = 2 instead of the target."""

    name: ClassVar[str] = "wrong_temperature"

    def run(self, system, budget, generator):
        original = system._energy
        system._energy = lambda x: 0.5 * original(x)
        try:
            for snapshot in super().run(system, budget, generator):
                snapshot.energies = 2 * snapshot.energies
                yield snapshot
        finally:
            system._energy = original


@dataclass
class WrongEnergies(MetropolisMC):
    """Reports energies that are not u(positions)."""

    name: ClassVar[str] = "wrong_energies"

    def run(self, system, budget, generator):
        for snapshot in super().run(system, budget, generator):
            snapshot.energies = snapshot.energies + 1.0
            yield snapshot


def test_kit_catches_uncharged_evaluations():
    with pytest.raises(AssertionError, match="not charged"):
        check_every_evaluation_charged(Uncharged(n_chains=16))


def test_kit_catches_ignored_seed():
    with pytest.raises(AssertionError, match="same seed gave different samples"):
        check_seed_reproducibility(GlobalRandom(n_chains=16))


def test_kit_catches_wrong_stationary_distribution():
    with pytest.raises(AssertionError, match="exact"):
        check_double_well_exact(WrongTemperature(step=0.7, n_chains=64), max_evals=64 * 20_000)


def test_kit_catches_energies_that_do_not_match_positions():
    with pytest.raises(AssertionError, match="not u\\(positions\\)"):
        check_snapshot_contract(WrongEnergies(n_chains=16))


def test_kit_says_non_finite_when_a_sampler_diverges():
    """A diverged chain (MD with a huge time step) is named as such, not as an energy mismatch."""
    from boltzbench.samplers.md import LangevinMD
    with pytest.raises(AssertionError, match="non-finite positions"):
        check_snapshot_contract(LangevinMD(dt=5.0, n_chains=16, thin=1))
