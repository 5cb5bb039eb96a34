"""Wasserstein distances between sampled and reference distributions, with weights.

W_p(μ, ν) = (inf_γ ∫ d(x, y)^p dγ(x, y))^{1/p} over couplings γ of μ and ν (Villani,
*Optimal Transport*, 2009, Def. 6.1). In one dimension the optimal coupling is monotone,
W_p^p = ∫₀¹ |F_μ⁻¹(q) − F_ν⁻¹(q)|^p dq, and for p = 1 this equals ∫ |F_μ(x) − F_ν(x)| dx
(Villani 2009, Remark 2.19; Peyré & Cuturi, *Computational Optimal Transport*, 2019, §2.6).
POT (Flamary et al., JMLR 22(78), 2021) does every transport:

* **1D, exact** (energies, one observable, pooled pair distances): W1 = ∫ |F − G| dx over
  the gaps between the sorted samples of both sides, each gap's F − G summed from the
  nearer end. (POT's quantile-based ``wasserstein_1d`` charges the rounding error of the
  total weight, 1e-8 for float32 weights, at the largest sample: a reweighted flow with
  one overlap at u ≈ 1e18 and zero weight got W1 ≈ 10¹⁰.) W2 by ``ot.wasserstein_1d``,
  which returns W_2², and its square root.
* **Torus T² (dihedral pairs φ, ψ)**: exact EMD (``ot.emd2``, network simplex) with the
  periodic ground cost d²(x, y) = Σ_k min(|x_k − y_k| mod 2π, 2π − |x_k − y_k| mod 2π)² on
  seeded subsamples; the joint (φ, ψ) distribution is compared, not the two marginals.
* **Low-dimensional configurations**: exact EMD with the squared Euclidean cost on seeded
  subsamples (W2).
* **High-dimensional configurations**: sliced W2 (Rabin et al., SSVM 2011; Bonneel et al.,
  JMIV 51, 2015), SW₂ = (E_θ W₂²(θ#μ, θ#ν))^{1/2} over uniform directions θ on the sphere,
  estimated by POT's ``ot.sliced_wasserstein_distance`` with seeded projections.

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

from boltzbench.contracts import Reference, Samples

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


def _normalized(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, float).ravel()
    return w / w.sum()


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


def _take(x: np.ndarray, w: np.ndarray | None, max_n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_n`` rows of ``x`` with weights summing to 1, representing the weighted
    sample: all rows when there are few enough; else a uniform subsample (unweighted
    samples) or, for weighted samples, systematic resampling by weight (distinct rows,
    their multiplicities as weights). Resampling keeps min(max_n, ESS) effective points,
    where a uniform subsample of weighted samples keeps only max_n·ESS/n — about 10 for a
    flow with an ESS fraction of 1 %."""
    weights = _normalized(w, x.shape[0])
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
    """
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    values = np.concatenate([x, y])
    order = np.argsort(values, kind="stable")
    z = values[order]
    jumps = np.concatenate([_normalized(x_weights, x.size), -_normalized(y_weights, y.size)])[order]
    from_left = np.cumsum(jumps)[:-1]                 # F − G on each gap (z_i, z_{i+1})
    from_right = -np.cumsum(jumps[::-1])[::-1][1:]    # the same, as −(mass above the gap)
    upper_half = np.cumsum(np.abs(jumps))[:-1] > 1.0  # the right sum is exact where little lies above
    return float(np.sum(np.abs(np.where(upper_half, from_right, from_left)) * np.diff(z)))


def w2_samples(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
               y_weights: np.ndarray | None = None) -> float:
    """W2 (not squared) between two weighted 1D sample sets, exact.

    W2 = (∫₀¹ |F_x⁻¹(q) − F_y⁻¹(q)|² dq)^{1/2}; POT's ``wasserstein_1d(p=2)`` returns the
    integral (W2²). Between N(μ1, σ1²) and N(μ2, σ2²), W2² = (μ1 − μ2)² + (σ1 − σ2)².

    Parameters
    ----------
    x, y : (n,), (m,) arrays of values.
    x_weights, y_weights : optional non-negative weights (normalized here); uniform if None.
    """
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    a = None if x_weights is None else _normalized(x_weights, x.size)
    b = None if y_weights is None else _normalized(y_weights, y.size)
    return float(np.sqrt(max(float(ot.wasserstein_1d(x, y, a, b, p=2)), 0.0)))


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


# ------------------------------------------------------------------ subsampled EMD


def torus_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared geodesic distances on the flat torus [−π, π)^k: (n, k), (m, k) → (n, m).

    Per angle the distance is min(|Δ| mod 2π, 2π − |Δ| mod 2π), so φ = π − 0.1 and
    φ = −π + 0.1 are 0.2 apart, not 2π − 0.2.
    """
    delta = np.abs(x[:, None, :] - y[None, :, :]) % TWO_PI
    delta = np.minimum(delta, TWO_PI - delta)
    return np.sum(delta * delta, axis=-1)


def _emd_w2(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    value = ot.emd2(a, b, cost, numItermax=10_000_000)
    return float(np.sqrt(max(float(value), 0.0)))


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
    x = np.asarray(x, float).reshape(len(x), -1)
    y = np.asarray(y, float).reshape(len(y), -1)
    xs, a = _take(x, x_weights, max_samples, seed)
    ys, b = _take(y, y_weights, max_samples, seed + 1)
    value = _emd_w2(xs, ys, a, b, torus_cost(xs, ys))
    return MetricResult(value, f"exact EMD (POT emd2), periodic squared cost on T^{x.shape[1]}, "
                               f"seeded subsamples of ≤ {max_samples} per side", len(xs), len(ys))


def emd_w2(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
           y_weights: np.ndarray | None = None, max_samples: int = EMD_MAX_SAMPLES,
           seed: int = SUBSAMPLE_SEED) -> MetricResult:
    """W2 between two weighted point clouds in R^d, exact EMD with squared Euclidean cost.

    Parameters
    ----------
    x, y : (n, d), (m, d) points. x_weights, y_weights : optional weights.
    max_samples : points per side; larger sets are subsampled uniformly with ``seed``.
    """
    x = np.asarray(x, float).reshape(len(x), -1)
    y = np.asarray(y, float).reshape(len(y), -1)
    xs, a = _take(x, x_weights, max_samples, seed)
    ys, b = _take(y, y_weights, max_samples, seed + 1)
    value = _emd_w2(xs, ys, a, b, ot.dist(xs, ys, metric="sqeuclidean"))
    return MetricResult(value, f"exact EMD (POT emd2), squared Euclidean cost in R^{x.shape[1]}, "
                               f"seeded subsamples of ≤ {max_samples} per side", len(xs), len(ys))


def sliced_w2(x: np.ndarray, y: np.ndarray, x_weights: np.ndarray | None = None,
              y_weights: np.ndarray | None = None, n_projections: int = SLICED_PROJECTIONS,
              max_samples: int = SLICED_MAX_SAMPLES, seed: int = SUBSAMPLE_SEED) -> MetricResult:
    """Sliced W2 between two weighted point clouds in R^d (POT, seeded projections).

    SW₂(μ, ν) = (E_θ W₂²(θ#μ, θ#ν))^{1/2}, θ uniform on the unit sphere, estimated with
    ``n_projections`` directions drawn from ``seed``. SW₂ ≤ W₂ (Bonneel et al. 2015).
    """
    x = np.asarray(x, float).reshape(len(x), -1)
    y = np.asarray(y, float).reshape(len(y), -1)
    xs, a = _take(x, x_weights, max_samples, seed)
    ys, b = _take(y, y_weights, max_samples, seed + 1)
    value = float(ot.sliced_wasserstein_distance(xs, ys, a, b, n_projections=n_projections, p=2, seed=seed))
    return MetricResult(value, f"sliced W2 (POT), {n_projections} seeded projections, seeded "
                               f"subsamples of ≤ {max_samples} per side", len(xs), len(ys))


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
    subsampled to at most ``max_configs · n_pairs`` values. Exact 1D W1 (POT).
    """
    out: dict[str, MetricResult] = {}
    weights = samples.weights()
    for key, values in samples.observables.items():
        if not key.startswith(PAIR_PREFIX) or key not in reference.observables:
            continue
        per_config = np.asarray(values, float).reshape(samples.n, -1)
        n_pairs = per_config.shape[1]
        configs, w = _take(per_config, weights, max_configs, seed)
        x = configs.ravel()
        xw = np.repeat(w / n_pairs, n_pairs)
        ref = np.asarray(reference.observables[key], float).ravel()
        ref = ref[subsample(ref.size, max_configs * n_pairs, seed + 1)]
        out[key[len(PAIR_PREFIX):]] = MetricResult(
            w1_samples(x, ref, xw, None),
            f"exact 1D W1 (POT) of pooled pair distances, seeded subsample of ≤ {max_configs} "
            f"configurations per side", int(x.size), int(ref.size))
    return out


# ------------------------------------------------------------------ registered metrics


def energy_w1(samples: Samples, reference: Reference) -> float:
    """W1 of the reduced-energy distribution against the reference samples (POT, exact 1D)."""
    return w1_samples(samples.energies, reference.energies, samples.weights(), None)


def energy_w2(samples: Samples, reference: Reference) -> float:
    """W2 (not squared) of the reduced-energy distribution against the reference samples
    (POT, exact 1D, all samples with their weights)."""
    return w2_samples(samples.energies, reference.energies, samples.weights(), None)


def x1_w1(samples: Samples, reference: Reference) -> float | None:
    """W1 of the x1 marginal against the exact (quadrature) CDF; None without one."""
    if "x1" not in reference.cdfs or "x1" not in samples.observables:
        return None
    grid, cdf = reference.cdfs["x1"]
    return w1_to_cdf(samples.observables["x1"], samples.weights(), grid, cdf)


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
    x = samples.positions.reshape(samples.n, -1)
    return emd_w2(x, ref, samples.weights(), None).value


def config_sliced_w2(samples: Samples, reference: Reference) -> float | None:
    """Sliced W2 between configurations (POT, 128 seeded projections, seeded subsamples of
    ≤ 5000 per side), for high-dimensional systems; None unless the reference holds
    configurations as ``observables["positions"]`` (n, dof)."""
    ref = _reference_positions(samples, reference)
    if ref is None:
        return None
    x = samples.positions.reshape(samples.n, -1)
    return sliced_w2(x, ref, samples.weights(), None).value


def pair_distance_w1(samples: Samples, reference: Reference) -> float | None:
    """Mean over species pairs of the W1 of pooled pair distances (``pair_distance/XY``
    observables; exact 1D W1 by POT on seeded subsamples of ≤ 2000 configurations per
    side; permutation invariant); None when no pair has a reference."""
    results = pair_distance_w1_by_pair(samples, reference)
    if not results:
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
