"""Effective sample sizes.

* **Kish** (Kish, *Survey Sampling*, 1965): for weights w, ESS = (Σw)²/Σw²; the ESS
  fraction is ESS/n.
* **Chains**: ESS = C·T/τ_int with τ_int = 1 + 2·Σ_{t≥1} ρ(t). The autocorrelation ρ(t) is
  computed by FFT about the *grand* mean of all chains and the autocovariances are
  averaged over chains (several chains combined into one estimate), so chains stuck in
  different states show up as slow decay instead of being hidden by per-chain means. The
  sum is truncated by one of two estimators:

  - **automatic window** (Sokal, "Monte Carlo methods in statistical mechanics", 1997, §3;
    as in emcee's ``integrated_time``, Foreman-Mackey et al. 2013): the smallest window
    M ≥ c·τ_int(M), c = 5;
  - **initial positive sequence** (Geyer, "Practical Markov chain Monte Carlo", Statistical
    Science 7, 473 (1992), §3.3): with Γ_k = ρ(2k) + ρ(2k+1), τ_int = −1 + 2·Σ_{k<K} Γ_k
    where K is the first k with Γ_k ≤ 0; optionally the initial *monotone* sequence, which
    also replaces each Γ_k by min(Γ_0, …, Γ_k).

  For an AR(1) process with coefficient ρ, τ_int = (1 + ρ)/(1 − ρ).
* **Families** (resampled copies, population annealing): samples that descend from one
  ancestor draw carry one label (``Samples.families``) and count as one draw. The ESS is
  the Kish ESS over family totals, (Σ_f W_f)²/Σ_f W_f² with W_f = Σ_{i∈f} w_i; for one
  equal-weight population with family fractions ν_f it is the inverse Simpson index
  1/Σ_f ν_f² = R/ρ_t, the family-based effective population of Wang, Machta & Katzgraber,
  PRE 92, 063307 (2015) (ρ_t = R·Σν_f²), never above exp(S_f) with the family entropy
  S_f = −Σ_f ν_f ln ν_f. Without families it is the plain Kish ESS. The registered metrics
  ``ess``, ``ess_geyer`` and ``ess_fraction`` use it, so a population that collapsed onto
  a few ancestors is never counted as many draws. exp(S_f) at the last step is also read
  from the sampler's diagnostics (``schedule``) as a report quantity.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from boltzbench.contracts import Reference, Samples, defined, support, weights_from_log


def kish_ess(log_weights: np.ndarray) -> float:
    """Kish ESS (Σw)²/Σw² of unnormalized log-weights (any shape).

    A log-weight of −inf is a zero weight; NaN or +inf log-weights, all −inf, or none give
    NaN (undefined; :func:`boltzbench.contracts.support`).
    """
    kept = support(weights_from_log(log_weights))
    if kept is None:
        return float("nan")
    w = kept[0]  # normalized: Σw = 1
    return float(1.0 / np.sum(w * w))


def kish_ess_fraction(log_weights: np.ndarray) -> float:
    """Kish ESS / n, in (0, 1]: 1 for uniform weights, 1/n for a single dominating weight;
    n counts zero weights too. NaN when undefined (:func:`kish_ess`)."""
    n = np.asarray(log_weights).size
    return kish_ess(log_weights) / n if n else float("nan")


def family_kish_ess(log_weights: np.ndarray | None, families: np.ndarray | None = None) -> float:
    """Kish ESS over families: (Σ_f W_f)²/Σ_f W_f², W_f the summed weight of family f.

    ``families`` (same size as ``log_weights``) labels samples that descend from one
    ancestor draw; ``None`` gives the plain :func:`kish_ess`. ``log_weights`` ``None`` means
    equal weights; then the ESS is the inverse Simpson index 1/Σ_f ν_f² of the family
    fractions ν_f (Wang, Machta & Katzgraber, PRE 92, 063307 (2015)). Non-finite log-weights
    follow :func:`kish_ess`'s rules (−inf: a zero weight).
    """
    if families is None:
        return kish_ess(log_weights)
    labels = np.asarray(families).ravel()
    log_w = np.zeros(labels.size) if log_weights is None else np.asarray(log_weights, float).ravel()
    if log_w.size != labels.size:
        raise ValueError(f"families: {labels.size} labels for {log_w.size} log-weights; need one per sample")
    finite = np.isfinite(log_w)
    if not finite.any() or not (finite | (log_w == -np.inf)).all():
        return kish_ess(log_w)  # no weight at all, or NaN/+inf: kish_ess says what that is
    w = np.exp(log_w - log_w[finite].max())
    totals = np.bincount(np.unique(labels, return_inverse=True)[1].ravel(), weights=w)
    with np.errstate(divide="ignore"):
        return kish_ess(np.log(totals))  # a family of zero weights: log W_f = −inf, legal


def autocorrelation(trace: np.ndarray) -> np.ndarray:
    """Normalized autocorrelation ρ(t), t = 0..T−1, of a (T, C) trace, averaged over chains;
    NaN everywhere when the trace holds a NaN or ±inf value (undefined)."""
    trace = np.asarray(trace, float)
    n_steps = trace.shape[0]
    if support(None, trace.ravel()) is None:
        return np.full(n_steps, np.nan)
    scale = np.abs(trace).max()
    if scale > 0:  # ρ is scale-free: work at O(1) so that squares neither overflow nor underflow
        trace = trace / scale
    y = trace - trace.mean()
    size = 1 << (2 * n_steps - 1).bit_length()
    spectrum = np.fft.rfft(y, n=size, axis=0)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=0)[:n_steps].mean(axis=1)
    if acov[0] <= 0:
        return np.ones(n_steps)  # a constant trace: no information, fully correlated
    return acov / acov[0]


def integrated_autocorr_time(trace: np.ndarray, c: float = 5.0) -> float:
    """τ_int of a (T, C) trace with Sokal's automatic window (see module docstring).

    If no window M < T satisfies M ≥ c·τ(M), the trace is too short to resolve τ and the
    value at M = T − 1 is returned (an underestimate of τ).
    """
    rho = autocorrelation(trace)
    taus = 2.0 * np.cumsum(rho) - 1.0  # τ(M) = 1 + 2·Σ_{t=1}^{M} ρ(t)
    windows = np.arange(len(taus))
    ok = windows >= c * taus
    m = int(np.argmax(ok)) if ok.any() else len(taus) - 1
    return float(max(taus[m], 1.0 / (trace.shape[0] * trace.shape[1])))


def geyer_autocorr_time(trace: np.ndarray, monotone: bool = False) -> float:
    """τ_int of a (T, C) trace by Geyer's initial positive (or monotone) sequence.

    Γ_k = ρ(2k) + ρ(2k+1) for k = 0, 1, …; the sum stops before the first Γ_k ≤ 0 and
    τ_int = −1 + 2·Σ Γ_k (Geyer 1992, §3.3; see the module docstring). With ``monotone``
    the Γ_k are first made non-increasing. A constant trace (ρ ≡ 1) gives τ = 2T − 1.
    """
    trace = np.asarray(trace, float)
    rho = autocorrelation(trace)
    if np.isnan(rho).any():
        return float("nan")  # a non-finite trace
    pairs = len(rho) // 2
    if pairs == 0:
        return 1.0
    gamma = rho[0:2 * pairs:2] + rho[1:2 * pairs:2]
    positive = gamma > 0
    k = int(np.argmin(positive)) if not positive.all() else pairs
    head = gamma[:k]
    if monotone:
        head = np.minimum.accumulate(head)
    tau = -1.0 + 2.0 * float(head.sum())
    return float(max(tau, 1.0 / trace.size))


def autocorr_ess(trace: np.ndarray, method: str = "window") -> float:
    """ESS = C·T/τ_int of a (T, C) trace, capped at C·T.

    ``method``: ``"window"`` (Sokal's automatic window), ``"geyer"`` (initial positive
    sequence) or ``"geyer_monotone"`` (initial monotone sequence). NaN (undefined) for an
    empty trace or one with a NaN or ±inf value (:func:`boltzbench.contracts.support`).
    """
    trace = np.asarray(trace, float)
    if trace.ndim == 1:
        trace = trace[:, None]
    if support(None, trace.ravel()) is None:
        return float("nan")
    if trace.shape[0] < 2:
        return float(trace.size)
    if method == "window":
        tau = integrated_autocorr_time(trace)
    elif method == "geyer":
        tau = geyer_autocorr_time(trace)
    elif method == "geyer_monotone":
        tau = geyer_autocorr_time(trace, monotone=True)
    else:
        raise ValueError(f"method: unknown {method!r}; valid: window, geyer, geyer_monotone")
    return float(min(trace.size, trace.size / tau)) if math.isfinite(tau) else float("nan")


def family_effective_population(diagnostics: dict[str, Any]) -> float | None:
    """exp(S_f) at the last annealing step, from population-annealing diagnostics.

    ``diagnostics["schedule"]`` is a list of {"beta", "ess_fraction", "family_entropy",
    "n_families"}; None when it is absent or has no family entropy.
    """
    schedule = diagnostics.get("schedule") if isinstance(diagnostics, dict) else None
    if not schedule or not isinstance(schedule, list):
        return None
    entropy = schedule[-1].get("family_entropy") if isinstance(schedule[-1], dict) else None
    return None if entropy is None else float(math.exp(entropy))


# ------------------------------------------------------------------ registered metrics


def ess(samples: Samples, reference: Reference) -> float:
    """ESS of the samples: Kish (Σw)²/Σw² for weighted ones, over family totals when the
    samples carry families (:func:`family_kish_ess`); for chains C·T/τ_int of the
    reduced-energy trace, τ_int by FFT about the grand mean with Sokal's automatic window
    (c = 5)."""
    if samples.log_weights is not None or samples.families is not None:
        return defined(family_kish_ess(samples.log_weights, samples.families))
    return defined(autocorr_ess(samples.energies))


def ess_geyer(samples: Samples, reference: Reference) -> float:
    """ESS of the samples: Kish for weighted ones (over family totals with families); for
    chains C·T/τ_int of the reduced-energy trace, τ_int by FFT about the grand mean with
    Geyer's (1992) initial positive sequence."""
    if samples.log_weights is not None or samples.families is not None:
        return defined(family_kish_ess(samples.log_weights, samples.families))
    return defined(autocorr_ess(samples.energies, method="geyer"))


def ess_fraction(samples: Samples, reference: Reference) -> float:
    """ESS / n in (0, 1]: Kish fraction for weighted samples (over family totals with
    families, so resampled copies lower it); for chains the automatic-window ESS of the
    reduced-energy trace divided by C·T. None when the ESS is undefined."""
    value = ess(samples, reference)
    return None if value is None else value / samples.n


# These read the samples only: the runner computes them even when a system has no reference.
ess.needs_reference = ess_geyer.needs_reference = ess_fraction.needs_reference = False
