"""The plugin's tests: boltzbench's conformance kit does the heavy lifting."""

import boltzbench
from boltzbench.testing import check_sampler

from boltzbench_mala import MALA


def test_mala_conforms_to_the_boltzbench_contract():
    check_sampler(MALA(step=0.1, n_chains=64), max_evals=64 * 20_000)


def test_mala_is_found_through_its_entry_point():
    sampler = boltzbench.get_sampler("mala", step=0.05)
    assert isinstance(sampler, MALA) and sampler.step == 0.05
