"""Training a Boltzmann generator: maximum likelihood, energy-based KL, and their mixture.

Losses per sample (Noé, Olsson, Köhler & Wu, Science 365, eaaw1147 (2019), eqs. 5–8):

* ML (forward KL, "training by example"): −log q(x) for data x,
* KL (reverse KL, "training by energy"): u(x) + log q(x) for x = flow(base sample) —
  E[u + log q] = KL(q‖p) − log Z, so its minimum is −log Z; its value is reported.

The total is  L = w_ML·ML + w_KL(progress)·KL,  with w_KL ramped linearly from 0 (before
``kl_start``) to ``kl_weight`` (at ``kl_start + kl_ramp``), progress being the larger of
step/steps and the fraction of the setup's allowance spent (budget share or wall seconds,
whichever binds), so the schedule completes however training is stopped. The energy enters through the
system's forces (:func:`~boltzbench.samplers.flows.model.energy_surrogate`), each row's
force clipped at ``force_clip`` times the batch's median; every evaluation is charged.

Optimizer: Adam (Kingma & Ba, ICLR 2015) with gradient-norm clipping (Pascanu, Mikolov &
Bengio, ICML 2013). Early stopping: every ``eval_every`` steps the held-out losses are
computed (ML on held-out data; KL and an importance-weighted bound on log Z on a fixed
held-out base batch). The criterion is that bound (:func:`importance_weighted_bound`)
when the energy term is used — it measures the flow as an importance-sampling proposal,
whereas the data may be biased on purpose (e.g. both wells equally) — and the held-out
NLL otherwise; it does not depend on the schedule's weights, so values compare along the
run. The best parameters so far are kept and restored at the end; once the KL ramp is
complete, training stops after ``patience`` evaluations without improvement. Non-finite
samples are dropped from the loss (:func:`without_nonfinite_rows`) and counted; a step
whose gradient is not finite is skipped and counted; 50 skipped steps in a row fail the
run with a diagnostic.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from boltzbench.contracts import System
from boltzbench.samplers.flows.base import GaussianBase
from boltzbench.samplers.flows.model import BoltzmannGenerator, energy, energy_surrogate

MAX_SKIPPED_IN_A_ROW = 50
IW_GROUP = 8  #: samples per group of the held-out importance-weighted bound


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    clip_norm: float = 10.0
    ml_weight: float = 1.0
    kl_weight: float = 1.0
    kl_start: float = 0.2
    kl_ramp: float = 0.3
    eval_every: int = 100
    patience: int = 10
    force_clip: float | None = 10.0


class TrainingFailed(RuntimeError):
    """Training could not proceed (every sample or gradient non-finite)."""


def kl_weight_at(progress: float, s: TrainSettings) -> float:
    """w_KL(progress): 0 before kl_start, linear up to kl_weight at kl_start + kl_ramp."""
    if s.kl_weight <= 0 or progress < s.kl_start:
        return 0.0
    if s.kl_ramp <= 0:
        return s.kl_weight
    return s.kl_weight * min(1.0, (progress - s.kl_start) / s.kl_ramp)


def without_nonfinite_rows(per_sample: Callable[[Any], torch.Tensor], batch) -> tuple[torch.Tensor | None, int]:
    """Per-sample losses of the finite rows of ``batch``, and how many rows were dropped.

    A dropped row cannot simply be masked: its NaN activations meet a zero upstream
    gradient in every weight's gradient (0·NaN = NaN), which would poison the whole step.
    So when a row is non-finite the loss is recomputed on the finite rows alone (for the
    KL term this evaluates, and charges, their energies again).
    """
    per = per_sample(batch)
    finite = torch.isfinite(per)
    n_bad = int((~finite).sum())
    if n_bad == 0:
        return per, 0
    if n_bad == len(per):
        return None, n_bad
    return per_sample(take(batch, finite)), n_bad


def nll_terms(bg: BoltzmannGenerator, system: System, x: torch.Tensor, force_clip: float | None):
    """Per-sample −log q(x) (with gradient) of the finite rows of data x, and the rows dropped."""
    def base_energy(x0):
        return energy_surrogate(system, x0, force_clip)[0]

    return without_nonfinite_rows(lambda rows: -bg.log_q(rows, base_energy), x)


def kl_terms(bg: BoltzmannGenerator, system: System, batch, force_clip: float | None):
    """Per-sample u(x) + log q(x) (with gradient; forces clipped, see ``energy_surrogate``)
    for x = flow(base batch), finite rows only, and the rows dropped."""
    def per_sample(rows):
        x, log_q = bg.push_base(rows)
        return energy_surrogate(system, x, force_clip)[0] + log_q

    return without_nonfinite_rows(per_sample, batch)


def take(batch, idx):
    """Rows ``idx`` of a base batch (a latent tensor or a thermal (x₀, u₀) pair)."""
    if isinstance(batch, tuple):
        return tuple(b[idx] for b in batch)
    return batch[idx]


def batch_len(batch) -> int:
    return len(batch[1]) if isinstance(batch, tuple) else len(batch)


def importance_weighted_bound(log_w: torch.Tensor, k: int) -> float:
    """E[log (1/k) Σ_{i≤k} w_i] ≤ log Z, averaged over consecutive groups of k samples.

    Burda, Grosse & Salakhutdinov (ICLR 2016): k = 1 is −(reverse KL) + const, k → ∞ is log Z.
    A small k keeps the bound sensitive to the flow's quality (its gap to log Z shrinks
    like the weights' variance over k) while a rare sample on overlapping atoms, whose
    weight is zero, costs only a little in its group — under the reverse KL one such
    sample at u = 10⁷ decides the comparison.
    """
    k = min(k, len(log_w))  # a held-out batch smaller than one group is one group
    n = len(log_w) // k * k
    groups = log_w[:n].reshape(-1, k)
    return float((torch.logsumexp(groups, 1) - math.log(k)).mean())


def validation_loss(bg: BoltzmannGenerator, system: System, s: TrainSettings, data_val, base_val,
                    val_weights: torch.Tensor | None = None) -> dict:
    """Held-out ML (weighted by ``val_weights`` when the data are balanced) and KL (charged
    evaluations; no gradients) and the stopping criterion."""
    out: dict[str, Any] = {}
    with torch.no_grad():
        if s.ml_weight > 0 and data_val is not None and len(data_val):
            per = -bg.log_q(data_val, lambda x0: energy(system, x0).to(x0.dtype)).double()
            finite = torch.isfinite(per)
            w = torch.ones_like(per) if val_weights is None else val_weights.to(per)
            out["val_ml"] = float((w * per)[finite].sum() / w[finite].sum()) if finite.any() else math.nan
        if s.kl_weight > 0 and base_val is not None:
            x, log_q = bg.push_base(base_val)
            log_w = -energy(system, x) - log_q.double()
            finite = torch.isfinite(log_w)
            out["val_kl"] = float(-log_w[finite].mean()) if finite.any() else math.nan
            out["val_finite"] = float(finite.double().mean())
            log_w = torch.where(finite, log_w, torch.full_like(log_w, -math.inf))  # lost: weight zero
            out["val_iw_bound"] = importance_weighted_bound(log_w, IW_GROUP)
    # the early-stopping criterion: −(importance-weighted bound) with the energy term, else
    # the held-out NLL (the data may be biased on purpose, so the NLL is not used with the KL)
    out["val"] = -out["val_iw_bound"] if "val_iw_bound" in out else out.get("val_ml", math.nan)
    return out


def train(bg: BoltzmannGenerator, system: System, s: TrainSettings, generator: torch.Generator, *,
          data_train: torch.Tensor | None, data_val: torch.Tensor | None,
          base_train=None, base_val=None, data_weights: torch.Tensor | None = None,
          val_weights: torch.Tensor | None = None,
          should_stop: Callable[[], str | None] = lambda: None,
          budget_progress: Callable[[], float] = lambda: 0.0) -> dict[str, Any]:
    """Train ``bg.couplings`` in place; returns JSON-able diagnostics.

    ``data_train``/``data_val``: configurations for ML (flow dtype/device). ``base_train``:
    a pool of base samples to draw KL batches from (thermal base: (x₀, u₀)); ``None`` draws
    fresh Gaussian latents. ``base_val``: the fixed held-out base batch. ``data_weights``
    (``val_weights``): relative probabilities of drawing each training (weights of each
    held-out) configuration; uniform when None. ``should_stop``
    returns a reason (budget, wall clock) or None.
    """
    params = [p for p in bg.couplings.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=s.lr, foreach=True)
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    best_val, best_state, best_step, bad = math.inf, None, None, 0
    skipped = skipped_in_a_row = nonfinite = 0
    stopped_by, step = "steps", 0
    use_ml = s.ml_weight > 0 and data_train is not None and len(data_train) > 0
    for step in range(s.steps):
        reason = should_stop()
        if reason:
            stopped_by = reason
            break
        progress = max(step / s.steps, budget_progress())
        w_kl = kl_weight_at(progress, s)
        terms, loss = {}, None
        if use_ml:
            if data_weights is None:
                idx = torch.randint(len(data_train), (s.batch_size,), generator=generator, device=generator.device)
            else:
                idx = torch.multinomial(data_weights.to(generator.device), s.batch_size, replacement=True,
                                        generator=generator)
            per, dropped = nll_terms(bg, system, data_train[idx.to(data_train.device)], s.force_clip)
            nonfinite += dropped
            if per is not None:
                ml = per.mean()
                loss = s.ml_weight * ml
                terms["ml"] = float(ml.detach())
        if w_kl > 0:
            if base_train is None:
                batch = bg.draw_base(s.batch_size, generator)
            else:
                batch = take(base_train, torch.randint(batch_len(base_train), (s.batch_size,), generator=generator,
                                                       device=generator.device))
            per, dropped = kl_terms(bg, system, batch, s.force_clip)
            nonfinite += dropped
            if per is not None:
                kl = per.mean()
                loss = w_kl * kl if loss is None else loss + w_kl * kl
                terms["kl"] = float(kl.detach())
        if loss is None or not torch.isfinite(loss):
            norm = torch.tensor(math.nan)
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, s.clip_norm)
        if not torch.isfinite(norm):
            skipped += 1
            skipped_in_a_row += 1
            opt.zero_grad(set_to_none=True)
            if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise TrainingFailed(f"{skipped_in_a_row} training steps in a row had no finite loss or "
                                     f"gradient (at step {step}; {nonfinite} non-finite samples so far): "
                                     f"check the energy, the data and the learning rate")
            continue
        skipped_in_a_row = 0
        opt.step()
        if (step + 1) % s.eval_every == 0:
            val = validation_loss(bg, system, s, data_val, base_val, val_weights)
            history.append({"step": step + 1, "progress": round(progress, 4), "kl_weight": w_kl,
                            **terms, **val})
            schedule_done = s.kl_weight <= 0 or progress >= s.kl_start + s.kl_ramp
            if math.isfinite(val["val"]) and val["val"] < best_val - 1e-4 * abs(best_val if math.isfinite(best_val) else 0.0):
                best_val, best_step, bad = val["val"], step + 1, 0
                best_state = copy.deepcopy(bg.couplings.state_dict())
            elif schedule_done:  # patience runs only once the loss has its final weights
                bad += 1
                if bad >= s.patience:
                    stopped_by = "early_stopping"
                    step += 1
                    break
    else:
        step = s.steps
    if best_state is not None:
        bg.couplings.load_state_dict(best_state)
    return {
        "steps": step,
        "stopped_by": stopped_by,
        "best_step": best_step,
        "best_val": best_val if math.isfinite(best_val) else None,
        "skipped_steps": skipped,
        "nonfinite_samples": nonfinite,
        "train_wall_s": time.perf_counter() - started,
        "history": history,
    }


def base_is_gaussian(bg: BoltzmannGenerator) -> bool:
    return isinstance(bg.base, GaussianBase)
