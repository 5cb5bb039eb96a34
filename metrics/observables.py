"""Errors of thermodynamic averages against the reference."""

from __future__ import annotations

import numpy as np

from boltzbench.contracts import Reference, Samples


def mean_energy_error(samples: Samples, reference: Reference) -> float:
    """|⟨u⟩ − ⟨u⟩_ref| in kT; the reference mean is exact when known, else the sample mean."""
    target = reference.exact.get("mean_energy", float(np.mean(reference.energies)))
    return abs(float(np.sum(samples.weights() * samples.energies.ravel())) - target)
