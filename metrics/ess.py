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
* **Population annealing**: the family-based effective population exp(S_f), with the
  family entropy S_f = −Σ_i ν_i ln ν_i over the fractions ν_i of the population that
  descend from each initial replica (Wang, Machta & Katzgraber, PRE 92, 063307 (2015)).
  It is read from the sampler's diagnostics (``schedule``), not from the samples, so it is
  a report quantity rather than a registered metric.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from boltzbench.contracts import Reference, Samples


def kish_ess(log_weights: np.ndarray) -> float:
    """Kish ESS (Σw)²/Σw² of unnormalized log-weights (any shape)."""
    log_w = np.asarray(log_weights, float).ravel()
    w = np.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / np.sum(w * w))


def kish_ess_fraction(log_weights: np.ndarray) -> float:
    """Kish ESS / n, in (0, 1]: 1 for uniform weights, 1/n for a single dominating weight."""
    return kish_ess(log_weights) / np.asarray(log_weights).size


def autocorrelation(trace: np.ndarray) -> np.ndarray:
    """Normalized autocorrelation ρ(t), t = 0..T−1, of a (T, C) trace, averaged over chains."""
    trace = np.asarray(trace, float)
    n_steps = trace.shape[0]
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
    sequence) or ``"geyer_monotone"`` (initial monotone sequence).
    """
    trace = np.asarray(trace, float)
    if trace.ndim == 1:
        trace = trace[:, None]
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
    return float(min(trace.size, trace.size / tau))


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
    """ESS of the samples: Kish (Σw)²/Σw² for weighted ones; for chains C·T/τ_int of the
    reduced-energy trace, τ_int by FFT about the grand mean with Sokal's automatic window
    (c = 5)."""
    if samples.log_weights is not None:
        return kish_ess(samples.log_weights)
    return autocorr_ess(samples.energies)


def ess_geyer(samples: Samples, reference: Reference) -> float:
    """ESS of the samples: Kish for weighted ones; for chains C·T/τ_int of the reduced-energy
    trace, τ_int by FFT about the grand mean with Geyer's (1992) initial positive sequence."""
    if samples.log_weights is not None:
        return kish_ess(samples.log_weights)
    return autocorr_ess(samples.energies, method="geyer")


def ess_fraction(samples: Samples, reference: Reference) -> float:
    """ESS / n in (0, 1]: Kish fraction for weighted samples; for chains the automatic-window
    ESS of the reduced-energy trace divided by C·T."""
    return ess(samples, reference) / samples.n


# These read the samples only: the runner computes them even when a system has no reference.
ess.needs_reference = ess_geyer.needs_reference = ess_fraction.needs_reference = False
