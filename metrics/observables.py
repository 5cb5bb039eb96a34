"""Errors of thermodynamic averages against the reference, and compact summaries of
distributions that records can carry (JSON-able)."""

from __future__ import annotations

from typing import Any

import numpy as np

from boltzbench.contracts import Reference, Samples, defined, support


def _reference_energies(reference: Reference) -> np.ndarray | None:
    """The reference energies, or None when any is non-finite or there are none."""
    kept = support(None, np.asarray(reference.energies, float).ravel())
    return None if kept is None else kept[1]


def mean_energy_error(samples: Samples, reference: Reference) -> float | None:
    """|⟨u⟩ − ⟨u⟩_ref| in kT; the reference mean is exact when known, else the sample mean.
    None when undefined (:func:`boltzbench.contracts.support`: non-finite weights, or
    non-finite energies carrying weight, on either side)."""
    mine = support(samples.weights(), samples.energies.ravel())
    if "mean_energy" in reference.exact:
        target = defined(reference.exact["mean_energy"])
    else:
        ref = _reference_energies(reference)
        target = None if ref is None else float(np.mean(ref))
    if mine is None or target is None:
        return None
    w, u = mine
    return defined(abs(float(np.sum(w * u)) - target))


def heat_capacity_error(samples: Samples, reference: Reference) -> float | None:
    """Relative error of the excess heat capacity, |C − C_ref| / C_ref.

    With reduced energies u = U/kT, the fluctuation formula C^ex/k_B = Var(U)/(kT)² =
    Var(u) (Allen & Tildesley, *Computer Simulation of Liquids*, 2nd ed., §2.5); the
    sample variance is weighted for importance-weighted samples. C_ref is the reference
    samples' variance. The specific heat of Jung, Biroli & Berthier (2024) is C/N.
    None when undefined (:func:`boltzbench.contracts.support`) or C_ref = 0.
    """
    mine, ref = support(samples.weights(), samples.energies.ravel()), _reference_energies(reference)
    if mine is None or ref is None:
        return None
    w, u = mine
    mean = float(np.sum(w * u))
    variance = float(np.sum(w * (u - mean) ** 2))
    reference_variance = float(np.var(ref))
    if not reference_variance > 0:
        return None
    return defined(abs(variance - reference_variance) / reference_variance)


def energy_histogram(energies: np.ndarray, weights: np.ndarray | None = None, bins: int = 60,
                     coverage: float = 0.999) -> dict[str, Any]:
    """A weighted density histogram {"edges": [...], "density": [...]} (JSON-able) over the
    central ``coverage`` of the values: what a record keeps of the reference energies so
    that reports can draw them (``reference.energy_histogram``)."""
    x = np.asarray(energies, float).ravel()
    w = None if weights is None else np.asarray(weights, float).ravel()
    tail = (1.0 - coverage) / 2.0
    lo, hi = np.quantile(x, [tail, 1.0 - tail])
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    counts, _ = np.histogram(x, bins=edges, weights=w)
    total = counts.sum()
    density = counts / total / np.diff(edges) if total > 0 else counts.astype(float)
    return {"edges": edges.tolist(), "density": density.tolist()}
