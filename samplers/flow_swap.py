"""``flow_swap``: swap Monte Carlo chains that also make learned global moves with a trained flow.

Jung, Biroli & Berthier (Mach. Learn.: Sci. Technol. 5, 035053 (2024)) find swap Monte Carlo
far ahead of normalizing flows on a glass former and point to combinations of learned and
physical moves. Here one Markov chain per walker mixes, at random with fixed probabilities
(a state-independent mixture of invariant kernels is invariant; Tierney, Ann. Statist. 22,
1701 (1994)):

* with probability ``p_flow``, a **flow move** (:class:`~boltzbench.samplers.flows.flow_move.FlowMove`):
  independence Metropolis–Hastings with the flow density in the acceptance (Gaussian base),
  or, with a thermal base, a learned replica exchange with a partner walker at the base
  temperature (Invernizzi et al., J. Phys. Chem. Lett. 13, 11643 (2022)) — the exact form of
  "map a high-temperature configuration onto the target": the partners are sampled by the
  same swap-MC sweeps at β_base, so the flow's base samples come from an equilibrium chain
  and the exchange gives each side's configuration to the other;
* otherwise a **swap-MC sweep** (:class:`~boltzbench.samplers.moves.SwapMove`: N attempted
  displacements and identity swaps per walker, at each walker's β).

Setup (charged): the flow is trained by the ``flow`` sampler's own setup with the
parameters ``flow`` — the data it generates itself (``data_sampler``: MD, MC, or a registered
sampler such as ``swap_mc``), the thermal base's chains, ML/KL training. Warm-up (a fraction
``warmup`` of the budget, charged, samples discarded): the sweeps' displacement half-width is
tuned per temperature; with ``refine_steps`` > 0 the flow is then trained on the second half
of the warm-up states (``refine_loss``: maximum likelihood on the targets' states and/or the
energy-based KL from the partners' — equilibrium draws at the base temperature, which the
base pool of the setup's short MD chains is not), charged, and frozen. In production
nothing adapts, so every chain is exactly Markov. Snapshots carry the target walkers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch

from boltzbench.contracts import Budget, ParameterError, Snapshot, System, param, require
from boltzbench.samplers.chains import ChainSampler, ChainTrace
from boltzbench.samplers.flows.base import GaussianBase
from boltzbench.samplers.flows.flow_move import FlowMove
from boltzbench.samplers.flows.sampler import FlowSampler
from boltzbench.samplers.flows.train import TrainSettings, train
from boltzbench.samplers.moves import (DISP_ACCEPTED, DISP_ATTEMPTS, SWAP_ACCEPTED, SWAP_ATTEMPTS, SwapMove,
                                       Walkers, check_swap_pairs, check_swap_system, prepare, tune)
from boltzbench.samplers.swap_mc import TUNE_WINDOW

#: flow-sampler parameters that flow_swap sets itself or that do not apply to a trained proposal
REFINE_LOSSES = ("ml", "kl", "ml+kl")
FLOW_SAMPLING_ONLY = ("mode", "sample_batch", "n_chains", "thin", "p_local", "local_step")


@dataclass
class FlowSwap(ChainSampler):
    """Swap-MC chains mixed with flow moves (independence MH or learned replica exchange)."""

    name: ClassVar[str] = "flow_swap"
    description: ClassVar[str] = ("swap Monte Carlo chains mixed with moves of a trained flow: independence "
                                  "Metropolis-Hastings (Gaussian base) or learned replica exchange with a "
                                  "partner at the base temperature (thermal base); training charged to setup")

    flow: dict | None = param(None, "parameters of the 'flow' sampler whose setup trains the proposal (its "
                                    "architecture, base, data and training settings); None: its defaults")
    p_flow: float = param(0.1, "probability that a step is a flow move instead of a swap-MC sweep, in [0, 1]")
    p_swap: float = param(0.2, "sweeps: probability that an attempted move swaps the identities of two "
                               "particles, in [0, 1]")
    swap_pairs: list[str] | None = param(None, "sweeps: the species pairs that may swap, e.g. ['AC', 'BC']; "
                                               "None: every pair")
    step: float = param(0.1, "sweeps: initial displacement half-width δ (tuned in warm-up, per temperature)")
    target_acceptance: float = param(0.4, "displacement acceptance the warm-up tunes δ towards, in (0, 1)")
    warmup: float = param(0.1, "fraction of the budget spent warming up after setup (samples discarded), in [0, 1)")
    refine_steps: int = param(0, "after warm-up: training steps of the flow on the chains' warm-up states "
                                 "(refine_loss; charged), then frozen; 0: no refinement")
    refine_loss: str = param("ml+kl", "refinement loss: 'ml' (maximum likelihood on the targets' states), 'kl' "
                                      "(energy-based KL from the partners' states, or latent draws) or 'ml+kl'")
    thin: int = param(1, "keep one state of every chain every `thin` steps (a step is a sweep or a flow move)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("p_flow", "p_swap"):
            value = getattr(self, field)
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0,
                    field, f"must be a probability in [0, 1], got {value!r}")
        self.swap_pairs = check_swap_pairs(self.swap_pairs)
        require(self.step > 0, "step", f"must be > 0, got {self.step}")
        require(0 < self.target_acceptance < 1, "target_acceptance",
                f"must be in (0, 1), got {self.target_acceptance}")
        require(0 <= self.warmup < 1, "warmup", f"must be in [0, 1), got {self.warmup}")
        require(self.refine_steps >= 0, "refine_steps", f"must be >= 0, got {self.refine_steps}")
        require(self.refine_loss in REFINE_LOSSES, "refine_loss",
                f"must be one of {', '.join(map(repr, REFINE_LOSSES))}, got {self.refine_loss!r}")
        require(self.refine_steps == 0 or self.warmup > 0, "refine_steps",
                "refines on warm-up states: set warmup > 0 (or refine_steps = 0)")
        self._flow_sampler()  # a bad flow parameter fails here, named flow.<field>

    def _flow_sampler(self) -> FlowSampler:
        params = dict(self.flow or {})
        bad = sorted(set(params) & set(FLOW_SAMPLING_ONLY))
        require(not bad, f"flow.{bad[0] if bad else ''}",
                f"flow_swap makes its own chains: leave {', '.join(bad)} out of flow")
        try:
            sampler = FlowSampler(**params)
        except ParameterError as exc:
            raise ParameterError(f"flow.{exc.field}", exc.message) from exc
        except TypeError as exc:  # an unknown field
            valid = ", ".join(f.name for f in FlowSampler.parameters() if f.name not in FLOW_SAMPLING_ONLY)
            raise ParameterError("flow", f"{exc}; valid fields: {valid}") from exc
        require(sampler.architecture != "equivariant_flow_matching", "flow.architecture",
                "flow_swap needs a coupling flow ('mlp' or 'periodic_equivariant'): its moves invert the "
                "flow in closed form")
        return sampler

    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        check_swap_system(system, self.p_swap, who="flow_swap")
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        flow_sampler = self._flow_sampler()
        if flow_sampler.device != "cpu" and not torch.cuda.is_available():
            raise RuntimeError(f"flow.device {flow_sampler.device!r} requested but torch.cuda.is_available() is False")
        bg, info = flow_sampler.setup(system, budget, generator)
        bg.eval()
        if isinstance(bg.base, GaussianBase):  # the proposal: the defensive mixture, as the flow sampler's
            bg.base = bg.base.with_defensive(flow_sampler.defensive, flow_sampler.defensive_scale)
        flow_move = FlowMove(bg)
        sweep = SwapMove(self.step, self.p_swap, swap_pairs=self.swap_pairs)
        prepare(sweep, system)
        c = self.n_chains
        x = system.sample_initial(c, generator)
        beta = torch.ones(c, dtype=torch.float64)
        if flow_move.exchange:  # partners at the base temperature, started from the base's chains
            base_x = bg.base.x.to(dtype=x.dtype, device=x.device)
            x = torch.cat([x, base_x[torch.arange(c) % len(base_x)]])
            beta = torch.cat([beta, torch.full((c,), bg.base.beta, dtype=torch.float64)])
        walkers = Walkers.start(system, x, beta)
        walkers.u = walkers.u.to(torch.float64)
        groups = (torch.arange(len(walkers)) >= c).long()  # 0: targets, 1: partners
        warming, steps, warmup_steps, warm_states = self.warmup > 0, 0, 0, []
        refined, sampling_from = None, budget.used(ledger)  # the warm-up share counts from here, after setup
        while not budget.exhausted(ledger):
            if float(torch.rand((), generator=generator, device=generator.device)) < self.p_flow:
                flow_move(walkers, system, generator)
            else:
                sweep(walkers, system, generator)
            steps += 1
            if warming:
                if self.refine_steps:
                    warm_states.append((walkers.x.clone(), walkers.u.clone()))
                if steps % TUNE_WINDOW == 0:
                    tune(sweep, groups, 2, self.target_acceptance)
                if budget.used(ledger) - sampling_from >= self.warmup:  # production: everything frozen
                    if self.refine_steps:
                        burned_in = warm_states[len(warm_states) // 2:]  # the first half is burn-in
                        refined = self._refine(bg, flow_sampler, system, torch.cat([x for x, _ in burned_in]),
                                               torch.cat([u for _, u in burned_in]), groups, generator)
                        flow_move, warm_states = FlowMove(bg), []
                    warming, warmup_steps = False, steps
                    sweep.reset_stats()
                    flow_move.reset_stats()
                    flow_move.nonfinite = 0
                continue
            trace.step(walkers.x[:c], walkers.u[:c])
            if trace.ready and schedule.due(ledger):
                yield trace.snapshot(ledger, self._diagnostics(flow_move, sweep, c, steps - warmup_steps,
                                                               warmup_steps, info, refined))
        if warming:
            raise RuntimeError(f"the budget ended during warm-up (warmup = {self.warmup} of the budget), "
                               f"before any production step; raise the budget")
        if not trace.ready:
            trace.snapshot(ledger, {})  # raises: the budget ended before the first kept sample

    def _refine(self, bg, flow_sampler: FlowSampler, system: System, x: torch.Tensor, u: torch.Tensor,
                groups: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """Train the flow on the chains' own warm-up states (x, u) with ``refine_loss``: maximum
        likelihood on the targets' states, and/or the energy-based KL from the partners' states
        (thermal base: equilibrium draws at β_base, which a base pool of short MD chains need not
        be) or from latent draws (Gaussian base). Charged as it goes."""
        is_partner = groups.repeat(len(x) // len(groups)).bool()
        settings = TrainSettings(steps=self.refine_steps, batch_size=flow_sampler.batch_size, lr=flow_sampler.lr,
                                 clip_norm=flow_sampler.clip_norm, ml_weight=float("ml" in self.refine_loss),
                                 kl_weight=float("kl" in self.refine_loss), kl_start=0.0, kl_ramp=0.0,
                                 eval_every=self.refine_steps + 1, force_clip=flow_sampler.force_clip)
        base_train = (x[is_partner].to(bg.device), u[is_partner].to(bg.device)) if is_partner.any() else None
        bg.train()
        out = train(bg, system, settings, generator, data_train=x[~is_partner].to(dtype=bg.dtype, device=bg.device),
                    data_val=None, base_train=base_train)
        bg.eval()
        return {"steps": out["steps"], "target_states": int((~is_partner).sum()),
                "partner_states": int(is_partner.sum()), "wall_s": out["train_wall_s"],
                "skipped_steps": out["skipped_steps"]}

    def _diagnostics(self, flow_move: FlowMove, sweep: SwapMove, c: int, steps: int, warmup_steps: int,
                     info: dict, refined: dict | None) -> dict[str, Any]:
        counts = sweep.counts if sweep.counts is not None else torch.zeros((2 * c, 5), dtype=torch.float64)

        def rate(rows: slice, accepted: int, tried: int) -> float | None:
            total = counts[rows].sum(0)
            return float(total[accepted] / total[tried]) if float(total[tried]) > 0 else None

        flow_acc = None if flow_move.accepted is None else float(flow_move.accepted.mean() / flow_move.attempts)
        out = {
            "flow_move": "exchange" if flow_move.exchange else "independence",
            "flow_acceptance": flow_acc,
            "flow_moves": flow_move.attempts,  # since the production started (statistics reset)
            "flow_nonfinite": flow_move.nonfinite,
            "acceptance_displacement": rate(slice(0, c), DISP_ACCEPTED, DISP_ATTEMPTS),
            "acceptance_swap": rate(slice(0, c), SWAP_ACCEPTED, SWAP_ATTEMPTS),
            "production_steps": steps,
            "warmup_steps": warmup_steps,
            "step": float(sweep.step[:c].mean()),
            "training": {k: v for k, v in info.items() if k not in ("flow_reused_from", "reused_setup")},
        }
        if flow_move.exchange:
            out["partner_beta"] = float(flow_move.bg.base.beta)
            out["partner_acceptance_displacement"] = rate(slice(c, None), DISP_ACCEPTED, DISP_ATTEMPTS)
            out["partner_step"] = float(sweep.step[c:].mean())
        if refined is not None:
            out["refined"] = refined
        return out
