"""Effective sample sizes.

* Kish (1965): for normalized weights w, ESS = (Σw)²/Σw² = 1/Σw².
* Chains: ESS = C·T/τ_int with τ_int = 1 + 2·Σ_{t=1}^{M} ρ(t). The autocorrelation ρ(t) is
  computed by FFT about the *grand* mean of all chains and averaged over chains, so chains
  stuck in different states show up as slow decay instead of being hidden by per-chain
  means. The window M is Sokal's automatic window, the smallest M ≥ c·τ_int(M) with c = 5
  (Sokal, "Monte Carlo methods in statistical mechanics", 1997, §3; as in emcee's
  ``integrated_time``, Foreman-Mackey et al. 2013).
"""

from __future__ import annotations

import numpy as np

from boltzbench.contracts import Reference, Samples


def kish_ess(log_weights: np.ndarray) -> float:
    """Kish ESS (Σw)²/Σw² of unnormalized log-weights (any shape)."""
    log_w = np.asarray(log_weights, float).ravel()
    w = np.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / np.sum(w * w))


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


def autocorr_ess(trace: np.ndarray) -> float:
    """ESS = C·T/τ_int of a (T, C) trace, capped at C·T."""
    trace = np.asarray(trace, float)
    if trace.shape[0] < 2:
        return float(trace.size)
    return float(min(trace.size, trace.size / integrated_autocorr_time(trace)))


def ess(samples: Samples, reference: Reference) -> float:
    """ESS of the samples: Kish for weighted ones, C·T/τ_int of the energy trace for chains."""
    if samples.log_weights is not None:
        return kish_ess(samples.log_weights)
    return autocorr_ess(samples.energies)
