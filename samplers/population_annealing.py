"""Population annealing: a population cooled from β₀ to the target, reweighted and resampled.

A population of P replicas equilibrated at inverse temperature β₀ < 1 (relative to the
target) is cooled step by step, β_k → β_{k+1} (Hukushima & Iba, AIP Conf. Proc. 690, 200
(2003); Machta, PRE 82, 026704 (2010)). Each step

1. reweights replica i by w_i = exp(−(β_{k+1} − β_k)·u_i), which gives the free-energy
   increment ln Z(β_{k+1})/Z(β_k) ≈ ln ⟨w⟩ (the population mean);
2. resamples P replicas with probabilities w_i/Σw: ``systematic`` (one uniform offset,
   P evenly spaced pointers; copies of i are ⌊P·w_i⌋ or ⌈P·w_i⌉; Kitagawa, J. Comput.
   Graph. Stat. 5, 1 (1996); Douc, Cappé & Moulines, ISPA 2005) or ``multinomial``;
   both give E[copies of i] = P·w_i/Σw;
3. equilibrates every replica with ``sweeps`` local moves at β_{k+1} (``moves.py``; for
   particle systems ``move = "swap"`` makes each a sweep of swap Monte Carlo, displacements
   and identity swaps with probability ``p_swap`` between the species pairs ``swap_pairs``).

Summing step 1 over the schedule gives ln Z(1)/Z(β₀) = Σ_k ln ⟨exp(−Δβ_k·u)⟩ and the
free-energy difference −ln(Z(1)/Z(β₀)) (in kT at the target).

Schedules: ``linear`` or ``geometric`` in β with ``n_steps`` steps, or ``adaptive``: each
Δβ is found by bisection so that the relative ESS of the step's weights,
(Σw)²/(P·Σw²), equals ``target_ess`` (the adaptive tempering of Jasra, Stephens, Doucet &
Tsagaris, Scand. J. Stat. 38, 1 (2011)). Per step the diagnostics report β, that
ESS fraction, the family entropy S_f = −Σ_i ν_i·ln ν_i over the fractions ν_i of the
population descending from initial replica i, and the number of surviving families
(Wang, Machta & Katzgraber, PRE 92, 063307 (2015)).

Energies that cannot be annealed. A replica with u = +inf has weight exp(−Δβ·∞) = 0 at
every Δβ > 0, so the next resampling removes it and the adaptive Δβ is chosen on the
finite energies. NaN or −inf energies, no finite energy at all, or an adaptive step below
``MIN_DELTA_BETA`` (10⁻⁹) stop the run with :class:`AnnealingStalled` ("stalled at
β = …"): β never repeats. A pass yields after every sweep and every annealing step, so the
budget and the runner's deadline stop it whatever ``sweeps`` is.

How the budget is spent. The run is a sequence of complete, independent annealing passes,
each from a fresh population, until the budget is spent (a pass cut short by the budget is
discarded; its cost still counts). With Metropolis moves the first pass is a warm-up with
``warmup_population`` replicas: after every sweep its step size is tuned towards
``target_acceptance``; the tuned step sizes, as a function of β, are then frozen and
production passes interpolate them (in ln β), never adapting. The warm-up pass is charged
and its samples are discarded. A pure-MD run has nothing to tune and skips it.

Output at β = 1. Each production pass r ends resampled and equilibrated at β = 1, so its P
replicas have equal weights; passes are pooled with weights ∝ Ẑ_r, the pass's estimate
of Z(1)/Z(β₀) (Machta 2010, "weighted averaging"), so every sample carries the log-weight
ln Ẑ_r − ln P. The pooled estimate is ln Z(1)/Z(β₀) = ln((1/n)·Σ_r Ẑ_r) over the n
passes, with error bar from the spread of the independent passes (delta method:
σ = sd_r(Ẑ_r)/(√n·mean_r Ẑ_r)); it is None until two passes are done.

Effective sample size. Resampled copies of one replica are not independent draws: every
sample carries its family (the initial replica of its pass, labels unique across passes,
``Snapshot.families``), and the ESS metrics count each family once, as the Kish ESS over
family totals (Σ_f W_f)²/Σ_f W_f² (``metrics/ess.py``; for one pass the inverse Simpson
index 1/Σν_f², the family-based effective population of Wang, Machta & Katzgraber 2015).
A pass whose schedule collapsed onto a few ancestors thus has an ESS of a few, not P. The
sweeps after resampling decorrelate copies, so on a healthy run this is a conservative
(low) estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from boltzbench.contracts import Budget, Sampler, Snapshot, System, param, require
from boltzbench.samplers.moves import (MOVES, Move, Walkers, acceptance, check_swap_pairs, check_swap_system,
                                       log_mean_exp, make_move, prepare, skipped_pairs, tunable_leaves, tune_step)

SCHEDULES = ("adaptive", "linear", "geometric")
RESAMPLING = ("systematic", "multinomial")


# ------------------------------------------------------------------ pure functions

def relative_ess(log_weights: torch.Tensor) -> float:
    """Kish ESS over the population size, (Σw)²/(P·Σw²), in (0, 1]."""
    w = torch.exp(log_weights - log_weights.max())
    return float(w.sum() ** 2 / (w.numel() * (w * w).sum()))


#: The smallest step of the adaptive schedule: a schedule that needs Δβ < 10⁻⁹ (over 10⁹
#: steps to reach β = 1) has stalled, and says so instead of repeating β.
MIN_DELTA_BETA = 1e-9


class AnnealingStalled(RuntimeError):
    """The annealing schedule cannot advance from the current β."""


def check_energies(u: torch.Tensor, beta: float) -> None:
    """Raise :class:`AnnealingStalled` unless the population can be reweighted to a larger β.

    +inf energies are legal: such a walker has weight exp(−Δβ·∞) = 0 at every Δβ > 0 and is
    removed by the next resampling. NaN or −inf energies (an undefined or unnormalizable
    density), or no finite energy at all (nothing to resample), are not.
    """
    nan, minus_inf = int(torch.isnan(u).sum()), int((u == -math.inf).sum())
    if nan or minus_inf:
        what = " and ".join(s for s in (f"{nan} NaN" if nan else "", f"{minus_inf} −inf" if minus_inf else "") if s)
        raise AnnealingStalled(f"stalled at β = {beta:.6g}: {what} energies among {u.numel()} walkers; the "
                               f"system's energy is undefined there (check the system, or lower step or dt)")
    if not torch.isfinite(u).any():
        raise AnnealingStalled(f"stalled at β = {beta:.6g}: all {u.numel()} walkers have energy +inf, so "
                               f"every weight is 0 and there is nothing to resample (start them where the "
                               f"energy is finite, or raise initial_sweeps)")


def next_beta(u: torch.Tensor, beta: float, target_ess: float, iterations: int = 60) -> float:
    """The next inverse temperature: the largest Δβ ≤ 1 − β (found by bisection) whose
    weights exp(−Δβ·u) keep the relative ESS of the finite-energy walkers ≥ ``target_ess``.
    The ESS decreases with Δβ (d ln ESS/dΔβ = 2(⟨u⟩_{Δβ} − ⟨u⟩_{2Δβ}) ≤ 0, ⟨·⟩_s weighted
    by exp(−s·u)).

    Walkers with u = +inf get weight 0 at every Δβ > 0, so no step keeps them; Δβ is chosen
    on the others. Raises :class:`AnnealingStalled` for the energies :func:`check_energies`
    rejects and when the step would be below :data:`MIN_DELTA_BETA`; never returns β.
    """
    check_energies(u, beta)
    u = u[torch.isfinite(u)]
    hi = 1.0 - beta
    if relative_ess(-hi * u) >= target_ess:
        return 1.0
    lo = 0.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if relative_ess(-mid * u) >= target_ess:
            lo = mid
        else:
            hi = mid
    if lo < MIN_DELTA_BETA:
        raise AnnealingStalled(
            f"stalled at β = {beta:.6g}: every step Δβ >= {MIN_DELTA_BETA:g} takes the relative ESS below "
            f"target_ess = {target_ess:g} (finite energies spread over [{float(u.min()):.4g}, "
            f"{float(u.max()):.4g}]); equilibrate longer (initial_sweeps, sweeps) or lower target_ess")
    return beta + lo


def fixed_schedule(kind: str, beta_start: float, n_steps: int) -> np.ndarray:
    """β_1..β_n (β_n = 1) of a linear or geometric schedule from β_0 = ``beta_start``."""
    k = np.arange(1, n_steps + 1) / n_steps
    betas = beta_start + (1.0 - beta_start) * k if kind == "linear" else beta_start ** (1.0 - k)
    betas[-1] = 1.0
    return betas


def systematic_resample(log_weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``n`` replicas drawn by systematic resampling: pointers (j + U)/n, j = 0..n−1,
    one U ~ U(0, 1), into the cumulative normalized weights."""
    w = torch.softmax(log_weights.to(torch.float64), 0)
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    offset = torch.rand(1, generator=generator, dtype=torch.float64, device=generator.device).to(w.device)
    pointers = (torch.arange(n, dtype=torch.float64, device=w.device) + offset) / n
    return torch.searchsorted(cdf, pointers, right=True).clamp(max=len(w) - 1)


def multinomial_resample(log_weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``n`` replicas drawn independently with probabilities w_i/Σw."""
    w = torch.softmax(log_weights.to(torch.float64), 0)
    return torch.multinomial(w.to(generator.device), n, replacement=True, generator=generator).to(w.device)


RESAMPLERS = {"systematic": systematic_resample, "multinomial": multinomial_resample}


def family_entropy(ancestors: torch.Tensor) -> tuple[float, int]:
    """S_f = −Σ ν_i ln ν_i over the family fractions ν_i, and the number of families."""
    counts = torch.bincount(ancestors)
    nu = counts[counts > 0].to(torch.float64) / ancestors.numel()
    return float(-(nu * torch.log(nu)).sum()), int(nu.numel())


@dataclass
class PassResult:
    """One complete annealing pass: the β = 1 population and what it measured."""

    x: torch.Tensor
    u: torch.Tensor
    log_z_ratio: float
    schedule: list[dict[str, Any]]
    families: torch.Tensor  # (P,) the initial replica each final replica descends from
    step_table: list[tuple[float, list[float]]] = field(default_factory=list)  # (β, steps)


# ------------------------------------------------------------------------ sampler

@dataclass
class PopulationAnnealing(Sampler):
    """Population annealing from β₀ to the target; repeated passes pooled by weight."""

    name: ClassVar[str] = "pa"
    description: ClassVar[str] = "population annealing (reweight, resample, equilibrate), free energies"

    population: int = param(1000, "replicas per annealing pass (>= 2)")
    beta_start: float = param(0.1, "initial inverse temperature β₀ relative to the target, in (0, 1)")
    schedule: str = param("adaptive", "'adaptive' (Δβ by bisection so that each step's relative ESS "
                                      "is target_ess), 'linear' or 'geometric' in β with n_steps steps")
    n_steps: int = param(50, "annealing steps of the linear and geometric schedules")
    target_ess: float = param(0.9, "relative ESS per step of the adaptive schedule, in (0, 1)")
    sweeps: int = param(10, "local moves of every replica after each resampling")
    initial_sweeps: int = param(100, "local moves at β₀ that equilibrate each fresh population (0 trusts the "
                                     "system's initial configurations to be equilibrium draws at β₀; if they are "
                                     "not, the results are biased, however large the ESS)")
    resampling: str = param("systematic", "'systematic' or 'multinomial'")
    move: str = param("mc", "local move: 'mc' (Metropolis), 'md' (BAOAB Langevin), 'mc+md', or 'swap' (a sweep "
                            "of swap Monte Carlo, particle systems only)")
    step: float = param(0.5, "initial Metropolis step size, or the displacement half-width of move = 'swap' "
                             "(tuned against β in the warm-up pass)")
    p_swap: float = param(0.2, "move = 'swap': probability that an attempted move exchanges the identities "
                               "(species or diameters) of two particles, in [0, 1]")
    swap_pairs: list[str] | None = param(None, "move = 'swap': the species pairs whose particles may exchange "
                                               "identities, e.g. ['AC', 'BC']; None: every pair")
    target_acceptance: float = param(0.4, "Metropolis acceptance the warm-up pass tunes towards, in (0, 1)")
    dt: float = param(0.01, "MD time step")
    friction: float = param(1.0, "MD Langevin friction γ")
    mass: float = param(1.0, "MD mass of every degree of freedom")
    warmup_population: int = param(100, "replicas of the warm-up pass that tunes step sizes (>= 2; "
                                         "capped at population)")

    def __post_init__(self) -> None:
        require(isinstance(self.population, int) and self.population >= 2, "population",
                f"must be an integer >= 2, got {self.population!r}")
        require(0 < self.beta_start < 1, "beta_start", f"must be in (0, 1), got {self.beta_start}")
        require(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        require(self.n_steps >= 1, "n_steps", f"must be >= 1, got {self.n_steps}")
        require(0 < self.target_ess < 1, "target_ess", f"must be in (0, 1), got {self.target_ess}")
        require(self.sweeps >= 0, "sweeps", f"must be >= 0, got {self.sweeps}")
        require(self.initial_sweeps >= 0, "initial_sweeps", f"must be >= 0, got {self.initial_sweeps}")
        require(self.resampling in RESAMPLING, "resampling",
                f"must be one of {', '.join(RESAMPLING)}; got {self.resampling!r}")
        require(self.move in MOVES, "move", f"must be one of {', '.join(MOVES)}; got {self.move!r}")
        require(isinstance(self.p_swap, (int, float)) and not isinstance(self.p_swap, bool)
                and 0.0 <= self.p_swap <= 1.0, "p_swap", f"must be a probability in [0, 1], got {self.p_swap!r}")
        self.swap_pairs = check_swap_pairs(self.swap_pairs)
        require(self.swap_pairs is None or self.move == "swap", "swap_pairs",
                f"applies to move = 'swap' only (move is {self.move!r}); leave it unset")
        require(self.step > 0, "step", f"must be > 0, got {self.step}")
        require(0 < self.target_acceptance < 1, "target_acceptance",
                f"must be in (0, 1), got {self.target_acceptance}")
        require(self.dt > 0, "dt", f"must be > 0, got {self.dt}")
        require(self.friction > 0, "friction", f"must be > 0, got {self.friction}")
        require(self.mass > 0, "mass", f"must be > 0, got {self.mass}")
        require(self.warmup_population >= 2, "warmup_population", f"must be >= 2, got {self.warmup_population}")

    def _move(self) -> Move:
        return make_move(self.move, step=self.step, dt=self.dt, friction=self.friction, mass=self.mass,
                         p_swap=self.p_swap, swap_pairs=self.swap_pairs)

    # one pass ------------------------------------------------------------------------
    def anneal(self, system: System, n: int, generator: torch.Generator,
               steps_at: Any = None) -> Iterator[float]:
        """One annealing pass of ``n`` replicas, as a generator that yields the current β after
        every sweep and every annealing step (so that the caller can stop it at its budget or
        deadline, whatever ``sweeps`` is) and returns a :class:`PassResult`.

        ``steps_at(β) -> list of step sizes`` (one per tunable move) gives frozen step sizes;
        with ``None`` the pass is a warm-up that tunes them after every sweep and returns the
        table of tuned values in ``PassResult.step_table``.
        """
        move, warm = self._move(), steps_at is None
        leaves = tunable_leaves(move)
        beta = self.beta_start
        walkers = Walkers.start(system, system.sample_initial(n, generator),
                                torch.full((n,), beta, dtype=system.dtype))
        table: list[tuple[float, list[float]]] = []

        def set_steps(b: float) -> None:
            if not warm:
                for leaf, s in zip(leaves, steps_at(b)):
                    leaf.set_step(s, n)

        def equilibrate(n_sweeps: int) -> Iterator[float]:
            move.reset_stats()
            for _ in range(n_sweeps):
                if warm and leaves:
                    move.reset_stats()
                move(walkers, system, generator)
                if warm:
                    for leaf in leaves:
                        if leaf.accepted is None:
                            continue
                        rate = float(leaf.accepted.mean()) / leaf.attempts
                        leaf.set_step(tune_step(leaf.step[:1], torch.tensor([rate]), self.target_acceptance), n)
                yield beta

        set_steps(beta)
        if warm:
            for leaf in leaves:  # the initial step, so that the table has one even without sweeps
                leaf.ensure_steps(n)
        yield from equilibrate(self.initial_sweeps)
        if warm:
            table.append((beta, [float(leaf.step[0]) for leaf in leaves]))
        fixed = None if self.schedule == "adaptive" else fixed_schedule(self.schedule, self.beta_start, self.n_steps)
        ancestors = torch.arange(n)
        log_z, schedule = 0.0, []
        while beta < 1.0:
            check_energies(walkers.u, beta)  # +inf: weight 0 at any Δβ > 0; NaN, all +inf: an error
            new_beta = (next_beta(walkers.u, beta, self.target_ess) if fixed is None
                        else float(fixed[len(schedule)]))
            if not new_beta > beta:  # a fixed schedule finer than floating point resolves
                raise AnnealingStalled(f"stalled at β = {beta!r}: the {self.schedule} schedule's next β is "
                                       f"{new_beta!r}; use fewer n_steps or a smaller beta_start")
            log_w = -(new_beta - beta) * walkers.u
            log_z += log_mean_exp(log_w)
            ess = relative_ess(log_w)
            index = RESAMPLERS[self.resampling](log_w, n, generator)
            walkers, ancestors = walkers.take(index), ancestors[index.cpu()]  # family bookkeeping on the host
            walkers.retemper(torch.full((n,), new_beta, dtype=system.dtype))
            beta = new_beta
            set_steps(beta)
            entropy, families = family_entropy(ancestors)
            yield beta
            yield from equilibrate(self.sweeps)
            if warm:
                table.append((beta, [float(leaf.step[0]) for leaf in leaves]))
            local = acceptance(move)
            schedule.append({"beta": beta, "ess_fraction": ess, "family_entropy": entropy,
                             "n_families": families,
                             "acceptance": None if local is None or warm else float(local.mean())})
        return PassResult(walkers.x, walkers.u, log_z, schedule, families=ancestors, step_table=table)

    # the run -------------------------------------------------------------------------
    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        if self.move == "swap":  # refuse a system without particles or species before any work
            check_swap_system(system, self.p_swap, who="pa with move = 'swap'")
            skipped_pairs(system, self.swap_pairs)
        prepare(self._move(), system)  # the swap move's numba compilation, charged to setup
        ledger, snapshots = system.ledger, budget.schedule()
        pool = _Pool(self.population)
        steps_at, warmup_evals = None, 0.0
        if not tunable_leaves(self._move()):
            steps_at = lambda beta: []  # noqa: E731 - nothing to tune: no warm-up pass
        last_yield, reached = None, self.beta_start
        while not budget.exhausted(ledger):
            warm = steps_at is None
            run = self.anneal(system, min(self.warmup_population, self.population) if warm else self.population,
                              generator, steps_at)
            try:
                while True:
                    reached = next(run)
                    if budget.exhausted(ledger):
                        break  # this pass is cut short: discarded
                    if pool.passes and snapshots.due(ledger):
                        last_yield = ledger.total_evals
                        yield pool.snapshot(ledger, warmup_evals)
            except StopIteration as done:
                result: PassResult = done.value
                if warm:
                    steps_at, warmup_evals = _interpolator(result.step_table), ledger.total_evals
                else:
                    pool.add(result)
                    if snapshots.due(ledger):
                        last_yield = ledger.total_evals
                        yield pool.snapshot(ledger, warmup_evals)
        if not pool.passes:
            what = "the per-cell deadline passed" if ledger.past_deadline() else "the budget ended"
            which = "the warm-up pass" if steps_at is None else "the first production pass"
            raise RuntimeError(f"{what} before the first complete annealing pass ({which} had reached "
                               f"β = {reached!r}); raise the budget or lower population, sweeps or "
                               f"initial_sweeps")
        if last_yield != ledger.total_evals and (snapshots.due(ledger) or ledger.past_deadline()):
            yield pool.snapshot(ledger, warmup_evals)  # at the deadline too: keep the passes done


def _interpolator(table: list[tuple[float, list[float]]]):
    """Frozen step sizes as a function of β: linear interpolation of ln σ in ln β."""
    log_beta = np.log([b for b, _ in table])
    log_steps = np.log(np.array([s for _, s in table], float).reshape(len(table), -1))
    order = np.argsort(log_beta)
    log_beta, log_steps = log_beta[order], log_steps[order]

    def steps_at(beta: float) -> list[float]:
        return [float(np.exp(np.interp(math.log(beta), log_beta, column))) for column in log_steps.T]

    return steps_at


class _Pool:
    """Completed production passes, pooled with weights ∝ Ẑ_r."""

    def __init__(self, population: int):
        self.population = population
        self.results: list[PassResult] = []

    @property
    def passes(self) -> int:
        return len(self.results)

    def add(self, result: PassResult) -> None:
        self.results.append(result)

    def log_z_ratio(self) -> tuple[float, float | None]:
        """ln of the mean of Ẑ_r over passes, and its delta-method error (None for one pass)."""
        log_z = torch.tensor([r.log_z_ratio for r in self.results], dtype=torch.float64)
        n = log_z.numel()
        estimate = float(torch.logsumexp(log_z, 0) - math.log(n))
        if n < 2:
            return estimate, None
        z = torch.exp(log_z - log_z.max())
        return estimate, float(z.std() / (math.sqrt(n) * z.mean()))

    def snapshot(self, ledger, warmup_evals: float) -> Snapshot:
        x = torch.cat([r.x for r in self.results])
        u = torch.cat([r.u for r in self.results])
        log_w = torch.cat([torch.full((self.population,), r.log_z_ratio - math.log(self.population),
                                      dtype=u.dtype) for r in self.results])
        # pass r's families are its initial replicas, offset so that labels are unique across passes
        families = torch.cat([r.families + i * self.population for i, r in enumerate(self.results)])
        estimate, error = self.log_z_ratio()
        last = self.results[-1]
        return Snapshot(
            positions=x[None], energies=u[None], log_weights=log_w[None], cost=ledger.as_dict(),
            families=families[None],
            diagnostics={
                "log_z_ratio": estimate,
                "log_z_ratio_error": error,
                "free_energy_difference": -estimate,
                "pass_log_z_ratios": [r.log_z_ratio for r in self.results],
                "passes": self.passes,
                "population": self.population,
                "schedule": last.schedule,
                "n_temperatures": len(last.schedule),
                "warmup_evals": warmup_evals,
            },
        )
