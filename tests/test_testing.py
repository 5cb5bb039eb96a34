"""The conformance kit passes the built-in samplers and catches broken ones."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from boltzbench import get_sampler
from boltzbench.samplers.chains import ChainTrace
from boltzbench.samplers.mc import MetropolisMC
from boltzbench.testing import (check_double_well_exact, check_every_evaluation_charged, check_sampler,
                                check_seed_reproducibility, check_snapshot_contract)


@pytest.mark.parametrize("name,params", [("md", {"dt": 0.05, "n_chains": 64}), ("mc", {"step": 0.7, "n_chains": 64})])
def test_builtin_samplers_conform(name, params):
    check_sampler(get_sampler(name, **params), max_evals=64 * 20_000)


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
