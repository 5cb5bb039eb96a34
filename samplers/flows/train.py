"""Training a Boltzmann generator: maximum likelihood, energy-based KL, and their mixture.

Losses per sample (Noé, Olsson, Köhler & Wu, Science 365, eaaw1147 (2019), eqs. 5–8):

* ML (forward KL, "training by example"): −log q(x) for data x,
* KL (reverse KL, "training by energy"): u(x) + log q(x) for x = flow(base sample) —
  E[u + log q] = KL(q‖p) − log Z, so its minimum is −log Z; its value is reported.

The total is  L = w_ML·ML + w_KL(progress)·KL,  with w_KL ramped linearly from 0 (before
``kl_start``) to ``kl_weight`` (at ``kl_start + kl_ramp``), progress being the larger of
step/steps and the fraction of the setup's allowance spent (budget share or wall seconds,
whichever binds), so the schedule completes however training is stopped. The energy enters through the
system's forces (:func:`~boltzbench.samplers.flows.model.energy_surrogate`), with Noé et al.'s
logarithmic regularization above ``u_high``; every evaluation is charged to the ledger.

Optimizer: Adam (Kingma & Ba, ICLR 2015) with gradient-norm clipping (Pascanu, Mikolov &
Bengio, ICML 2013). Early stopping: every ``eval_every`` steps the held-out losses are
computed (ML on held-out data, KL on a fixed held-out base batch). The criterion is the
held-out reverse KL when the energy term is used — it is what sets the importance-sampling
efficiency, whereas the data may be biased on purpose (e.g. both wells equally) — and the
held-out NLL otherwise; it does not depend on the schedule's weights, so values compare
along the run. The best parameters so far are kept and restored at the end; once the KL
ramp is complete, training stops after ``patience`` evaluations without improvement. Non-finite samples are dropped
from the loss and counted; a step whose gradient is not finite is skipped and counted;
50 skipped steps in a row fail the run with a diagnostic.
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
    u_high: float | None = None


class TrainingFailed(RuntimeError):
    """Training could not proceed (every sample or gradient non-finite)."""


def kl_weight_at(progress: float, s: TrainSettings) -> float:
    """w_KL(progress): 0 before kl_start, linear up to kl_weight at kl_start + kl_ramp."""
    if s.kl_weight <= 0 or progress < s.kl_start:
        return 0.0
    if s.kl_ramp <= 0:
        return s.kl_weight
    return s.kl_weight * min(1.0, (progress - s.kl_start) / s.kl_ramp)


def nll_terms(bg: BoltzmannGenerator, system: System, x: torch.Tensor, u_high: float | None):
    """Per-sample −log q(x) (with gradient) and its finite mask."""
    def base_energy(x0):
        return energy_surrogate(system, x0, u_high)[0]

    per = -bg.log_q(x, base_energy)
    return per, torch.isfinite(per)


def kl_terms(bg: BoltzmannGenerator, system: System, batch, u_high: float | None):
    """Per-sample u_reg(x) + log q(x) (with gradient), finite mask, unregularized values."""
    x, log_q = bg.push_base(batch)
    surrogate, u, _ = energy_surrogate(system, x, u_high)
    per = surrogate + log_q
    return per, torch.isfinite(per), u + log_q.detach().double()


def masked_mean(values: torch.Tensor, finite: torch.Tensor) -> torch.Tensor | None:
    if not finite.any():
        return None
    return values[finite].mean()


def take(batch, idx):
    """Rows ``idx`` of a base batch (a latent tensor or a thermal (x₀, u₀) pair)."""
    if isinstance(batch, tuple):
        return tuple(b[idx] for b in batch)
    return batch[idx]


def batch_len(batch) -> int:
    return len(batch[1]) if isinstance(batch, tuple) else len(batch)


def validation_loss(bg: BoltzmannGenerator, system: System, s: TrainSettings, data_val, base_val) -> dict:
    """Held-out ML and KL (charged evaluations; no gradients) and the stopping criterion."""
    out: dict[str, Any] = {}
    with torch.no_grad():
        if s.ml_weight > 0 and data_val is not None and len(data_val):
            per = -bg.log_q(data_val, lambda x0: energy(system, x0).to(x0.dtype))
            finite = torch.isfinite(per)
            out["val_ml"] = float(per[finite].double().mean()) if finite.any() else math.nan
        if s.kl_weight > 0 and base_val is not None:
            x, log_q = bg.push_base(base_val)
            per = energy(system, x) + log_q.double()
            finite = torch.isfinite(per)
            out["val_kl"] = float(per[finite].mean()) if finite.any() else math.nan
            out["val_kl_finite"] = float(finite.double().mean())
    # the early-stopping criterion: the reverse KL when the energy term is used (it sets the
    # importance-sampling efficiency, and the data may be biased on purpose), else the NLL
    out["val"] = out.get("val_kl", out.get("val_ml", math.nan))
    return out


def train(bg: BoltzmannGenerator, system: System, s: TrainSettings, generator: torch.Generator, *,
          data_train: torch.Tensor | None, data_val: torch.Tensor | None,
          base_train=None, base_val=None,
          should_stop: Callable[[], str | None] = lambda: None,
          budget_progress: Callable[[], float] = lambda: 0.0) -> dict[str, Any]:
    """Train ``bg.couplings`` in place; returns JSON-able diagnostics.

    ``data_train``/``data_val``: configurations for ML (flow dtype/device). ``base_train``:
    a pool of base samples to draw KL batches from (thermal base: (x₀, u₀)); ``None`` draws
    fresh Gaussian latents. ``base_val``: the fixed held-out base batch. ``should_stop``
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
            idx = torch.randint(len(data_train), (s.batch_size,), generator=generator)
            per, finite = nll_terms(bg, system, data_train[idx.to(data_train.device)], s.u_high)
            nonfinite += int((~finite).sum())
            ml = masked_mean(per, finite)
            if ml is not None:
                loss = s.ml_weight * ml
                terms["ml"] = float(ml.detach())
        if w_kl > 0:
            if base_train is None:
                batch = bg.draw_base(s.batch_size, generator)
            else:
                batch = take(base_train, torch.randint(batch_len(base_train), (s.batch_size,), generator=generator))
            per, finite, _ = kl_terms(bg, system, batch, s.u_high)
            nonfinite += int((~finite).sum())
            kl = masked_mean(per, finite)
            if kl is not None:
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
            val = validation_loss(bg, system, s, data_val, base_val)
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
