"""Wasserstein distances between sampled and reference distributions, with weights.

W_p(μ, ν) = (inf_γ ∫ d(x, y)^p dγ(x, y))^{1/p} over couplings γ of μ and ν (Villani,
*Optimal Transport*, 2009, Def. 6.1). In one dimension the optimal coupling is monotone,
W_p^p = ∫₀¹ |F_μ⁻¹(q) − F_ν⁻¹(q)|^p dq, and for p = 1 this equals ∫ |F_μ(x) − F_ν(x)| dx
(Villani 2009, Remark 2.19; Peyré & Cuturi, *Computational Optimal Transport*, 2019, §2.6).
The 1D distances are computed here; POT (Flamary et al., JMLR 22(78), 2021) does the
others:

* **1D, exact** (energies, one observable, pooled pair distances): W1 = ∫ |F − G| dx over
  the gaps between the sorted samples of both sides, each gap's F − G summed from the
  nearer end. (POT's quantile-based ``wasserstein_1d`` charges the rounding error of the
  total weight, 1e-8 for float32 weights, at the largest sample: a reweighted flow with
  one overlap at u ≈ 1e18 and zero weight got W1 ≈ 10¹⁰.) W2 by the quantile integral
  over the merged breakpoints of both cumulative weights, each breakpoint's level taken
  from the nearer end (mass below it in the lower half, mass above it in the upper half),
  so that no rounding of the total weight is charged at a far sample (POT's
  ``wasserstein_1d`` gave W2 ≈ 1.4·10¹² for one zero-weight sample at u = 1e18).
* **Torus T² (dihedral pairs φ, ψ)**: exact EMD (``ot.emd2``, network simplex) with the
  periodic ground cost d²(x, y) = Σ_k min(|x_k − y_k| mod 2π, 2π − |x_k − y_k| mod 2π)² on
  seeded subsamples; the joint (φ, ψ) distribution is compared, not the two marginals.
* **Low-dimensional configurations**: exact EMD with the squared Euclidean cost on seeded
  subsamples (W2).
* **High-dimensional configurations**: sliced W2 (Rabin et al., SSVM 2011; Bonneel et al.,
  JMIV 51, 2015), SW₂ = (E_θ W₂²(θ#μ, θ#ν))^{1/2} over uniform directions θ on the sphere,
  estimated by POT's ``ot.sliced_wasserstein_distance`` with seeded projections.

Undefined inputs (:func:`boltzbench.contracts.support`, the rule of every metric): samples
of zero weight (log-weight −inf) carry no mass and are dropped before any transport; NaN,
±inf or negative weights, all-zero weights, empty sides, or non-finite values carrying
weight (either side) make a distance undefined: NaN from the float functions,
``value = None`` in a :class:`MetricResult`, None from registered metrics.

Subsamples are drawn with fixed seeds, so the same samples always give the same number:
uniformly without replacement for unweighted samples, by systematic resampling for
weighted ones (:func:`_take`). EMD on n points of each side is biased upwards by a term that shrinks with n
(Fournier & Guillin, PTRF 162, 2015): compare values computed at the same subsample size
only — every function states its size in its :class:`MetricResult`.

Registered metrics are functions ``f(samples, reference) -> float | None`` (records store
float curves); their docstrings name the estimator, and the report prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot

from boltzbench.contracts import Reference, Samples, defined, support

#: Seed of every subsample drawn here (a metric is a pure function of its inputs).
SUBSAMPLE_SEED = 20240601
#: Points per side of the exact EMD estimators (n² cost matrix: 2000² takes about 1 s).
EMD_MAX_SAMPLES = 1000
#: Points per side and directions of the sliced estimator.
SLICED_MAX_SAMPLES = 5000
SLICED_PROJECTIONS = 128
#: Configurations whose pair distances are pooled, per side, for the pair-distance W1.
PAIR_MAX_CONFIGS = 2000
PAIR_PREFIX = "pair_distance/"
TWO_PI = 2.0 * np.pi


@dataclass(frozen=True)
class MetricResult:
    """A metric value with the estimator that produced it.

    ``value`` is ``None`` when the metric is undefined for these inputs; ``n_samples`` and
    ``n_reference`` are the numbers of sample and reference points the estimator used
    (after subsampling).
    """

    value: float | None
    estimator: str
    n_samples: int
    n_reference: int

    def __float__(self) -> float:
        return float("nan") if self.value is None else float(self.value)


# ------------------------------------------------------------------------- helpers


def _rows(x: np.ndarray) -> np.ndarray:
    """``x`` as a float (n, k) array, one row per sample (an empty input included)."""
    x = np.asarray(x, float)
    if x.ndim == 2:
        return x
    return x.reshape(len(x), -1) if x.size else x.reshape(len(x), 0)


def _both(x: np.ndarray, x_weights: np.ndarray | None, y: np.ndarray,
          y_weights: np.ndarray | None) -> tuple[np.ndarray, ...] | None:
    """(a, x, b, y): the rows of each side that carry mass and their normalized weights
    (:func:`boltzbench.contracts.support`); None when either side is undefined."""
    sx, sy = support(x_weights, x), support(y_weights, y)
    return None if sx is None or sy is None else (*sx, *sy)


def subsample(n: int, max_n: int, seed: int) -> np.ndarray:
    """Sorted indices of a uniform subsample of at most ``max_n`` of ``n`` items, without
    replacement, from ``np.random.default_rng(seed)``; all indices when n ≤ max_n."""
    if n <= max_n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def resample(weights: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Systematic resampling: m indices, index i drawn ⌊m·wᵢ⌋ or ⌈m·wᵢ⌉ times (weights
    summing to 1; offsets (u + k)/m with one seeded u ~ U(0, 1); Kitagawa, J. Comput. Graph.
    Stat. 5, 1 (1996))."""
    u = (np.random.default_rng(seed).random() + np.arange(m)) / m
    return np.minimum(np.searchsorted(np.cumsum(weights), u, side="right"), len(weights) - 1)


def _take(x: np.ndarray, weights: np.ndarray, max_n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_n`` rows of ``x`` with weights summing to 1, representing the weighted
    sample (``x``, ``weights``: the rows that carry mass and their normalized weights, as
    :func:`boltzbench.contracts.support` gives them): all rows when there are few enough;
    else a uniform subsample (equal weights) or, for weighted samples, systematic
    resampling by weight (distinct rows, their multiplicities as weights). Resampling keeps
    min(max_n, ESS) effective points, where a uniform subsample of weighted samples keeps
    only max_n·ESS/n — about 10 for a flow with an ESS fraction of 1 %."""
    if x.shape[0] <= max_n:
        return x, weights
    if np.all(weights == weights[0]):
        return x[subsample(x.shape[0], max_n, seed)], np.full(max_n, 1.0 / max_n)
    idx, counts = np.unique(resample(weights, max_n, seed), return_counts=True)
    return x[idx], counts / max_n


# ----------------------------------------------------------------------- 1D, exact


def w1_samples(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
               y_weights: np.ndarray | None = None) -> float:
    """W1 between two weighted 1D sample sets, exact: ∫ |F − G| dx (module docstring).

    Parameters
    ----------
    x, y : (n,), (m,) arrays of values.
    x_weights, y_weights : optional non-negative weights (normalized here); uniform if None.

    NaN when undefined (:func:`boltzbench.contracts.support`); zero weights are dropped.
    """
    both = _both(np.asarray(x, float).ravel(), x_weights, np.asarray(y, float).ravel(), y_weights)
    if both is None:
        return float("nan")
    a, x, b, y = both
    values = np.concatenate([x, y])
    order = np.argsort(values, kind="stable")
    z = values[order]
    jumps = np.concatenate([a, -b])[order]
    from_left = np.cumsum(jumps)[:-1]                 # F − G on each gap (z_i, z_{i+1})
    from_right = -np.cumsum(jumps[::-1])[::-1][1:]    # the same, as −(mass above the gap)
    upper_half = np.cumsum(np.abs(jumps))[:-1] > 1.0  # the right sum is exact where little lies above
    return float(np.sum(np.abs(np.where(upper_half, from_right, from_left)) * np.diff(z)))


def w2_samples(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
               y_weights: np.ndarray | None = None) -> float:
    """W2 (not squared) between two weighted 1D sample sets, exact.

    W2 = (∫₀¹ |F_x⁻¹(q) − F_y⁻¹(q)|² dq)^{1/2} (Peyré & Cuturi 2019, Remark 2.30): the
    quantile functions are step functions, so the integral is a finite sum over the
    intervals between the merged breakpoints of both cumulative weights. Each breakpoint's
    level is summed from the nearer end (module docstring), so the interval next to a far,
    light sample has its true width. Between N(μ1, σ1²) and N(μ2, σ2²),
    W2² = (μ1 − μ2)² + (σ1 − σ2)².

    Parameters
    ----------
    x, y : (n,), (m,) arrays of values.
    x_weights, y_weights : optional non-negative weights (normalized here); uniform if None.

    NaN when undefined (:func:`boltzbench.contracts.support`); zero weights are dropped.
    """
    both = _both(np.asarray(x, float).ravel(), x_weights, np.asarray(y, float).ravel(), y_weights)
    if both is None:
        return float("nan")
    a, x, b, y = both
    ox, oy = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    x, a, y, b = x[ox], a[ox], y[oy], b[oy]
    below = np.concatenate([np.cumsum(a), np.cumsum(b)])       # mass up to each breakpoint
    above = np.concatenate([_mass_above(a), _mass_above(b)])   # mass beyond it, from the top
    is_x = np.concatenate([np.ones(x.size, bool), np.zeros(y.size, bool)])
    upper = below > 0.5
    order = np.lexsort((np.where(upper, -above, below), upper))  # by level q
    below, above, upper, is_x = below[order], above[order], upper[order], is_x[order]
    prev_below = np.concatenate([[0.0], below[:-1]])
    prev_above = np.concatenate([[1.0], above[:-1]])
    prev_upper = np.concatenate([[False], upper[:-1]])
    width = np.where(~upper, below - prev_below,                       # both levels below ½
                     np.where(prev_upper, prev_above - above,          # both above ½
                              (1.0 - above) - prev_below))             # across ½
    # the interval ending at breakpoint k has, on each side, the point after its breakpoints so far
    ix = np.minimum(np.cumsum(is_x) - is_x, x.size - 1)
    iy = np.minimum(np.cumsum(~is_x) - ~is_x, y.size - 1)
    return float(np.sqrt(np.sum(np.maximum(width, 0.0) * (x[ix] - y[iy]) ** 2)))


def _mass_above(w: np.ndarray) -> np.ndarray:
    """Σ_{j>i} w_j for each i, summed from the top (exact for the last, light points)."""
    return np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])


def w1_to_cdf(x: np.ndarray, weights: np.ndarray | None, grid: np.ndarray, cdf: np.ndarray) -> float:
    """W1 = ∫ |F_n(t) − F(t)| dt between weighted samples and an exact CDF given on a grid.

    The empirical CDF F_n is a step function: the integral is done exactly between the
    union of grid points and sample values, with F linearly interpolated on the grid
    (0 below it, 1 above it, constant there). F_n is summed from the nearer end (1 − mass above, in the
    upper half), so a far, light sample is charged its own weight, never the rounding of
    the total.

    Parameters
    ----------
    x : (n,) samples. weights : (n,) non-negative weights or None (uniform).
    grid, cdf : increasing grid and the exact CDF on it.

    NaN when undefined (:func:`boltzbench.contracts.support`; a non-finite grid or CDF
    value too); zero weights are dropped.
    """
    sx = support(weights, np.asarray(x, float).ravel())
    exact_side = support(None, np.asarray(grid, float).ravel(), np.asarray(cdf, float).ravel())
    if sx is None or exact_side is None:
        return float("nan")
    (w, x), (_, grid, cdf) = sx, exact_side
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    below = np.cumsum(ws)
    levels = np.where(below <= 0.5, below, 1.0 - _mass_above(ws))  # F_n just after each sample
    points = np.union1d(grid, xs)
    exact = np.interp(points, grid, cdf, left=0.0, right=1.0)
    empirical = np.concatenate([[0.0], levels])[np.searchsorted(xs, points, side="right")]
    # F_n is constant on [t_i, t_{i+1}); F is linear there: integrate |F_n − F| exactly.
    # Outside the grid F is the constant 0 or 1, not a line from the grid's end to a far sample.
    start, end = exact[:-1].copy(), exact[1:].copy()
    beyond, before = points[:-1] >= grid[-1], points[1:] <= grid[0]
    start[beyond], end[beyond], start[before], end[before] = 1.0, 1.0, 0.0, 0.0
    lo = empirical[:-1] - start
    hi = empirical[:-1] - end
    width = np.diff(points)
    same_sign = lo * hi >= 0
    area = np.where(same_sign, 0.5 * np.abs(lo + hi),
                    0.5 * (lo**2 + hi**2) / np.maximum(np.abs(lo) + np.abs(hi), 1e-300))
    return float(np.sum(area * width))


# ------------------------------------------------------------------ subsampled EMD


def torus_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared geodesic distances on the flat torus [−π, π)^k: (n, k), (m, k) → (n, m).

    Per angle the distance is min(|Δ| mod 2π, 2π − |Δ| mod 2π), so φ = π − 0.1 and
    φ = −π + 0.1 are 0.2 apart, not 2π − 0.2.
    """
    delta = np.abs(x[:, None, :] - y[None, :, :]) % TWO_PI
    delta = np.minimum(delta, TWO_PI - delta)
    return np.sum(delta * delta, axis=-1)


def _emd_w2(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    value = ot.emd2(a, b, cost, numItermax=10_000_000)
    return float(np.sqrt(max(float(value), 0.0)))


def _point_clouds(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None, y_weights: np.ndarray | None,
                  max_samples: int, seed: int, estimator: str, distance) -> MetricResult:
    """``distance(xs, a, ys, b)`` between seeded subsamples (:func:`_take`) of the rows of
    each side that carry mass; undefined (None) when either side is (:func:`_both`)."""
    both = _both(_rows(x), x_weights, _rows(y), y_weights)
    if both is None:
        return MetricResult(None, estimator, 0, 0)
    a, x, b, y = both
    xs, a = _take(x, a, max_samples, seed)
    ys, b = _take(y, b, max_samples, seed + 1)
    return MetricResult(defined(distance(xs, a, ys, b)), estimator, len(xs), len(ys))


def torus_w2(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
             y_weights: np.ndarray | None = None, max_samples: int = EMD_MAX_SAMPLES,
             seed: int = SUBSAMPLE_SEED) -> MetricResult:
    """W2 on the torus between two weighted sets of angle tuples (radians), exact EMD.

    Parameters
    ----------
    x, y : (n, k), (m, k) angles in radians (any representative; the cost is periodic).
    x_weights, y_weights : optional weights (renormalized on the subsample).
    max_samples : points per side; larger sets are subsampled uniformly with ``seed``.

    Returns
    -------
    MetricResult with W2 = (min_γ Σ γ_ij d²_T(x_i, y_j))^{1/2}, d_T from :func:`torus_cost`.
    """
    estimator = (f"exact EMD (POT emd2), periodic squared cost on T^{_rows(x).shape[1]}, "
                 f"seeded subsamples of ≤ {max_samples} per side")
    return _point_clouds(x, y, x_weights, y_weights, max_samples, seed, estimator,
                         lambda xs, a, ys, b: _emd_w2(a, b, torus_cost(xs, ys)))


def emd_w2(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
           y_weights: np.ndarray | None = None, max_samples: int = EMD_MAX_SAMPLES,
           seed: int = SUBSAMPLE_SEED) -> MetricResult:
    """W2 between two weighted point clouds in R^d, exact EMD with squared Euclidean cost.

    Parameters
    ----------
    x, y : (n, d), (m, d) points. x_weights, y_weights : optional weights.
    max_samples : points per side; larger sets are subsampled uniformly with ``seed``.
    """
    estimator = (f"exact EMD (POT emd2), squared Euclidean cost in R^{_rows(x).shape[1]}, "
                 f"seeded subsamples of ≤ {max_samples} per side")
    return _point_clouds(x, y, x_weights, y_weights, max_samples, seed, estimator,
                         lambda xs, a, ys, b: _emd_w2(a, b, ot.dist(xs, ys, metric="sqeuclidean")))


def sliced_w2(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
              y_weights: np.ndarray | None = None, n_projections: int = SLICED_PROJECTIONS,
              max_samples: int = SLICED_MAX_SAMPLES, seed: int = SUBSAMPLE_SEED) -> MetricResult:
    """Sliced W2 between two weighted point clouds in R^d (POT, seeded projections).

    SW₂(μ, ν) = (E_θ W₂²(θ#μ, θ#ν))^{1/2}, θ uniform on the unit sphere, estimated with
    ``n_projections`` directions drawn from ``seed``. SW₂ ≤ W₂ (Bonneel et al. 2015).
    """
    estimator = (f"sliced W2 (POT), {n_projections} seeded projections, seeded "
                 f"subsamples of ≤ {max_samples} per side")
    return _point_clouds(x, y, x_weights, y_weights, max_samples, seed, estimator, lambda xs, a, ys, b: float(
        ot.sliced_wasserstein_distance(xs, ys, a, b, n_projections=n_projections, p=2, seed=seed)))


# ------------------------------------------------------------------ pair distances


def pair_distance_w1_by_pair(samples: Samples, reference: Reference,
                             max_configs: int = PAIR_MAX_CONFIGS,
                             seed: int = SUBSAMPLE_SEED) -> dict[str, MetricResult]:
    """W1 between the pooled pair distances of each species pair, keyed by pair ('AA', ...).

    For every observable ``pair_distance/XY`` of shape (T, C, n_pairs) present in both the
    samples and the reference (flattened there), all pair distances of up to
    ``max_configs`` configurations (a seeded subsample, :func:`_take`) are pooled into one 1D
    distribution: pooling makes the metric invariant under permutations of like
    particles. A configuration's weight is shared equally by its pairs. The reference is
    subsampled to at most ``max_configs · n_pairs`` values. Exact 1D W1 (POT). A pair's
    value is None when its inputs are undefined (:func:`boltzbench.contracts.support`).
    """
    out: dict[str, MetricResult] = {}
    weights = samples.weights()
    estimator = (f"exact 1D W1 (POT) of pooled pair distances, seeded subsample of ≤ {max_configs} "
                 f"configurations per side")
    for key, values in samples.observables.items():
        if not key.startswith(PAIR_PREFIX) or key not in reference.observables:
            continue
        values = np.asarray(values, float)
        per_config = _rows(values.reshape(samples.n, *values.shape[samples.energies.ndim:]))
        n_pairs = per_config.shape[1]
        both = _both(per_config, weights, np.asarray(reference.observables[key], float).ravel(), None)
        if both is None:
            out[key[len(PAIR_PREFIX):]] = MetricResult(None, estimator, 0, 0)
            continue
        w, per_config, _, ref = both
        configs, w = _take(per_config, w, max_configs, seed)
        x = configs.ravel()
        xw = np.repeat(w / n_pairs, n_pairs)
        ref = ref[subsample(ref.size, max_configs * n_pairs, seed + 1)]
        out[key[len(PAIR_PREFIX):]] = MetricResult(defined(w1_samples(x, ref, xw, None)), estimator,
                                                   int(x.size), int(ref.size))
    return out


# ------------------------------------------------------------------ registered metrics


def energy_w1(samples: Samples, reference: Reference) -> float | None:
    """W1 of the reduced-energy distribution against the reference samples (exact 1D);
    None when undefined (non-finite weights or energies carrying weight)."""
    return defined(w1_samples(samples.energies, reference.energies, samples.weights(), None))


def energy_w2(samples: Samples, reference: Reference) -> float | None:
    """W2 (not squared) of the reduced-energy distribution against the reference samples
    (exact 1D quantile integral, all samples with their weights; zero weights carry no
    mass); None when undefined."""
    return defined(w2_samples(samples.energies, reference.energies, samples.weights(), None))


def x1_w1(samples: Samples, reference: Reference) -> float | None:
    """W1 of the x1 marginal against the exact (quadrature) CDF; None without one, or when
    undefined."""
    if "x1" not in reference.cdfs or "x1" not in samples.observables:
        return None
    grid, cdf = reference.cdfs["x1"]
    return defined(w1_to_cdf(samples.observables["x1"], samples.weights(), grid, cdf))


def dihedral_w2(samples: Samples, reference: Reference) -> float | None:
    """W2 on the torus of the joint backbone dihedrals (φ, ψ): exact EMD (POT emd2) with the
    periodic squared cost, seeded subsamples of ≤ 1000 per side; None without ``phi`` and
    ``psi`` in both the samples and the reference."""
    keys = ("phi", "psi")
    if not all(k in samples.observables and k in reference.observables for k in keys):
        return None
    x = np.stack([np.asarray(samples.observables[k], float).ravel() for k in keys], axis=1)
    y = np.stack([np.asarray(reference.observables[k], float).ravel() for k in keys], axis=1)
    return torus_w2(x, y, samples.weights(), None).value


def _reference_positions(samples: Samples, reference: Reference) -> np.ndarray | None:
    ref = reference.observables.get("positions")
    if ref is None:
        return None
    dof = samples.positions.shape[-1]
    ref = np.asarray(ref, float)
    return ref.reshape(-1, dof) if ref.size % dof == 0 else None


def config_emd_w2(samples: Samples, reference: Reference) -> float | None:
    """W2 between configurations (R^dof, squared Euclidean cost): exact EMD (POT emd2) on
    seeded subsamples of ≤ 1000 per side, for low-dimensional systems; None unless the
    reference holds configurations as ``observables["positions"]`` (n, dof)."""
    ref = _reference_positions(samples, reference)
    if ref is None:
        return None
    x = samples.positions.reshape(samples.n, samples.positions.shape[-1])
    return emd_w2(x, ref, samples.weights(), None).value


def config_sliced_w2(samples: Samples, reference: Reference) -> float | None:
    """Sliced W2 between configurations (POT, 128 seeded projections, seeded subsamples of
    ≤ 5000 per side), for high-dimensional systems; None unless the reference holds
    configurations as ``observables["positions"]`` (n, dof)."""
    ref = _reference_positions(samples, reference)
    if ref is None:
        return None
    x = samples.positions.reshape(samples.n, samples.positions.shape[-1])
    return sliced_w2(x, ref, samples.weights(), None).value


def pair_distance_w1(samples: Samples, reference: Reference) -> float | None:
    """Mean over species pairs of the W1 of pooled pair distances (``pair_distance/XY``
    observables; exact 1D W1 by POT on seeded subsamples of ≤ 2000 configurations per
    side; permutation invariant); None when no pair has a reference or any pair is undefined."""
    results = pair_distance_w1_by_pair(samples, reference)
    if not results or any(r.value is None for r in results.values()):
        return None
    return float(np.mean([r.value for r in results.values()]))


def _pair_metric(pair: str):
    def metric(samples: Samples, reference: Reference) -> float | None:
        result = pair_distance_w1_by_pair(samples, reference).get(pair)
        return None if result is None else result.value

    metric.__name__ = metric.__qualname__ = f"pair_distance_w1_{pair}"
    metric.__doc__ = (f"W1 of the pooled {pair} pair distances (``pair_distance/{pair}``):\n"
                      f"exact 1D W1 by POT on seeded subsamples of ≤ 2000 configurations per side;\n"
                      f"permutation invariant; None without a reference for this pair.")
    return metric


pair_distance_w1_AA = _pair_metric("AA")
pair_distance_w1_AB = _pair_metric("AB")
pair_distance_w1_BB = _pair_metric("BB")
pair_distance_w1_AC = _pair_metric("AC")
pair_distance_w1_BC = _pair_metric("BC")
pair_distance_w1_CC = _pair_metric("CC")
