"""Free-energy differences between metastable states, and their error against a reference.

With normalized weights w_i and state labels s_i, P(A) = Σ_{s_i = A} w_i and
ΔF_AB = F_B − F_A = −ln(P(B)/P(A)) in kT.
"""

from __future__ import annotations

import numpy as np

from boltzbench.contracts import Reference, Samples


def free_energy_difference(states: np.ndarray, weights: np.ndarray, a: int = 0, b: int = 1) -> float | None:
    """ΔF = −ln(P(b)/P(a)) in kT; None when either state carries no weight."""
    states, weights = np.asarray(states).ravel(), np.asarray(weights, float).ravel()
    p_a, p_b = weights[states == a].sum(), weights[states == b].sum()
    if p_a <= 0 or p_b <= 0:
        return None
    return float(-np.log(p_b / p_a))


def delta_f_error(samples: Samples, reference: Reference) -> float | None:
    """|ΔF − ΔF_ref| between states 0 and 1 in kT; None when a state was never visited."""
    if "delta_f" not in reference.exact:
        return None
    estimate = free_energy_difference(samples.states, samples.weights())
    return None if estimate is None else abs(estimate - reference.exact["delta_f"])
