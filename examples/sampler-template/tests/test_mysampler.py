"""The plugin's tests: boltzbench's conformance kit does the heavy lifting."""

import pytest

from boltzbench import ParameterError
from boltzbench.testing import check_sampler

from boltzbench_mysampler import MySampler


def test_mysampler_conforms_to_the_boltzbench_contract():
    # snapshot contract, every evaluation charged, seeds, the double well's exact answers
    assert check_sampler(MySampler(step=0.5), max_evals=64 * 10_000) == ["double_well"]


def test_bad_step_is_refused_by_name():
    with pytest.raises(ParameterError, match="step"):
        MySampler(step=-1.0)
