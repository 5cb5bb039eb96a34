"""Wasserstein distances between 1D distributions, with weights.

W_p(μ, ν) = (∫₀¹ |F_μ⁻¹(q) − F_ν⁻¹(q)|^p dq)^{1/p}; for p = 1 this equals ∫ |F_μ(x) − F_ν(x)| dx
(Villani, *Optimal Transport*, 2009, Remark 2.19; Peyré & Cuturi, *Computational Optimal
Transport*, 2019, §2.6). Between two sample sets POT's exact 1D solver does the transport;
against an exact CDF the integral of |F_n − F| is taken on the reference grid.
"""

from __future__ import annotations

import numpy as np
import ot

from boltzbench.contracts import Reference, Samples


def w1_samples(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
               y_weights: np.ndarray | None = None) -> float:
    """W1 between two weighted 1D sample sets (exact, POT ``wasserstein_1d``).

    Parameters
    ----------
    x, y : (n,), (m,) arrays of values.
    x_weights, y_weights : optional non-negative weights (normalized here); uniform if None.
    """
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    a = None if x_weights is None else np.asarray(x_weights, float).ravel() / np.sum(x_weights)
    b = None if y_weights is None else np.asarray(y_weights, float).ravel() / np.sum(y_weights)
    return float(ot.wasserstein_1d(x, y, a, b, p=1))


def w1_to_cdf(x: np.ndarray, weights: np.ndarray | None, grid: np.ndarray, cdf: np.ndarray) -> float:
    """W1 = ∫ |F_n(t) − F(t)| dt between weighted samples and an exact CDF given on a grid.

    The empirical CDF F_n is a step function: the integral is done exactly between the
    union of grid points and sample values, with F linearly interpolated on the grid
    (0 below it, 1 above it).

    Parameters
    ----------
    x : (n,) samples. weights : (n,) non-negative weights or None (uniform).
    grid, cdf : increasing grid and the exact CDF on it.
    """
    x = np.asarray(x, float).ravel()
    w = np.full(x.size, 1.0 / x.size) if weights is None else np.asarray(weights, float).ravel() / np.sum(weights)
    order = np.argsort(x)
    xs, cw = x[order], np.cumsum(w[order])
    points = np.union1d(grid, xs)
    exact = np.interp(points, grid, cdf, left=0.0, right=1.0)
    empirical = np.concatenate([[0.0], cw])[np.searchsorted(xs, points, side="right")]
    # F_n is constant on [t_i, t_{i+1}); F is linear there: integrate |F_n − F| exactly.
    lo = empirical[:-1] - exact[:-1]
    hi = empirical[:-1] - exact[1:]
    width = np.diff(points)
    same_sign = lo * hi >= 0
    area = np.where(same_sign, 0.5 * np.abs(lo + hi),
                    0.5 * (lo**2 + hi**2) / np.maximum(np.abs(lo) + np.abs(hi), 1e-300))
    return float(np.sum(area * width))


def energy_w1(samples: Samples, reference: Reference) -> float:
    """W1 of the reduced-energy distribution against the reference samples (POT, exact 1D)."""
    return w1_samples(samples.energies, reference.energies, samples.weights(), None)


def x1_w1(samples: Samples, reference: Reference) -> float | None:
    """W1 of the x1 marginal against the exact (quadrature) CDF; None without one."""
    if "x1" not in reference.cdfs or "x1" not in samples.observables:
        return None
    grid, cdf = reference.cdfs["x1"]
    return w1_to_cdf(samples.observables["x1"], samples.weights(), grid, cdf)
