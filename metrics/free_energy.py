"""Free-energy differences between metastable states, their uncertainties, and their error
against a reference.

States are the system's (``System.states``; ``Samples.states`` holds the labels 0, 1, …,
−1 for none): the double well's left/right wells, alanine dipeptide's φ < 0 / φ > 0 basins.
With normalized weights w_i and labels s_i, P(A) = Σ_{s_i = A} w_i and
ΔF_AB = F_B − F_A = −ln(P(B)/P(A)) in kT.

Uncertainty (standard error of ΔF), by sample type:

* **weighted samples** (flows, population annealing): delta method on the multinomial
  variance of (P(A), P(B)) with the Kish effective sample size n_eff in place of n:
  Var ΔF ≈ (1/P(A) + 1/P(B))/n_eff (the −2 Cov term cancels the −P terms exactly);
* **several unweighted chains** (C ≥ 2): bootstrap over whole chains (Efron & Tibshirani,
  *An Introduction to the Bootstrap*, 1993, ch. 6): chains are independent, so resampling
  them keeps every within-chain correlation, including chains stuck in one state. The
  standard error is undefined (None) when more than 10 % of the resamples miss a state;
* **one chain**: the delta method with n_eff = T/τ_int of the indicator of state B
  (automatic-window τ_int).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from boltzbench.contracts import Reference, Samples, defined, support
from boltzbench.metrics.ess import autocorr_ess, family_kish_ess

BOOTSTRAP_RESAMPLES = 400
BOOTSTRAP_SEED = 20240602
#: Largest fraction of bootstrap resamples allowed to miss a state.
MAX_UNDEFINED = 0.1


@dataclass(frozen=True)
class FreeEnergyEstimate:
    """ΔF = F_b − F_a in kT with its standard error and how it was obtained.

    ``n_eff`` is the effective sample size behind the error bar (for the bootstrap, the one
    it implies: (1/P(a) + 1/P(b))/stderr²).
    """

    value: float | None
    stderr: float | None
    method: str
    n_eff: float | None


def free_energy_difference(states: np.ndarray, weights: np.ndarray, a: int = 0, b: int = 1) -> float | None:
    """ΔF = −ln(P(b)/P(a)) in kT; None when either state carries no weight or the weights
    are undefined (NaN, ±inf, negative or all zero: :func:`boltzbench.contracts.support`)."""
    kept = support(np.asarray(weights, float).ravel(), np.asarray(states).ravel())
    if kept is None:
        return None
    weights, states = kept
    p_a, p_b = weights[states == a].sum(), weights[states == b].sum()
    if p_a <= 0 or p_b <= 0:
        return None
    return float(-np.log(p_b / p_a))


def delta_method_stderr(p_a: float, p_b: float, n_eff: float) -> float:
    """Standard error of −ln(P(b)/P(a)) for multinomial proportions from n_eff draws."""
    return float(np.sqrt((1.0 / p_a + 1.0 / p_b) / n_eff))


def delta_f_estimate(samples: Samples, a: int = 0, b: int = 1,
                     n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> FreeEnergyEstimate:
    """ΔF_ab = F_b − F_a with its standard error (method chosen as in the module docstring)."""
    states = np.asarray(samples.states)
    weights = samples.weights()
    value = free_energy_difference(states, weights, a, b)
    flat = states.ravel()
    p_a, p_b = weights[flat == a].sum(), weights[flat == b].sum()
    if samples.log_weights is not None:
        n_eff = family_kish_ess(samples.log_weights, samples.families)  # resampled copies: one draw
        stderr = None if value is None else delta_method_stderr(p_a, p_b, n_eff)
        return FreeEnergyEstimate(value, stderr, "delta method, Kish n_eff", defined(n_eff))
    if states.ndim < 2:
        states = states.reshape(-1, 1)
    n_steps, n_chains = states.shape[0], int(np.prod(states.shape[1:]))
    states = states.reshape(n_steps, n_chains)
    if n_chains < 2:
        n_eff = autocorr_ess((states == b).astype(float))
        stderr = None if value is None else delta_method_stderr(p_a, p_b, n_eff)
        return FreeEnergyEstimate(value, stderr, "delta method, n_eff = T/τ_int of the state indicator", n_eff)
    if value is None:
        return FreeEnergyEstimate(None, None, f"bootstrap over {n_chains} chains", None)
    counts = np.stack([(states == a).sum(axis=0), (states == b).sum(axis=0)], axis=1).astype(float)
    picks = np.random.default_rng(seed).integers(0, n_chains, size=(n_boot, n_chains))
    totals = counts[picks].sum(axis=1)  # (n_boot, 2)
    ok = (totals > 0).all(axis=1)
    if ok.mean() < 1.0 - MAX_UNDEFINED:
        return FreeEnergyEstimate(value, None, f"bootstrap over {n_chains} chains (a state is missing "
                                               f"from {1 - ok.mean():.0%} of resamples)", None)
    resampled = -np.log(totals[ok, 1] / totals[ok, 0])
    stderr = float(np.std(resampled, ddof=1))
    n_eff = (1.0 / p_a + 1.0 / p_b) / stderr**2 if stderr > 0 else None
    return FreeEnergyEstimate(value, stderr, f"bootstrap over {n_chains} chains", n_eff)


def free_energy_differences(samples: Samples, n_states: int | None = None) -> dict[str, FreeEnergyEstimate]:
    """ΔF from state 0 to every other state k, keyed ``"0→k"``."""
    labels = np.asarray(samples.states)
    n_states = int(labels.max()) + 1 if n_states is None else n_states
    return {f"0→{k}": delta_f_estimate(samples, 0, k) for k in range(1, n_states)}


# ------------------------------------------------------------------ registered metrics


def delta_f(samples: Samples, reference: Reference) -> float | None:
    """ΔF = F_1 − F_0 = −ln(P(1)/P(0)) between metastable states 0 and 1 in kT (weighted
    populations); None until both states are visited."""
    return free_energy_difference(samples.states, samples.weights())


def delta_f_stderr(samples: Samples, reference: Reference) -> float | None:
    """Standard error of ΔF_01 in kT: delta method with Kish n_eff for weighted samples,
    bootstrap over chains (400 seeded resamples) for ≥ 2 chains, delta method with the
    indicator's autocorrelation ESS for one chain; None when undefined."""
    return defined(delta_f_estimate(samples).stderr)


def delta_f_error(samples: Samples, reference: Reference) -> float | None:
    """|ΔF − ΔF_ref| between states 0 and 1 in kT; None when a state was never visited."""
    if "delta_f" not in reference.exact:
        return None
    estimate = free_energy_difference(samples.states, samples.weights())
    return None if estimate is None else abs(estimate - reference.exact["delta_f"])


# These read the samples only: the runner computes them even when a system has no reference.
delta_f.needs_reference = delta_f_stderr.needs_reference = False
