"""The contracts every part of boltzbench speaks (DESIGN.md, "Contracts").

Conventions fixed here, once:

* **Energies are reduced**: ``System.energy(x)`` returns u(x) = U(x)/kT at the system's
  target temperature, shape ``(B,)``, for ``x`` of shape ``(B, dof)``. A sampler that
  tempers works with an inverse temperature *relative to the target*, β = T_target/T, and
  the density β·u(x); β = 1 is the target. Forces are −∇u, in the same reduced units.
* **Cost**: one energy evaluation or one force evaluation of one configuration costs one
  unit. Every call of ``System.energy`` / ``System.energy_and_forces`` is charged to the
  system's :class:`CostLedger`; work done inside ``ledger.setup_phase()`` (flow training,
  training-data generation) is kept apart as setup cost, and budgets count both.
* **Parameters**: systems and samplers are dataclasses whose init fields are their
  parameters (declared with :func:`param`). Construction is cheap and validates; heavy
  set-up happens lazily on first use.
* **Randomness** is always passed in as a ``torch.Generator``; nothing seeds globally.
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np
import torch


class ParameterError(ValueError):
    """An invalid parameter value. ``field`` names the parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def require(condition: bool, field: str, message: str) -> None:
    """Raise :class:`ParameterError` for ``field`` unless ``condition`` holds."""
    if not condition:
        raise ParameterError(field, message)


def param(default: Any, help: str, physical: bool = True) -> Any:
    """Declare a parameter of a system or sampler: a dataclass field with a help text.

    ``physical`` says whether the parameter changes the target distribution (temperature,
    N, density, ...). Numerical settings that only change how energies are computed
    (precision, device, a neighbour-list skin, an OpenMM platform) pass ``physical=False``:
    a system's reference is identified by its physical parameters alone
    (:func:`boltzbench.systems.references.reference_key`).
    """
    return field(default=default, metadata={"help": help, "physical": bool(physical)})


class Configurable:
    """Base of systems and samplers: a dataclass whose init fields are its parameters."""

    name: ClassVar[str]
    description: ClassVar[str]

    @classmethod
    def parameters(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    def params(self) -> dict[str, Any]:
        """All parameters, defaults included: the normalized form a record stores."""
        return {f.name: getattr(self, f.name) for f in self.parameters()}


# --------------------------------------------------------------------------- cost


@dataclass
class Cost:
    """Evaluations and wall seconds spent in one phase (sampling or setup)."""

    energy_evals: float = 0.0
    force_evals: float = 0.0
    wall_s: float = 0.0

    @property
    def evals(self) -> float:
        return self.energy_evals + self.force_evals


class CostLedger:
    """What a cell has spent so far, sampling and setup kept apart.

    The wall clock runs only between :meth:`start` and :meth:`stop` (the runner stops it
    while it computes metrics, so analysis is never charged to the sampler). A sampler run
    outside the runner on a wall-clock budget starts the clock at its first budget check
    (:meth:`Budget.used`), so such a budget ends there too.
    ``deadline`` (a ``time.monotonic()`` value) is the runner's per-cell timeout: once it
    has passed, every budget counts as exhausted, so samplers stop at their next check.
    """

    def __init__(self) -> None:
        self.sampling = Cost()
        self.setup = Cost()
        self.deadline: float | None = None
        self._in_setup = False
        self._since: float | None = None
        self.clock_started = False  #: True once :meth:`start` has been called
        #: (total_evals, total_wall_s) as the last :meth:`SnapshotSchedule.due` read them
        self.due_reading: tuple[float, float] | None = None

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def charge(self, energy: float = 0, forces: float = 0) -> None:
        bucket = self.setup if self._in_setup else self.sampling
        bucket.energy_evals += energy
        bucket.force_evals += forces

    def start(self) -> None:
        self.clock_started = True
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> None:
        self._tick()
        self._since = None

    def _tick(self) -> None:
        if self._since is not None:
            now = time.perf_counter()
            (self.setup if self._in_setup else self.sampling).wall_s += now - self._since
            self._since = now

    @contextmanager
    def setup_phase(self) -> Iterator[None]:
        """Charge everything inside the block (evaluations and wall time) to setup.
        Re-entrant: a nested block (e.g. ``sample_initial`` inside a sampler's setup) keeps
        the outer phase when it ends."""
        self._tick()
        outer, self._in_setup = self._in_setup, True
        try:
            yield
        finally:
            self._tick()
            self._in_setup = outer

    @property
    def total_evals(self) -> float:
        return self.sampling.evals + self.setup.evals

    @property
    def total_wall_s(self) -> float:
        self._tick()
        return self.sampling.wall_s + self.setup.wall_s

    def as_dict(self) -> dict[str, Any]:
        """The record's ``cost``: sampling phase at the top level, setup apart, totals."""
        self._tick()
        return {
            **dataclasses.asdict(self.sampling),
            "setup": dataclasses.asdict(self.setup),
            "total_evals": self.total_evals,
            "total_wall_s": self.total_wall_s,
        }


@dataclass(frozen=True)
class Budget:
    """A cost cap: energy+force evaluations and/or wall seconds, setup included.

    ``n_snapshots`` is how many snapshots (points of the accuracy-versus-cost curve) a
    sampler yields, evenly spaced in the fraction of the budget used.
    """

    max_evals: float | None = None
    max_wall_s: float | None = None
    n_snapshots: int = 20

    def __post_init__(self) -> None:
        require(self.max_evals is not None or self.max_wall_s is not None, "budget",
                "set max_evals and/or max_wall_s")
        for name in ("max_evals", "max_wall_s"):
            value = getattr(self, name)
            require(value is None or 0 < value < math.inf, f"budget.{name}",
                    f"must be a finite number > 0, got {value}")
            if isinstance(value, float) and value.is_integer():
                # the normal form: 2e4 and 20_000 are one budget, one cell id
                object.__setattr__(self, name, int(value))
        require(isinstance(self.n_snapshots, int) and self.n_snapshots >= 1, "budget.n_snapshots",
                f"must be an integer >= 1, got {self.n_snapshots!r}")

    def used(self, ledger: CostLedger, wall_s: float | None = None) -> float:
        """Fraction of the budget spent (the largest over the caps that are set), with the
        ledger's wall time read now or given as ``wall_s``. A wall-clock cap starts a ledger's
        clock that was never started (a sampler run by hand)."""
        fractions = []
        if self.max_wall_s is not None and not ledger.clock_started:
            ledger.start()
        if self.max_evals is not None:
            fractions.append(ledger.total_evals / self.max_evals)
        if self.max_wall_s is not None:
            fractions.append((ledger.total_wall_s if wall_s is None else wall_s) / self.max_wall_s)
        return max(fractions)

    def exhausted(self, ledger: CostLedger) -> bool:
        """True once any cap is reached (:meth:`used` ≥ 1) or the runner's per-cell deadline
        has passed: a sampler loops ``while not budget.exhausted(ledger)``.

        If nothing was charged since the last :meth:`SnapshotSchedule.due`, the clock is not
        read again: the step's two checks see one wall time, so a step that ends the budget
        is the step whose ``due`` yielded the final snapshot (with a fresh reading, time
        passing between the two checks could end the loop one snapshot short)."""
        reading = ledger.due_reading
        wall_s = reading[1] if reading is not None and reading[0] == ledger.total_evals else None
        return self.used(ledger, wall_s) >= 1.0 or ledger.past_deadline()

    def schedule(self) -> "SnapshotSchedule":
        """A fresh :class:`SnapshotSchedule` for one run: when the next snapshot is due."""
        return SnapshotSchedule(self)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SnapshotSchedule:
    """Says when a snapshot is due: each time the budget used passes the next k/n_snapshots.

    The last mark is 1.0, so a sampler looping ``while not budget.exhausted(ledger)`` and
    yielding whenever ``due`` is true always yields a final snapshot at exhaustion.
    """

    def __init__(self, budget: Budget):
        self.budget = budget
        self._next = 1

    def due(self, ledger: CostLedger) -> bool:
        """True when the budget used has passed the next mark k/n_snapshots (or is spent);
        each mark is reported once."""
        wall_s = ledger.total_wall_s
        ledger.due_reading = (ledger.total_evals, wall_s)  # the loop's next exhausted() check reuses it
        used = self.budget.used(ledger, wall_s)
        n = self.budget.n_snapshots
        if used * n < self._next and used < 1.0:
            return False
        self._next = int(used * n) + 1
        return True


# ----------------------------------------------------------------------- samples


@dataclass
class Snapshot:
    """What a sampler has produced so far, at the target temperature.

    All tensors are CPU ``torch`` tensors; positions and energies floating point and finite.
    ``positions`` has shape (T, C, dof): T draws of each of C chains (C = population size
    and T = 1 for samplers that produce independent weighted samples); ``energies`` (T, C)
    are reduced energies; ``log_weights`` (T, C) are unnormalized log importance weights,
    ``None`` for unweighted samplers. ``cost`` is ``ledger.as_dict()`` at this point;
    ``diagnostics`` holds JSON-able values (acceptance rates, round trips, ...).
    ``families`` (T, C) integer labels, ``None`` by default: samples sharing a label descend
    from one ancestor draw (population annealing's resampled copies) and count as one draw
    in effective sample sizes (:func:`boltzbench.metrics.ess.family_kish_ess`).
    """

    positions: torch.Tensor
    energies: torch.Tensor
    log_weights: torch.Tensor | None
    cost: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    families: torch.Tensor | None = None


@dataclass
class Samples:
    """The NumPy view of a snapshot that metrics read: pure data, no torch, no system.

    ``observables`` and ``states`` (metastable-state labels, −1 for none) have the same
    (T, C) leading shape as ``energies``; an observable may have trailing dimensions
    (for example (T, C, n_pairs) pair distances). ``families`` (T, C) integer labels or
    ``None``: samples sharing a label descend from one ancestor draw (see :class:`Snapshot`).
    """

    positions: np.ndarray
    energies: np.ndarray
    log_weights: np.ndarray | None
    observables: dict[str, np.ndarray]
    states: np.ndarray
    families: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.energies.size)

    def weights(self) -> np.ndarray:
        """Normalized weights of the flattened samples (uniform for unweighted samplers),
        by :func:`weights_from_log`: a log-weight of −inf is a zero weight; NaN or +inf
        log-weights (or all −inf) make every weight NaN, which :func:`support` rejects."""
        if self.log_weights is None:
            return np.full(self.n, 1.0 / max(self.n, 1))
        return weights_from_log(self.log_weights)


# ------------------------------------------------------- weights and undefined inputs


def weights_from_log(log_weights: np.ndarray) -> np.ndarray:
    """Normalized float64 weights w_i = exp(l_i − max l) / Σ_j exp(l_j − max l) of
    flattened log-weights l (shifting by the maximum avoids overflow).

    A log-weight of −inf is a legal zero weight. NaN or +inf log-weights, all −inf, or no
    log-weights at all leave the weights undefined: then every entry is NaN, so nothing
    computed from them is finite and :func:`support` returns None for them.
    """
    log_w = np.asarray(log_weights, dtype=np.float64).ravel()
    if np.isnan(log_w).any() or (log_w == np.inf).any() or not (log_w > -np.inf).any():
        return np.full(log_w.size, np.nan)
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def support(weights: np.ndarray | None, *arrays: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """The samples that carry mass, or None when no estimate from them is defined.

    The one rule of every metric and estimator. Weights must be finite and
    ≥ 0 with a positive sum. A zero weight (log-weight −inf) is legal: its sample carries
    no mass and is dropped, whatever its values (a weightless overlap at u = inf
    included). Every sample that keeps a positive weight must have finite values. Empty
    inputs, NaN, ±inf or negative weights, all-zero weights, and NaN or ±inf values with
    positive weight make the result undefined: None (a registered metric then returns
    None, a low-level float function NaN).

    Parameters
    ----------
    weights : (n,) weights on any positive scale (flattened), or None for uniform.
    arrays : arrays with n rows along axis 0, e.g. (n,) energies or (n, d) positions.

    Returns
    -------
    ``(w, *rows)``: the weights w > 0 normalized to sum 1, and the same rows of every
    array; None when undefined.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0]) if weights is None else int(np.size(weights))
    if any(len(a) != n for a in arrays):
        raise ValueError(f"support: arrays with {[len(a) for a in arrays]} rows for {n} weights")
    if n == 0:
        return None
    if weights is None:
        w = np.full(n, 1.0 / n)
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if not (np.isfinite(w).all() and (w >= 0).all() and w.any()):
            return None
        keep = w > 0
        if not keep.all():
            w, arrays = w[keep], tuple(a[keep] for a in arrays)
        w = w / w.max()
        w = w / w.sum()
    if not all(np.isfinite(a).all() for a in arrays):
        return None
    return (w, *arrays)


def defined(value: float | None) -> float | None:
    """``value`` as a float, or None when it is None, NaN or ±inf: what a registered metric
    returns (None means undefined; records and reports show "undefined")."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class OpenMMTwin:
    """The same system as an OpenMM ``System``, with the map between the two unit systems.

    Positions: x_nm = x · ``nm_per_unit``. Energies: U_kJ/mol = u · ``kj_per_mol_per_kt``
    (u is the reduced energy of the contract). Lennard-Jones reduced units map exactly onto
    OpenMM's with σ = 1 nm, ε = 1 kJ/mol, m = 1 amu (then τ = 1 ps and kT = T kJ/mol).
    ``temperature_kelvin`` is the target temperature for OpenMM integrators.
    ``box_nm`` holds the periodic box edges, ``None`` for an open system. ``dim`` is the
    spatial dimension of the system's positions: a 2D system's twin lives in the z = 0
    plane and serves energy/force checks only (OpenMM dynamics would leave the plane).
    """

    system: Any  # openmm.System
    nm_per_unit: float
    kj_per_mol_per_kt: float
    temperature_kelvin: float
    box_nm: tuple[float, ...] | None = None
    dim: int = 3


@dataclass
class Reference:
    """Reference data of a system, with provenance.

    ``energies``/``observables`` are reference samples (flattened, ``(n,)`` each);
    ``exact`` holds exactly known scalars (for example ``mean_energy``, ``delta_f``);
    ``cdfs`` holds exact marginal CDFs on a grid, ``{observable: (grid, cdf)}``.
    """

    energies: np.ndarray
    observables: dict[str, np.ndarray]
    exact: dict[str, float]
    cdfs: dict[str, tuple[np.ndarray, np.ndarray]]
    provenance: dict[str, Any]


# ----------------------------------------------------------------- systems, samplers


@dataclass
class System(Configurable, ABC):
    """A target density p(x) ∝ exp(−u(x)) over x of shape (B, dof).

    Subclasses implement :meth:`_energy` (and :meth:`_energy_and_forces` when they have
    analytic forces; the default differentiates :meth:`_energy` with autograd) and the
    metadata below. Callers use :meth:`energy` and :meth:`energy_and_forces`, which charge
    the ledger.
    """

    ledger: CostLedger = field(default_factory=CostLedger, init=False, repr=False, compare=False)

    citation: ClassVar[str] = ""
    units: ClassVar[str] = "reduced"
    #: Names of the metastable states that :meth:`state_of` labels 0, 1, ...
    states: ClassVar[tuple[str, ...]] = ()
    #: How ``boltzbench reference build`` makes the reference: {"sampler", "params",
    #: "max_evals", "n_samples", "burn_in"}; None when the reference is exact.
    reference_recipe: ClassVar[dict[str, Any] | None] = None
    #: The metrics computed when a matrix does not name any.
    default_metrics: ClassVar[tuple[str, ...]] = ("energy_w1", "mean_energy_error", "ess")
    dtype: ClassVar[torch.dtype] = torch.float64

    # metadata ------------------------------------------------------------------
    @property
    @abstractmethod
    def dof(self) -> int: ...

    @property
    def n_particles(self) -> int:
        return 1

    @property
    def dim(self) -> int:
        return self.dof // self.n_particles

    @property
    def box(self) -> torch.Tensor | None:
        """Periodic box edges, or ``None`` for an open system."""
        return None

    # energies ----------------------------------------------------------------------
    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energies u(x), shape (B,); charges B energy evaluations."""
        self.ledger.charge(energy=x.shape[0])
        return self._energy(x)

    def energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced energies (B,) and forces −∇u (B, dof); charges B force evaluations."""
        self.ledger.charge(forces=x.shape[0])
        return self._energy_and_forces(x)

    @abstractmethod
    def _energy(self, x: torch.Tensor) -> torch.Tensor: ...

    def _energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = self._energy(x)
            (grad,) = torch.autograd.grad(u.sum(), x)
        return u.detach(), -grad

    # analysis ----------------------------------------------------------------------
    def observables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named per-configuration observables, each (B,) or (B, k). Not charged: analysis."""
        return {}

    def state_of(self, x: torch.Tensor) -> torch.Tensor:
        """Metastable-state label of each configuration (index into ``states``; −1: none)."""
        return torch.full((x.shape[0],), -1, dtype=torch.long)

    def openmm_twin(self) -> OpenMMTwin:
        """This system as an OpenMM ``System`` (for cross-checks and the OpenMM MD backend)."""
        raise NotImplementedError(f"system {self.name!r} has no OpenMM twin")

    @abstractmethod
    def sample_initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` starting configurations (n, dof): the same start for every sampler.

        May do charged work (the particle systems relax overlapping random starts); it
        does so inside its own ``ledger.setup_phase()``, so the cost goes to setup."""

    def sample_states(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` configurations spread over the metastable ``states`` (chain i in state
        i mod len(states)), for samplers that generate training data from every state (a
        flow's ``data_starts = "states"``). Default: :meth:`sample_initial`."""
        return self.sample_initial(n, generator)

    def reference(self) -> Reference:
        """Reference samples and exact quantities for these parameters, with provenance.

        The default loads the stored reference built by ``boltzbench reference build``
        (see :mod:`boltzbench.systems.references`) and raises ``LookupError`` without one.
        """
        from boltzbench.systems.references import load_reference

        return load_reference(self)


def device_of(system: System) -> torch.device:
    """The torch device a system computes on: its ``device`` parameter, else the CPU."""
    return torch.device(getattr(system, "device", None) or "cpu")


def cell_generator(system: System, seed: int) -> torch.Generator:
    """The generator a cell's sampler receives: seeded with the cell's seed, on the system's
    device, so that draws land where the energies are computed (no host copy per step)."""
    return torch.Generator(device=device_of(system)).manual_seed(seed)


class Sampler(Configurable, ABC):
    """A sampling method: ``run`` yields snapshots until the budget is spent.

    Samplers charge every energy/force evaluation (they go through the system's
    ``energy``/``energy_and_forces``), yield when ``budget.schedule()`` says a snapshot is
    due, and take all randomness from ``generator``.
    """

    @abstractmethod
    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]: ...

    def budget_warnings(self, budget: Budget) -> list[str]:
        """What of this sampler's settings ``budget`` will cut short, one sentence each, for
        ``boltzbench validate`` and ``run`` to print before anything runs; none by default."""
        return []
