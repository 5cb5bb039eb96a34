"""The ``flow`` sampler: a complete Boltzmann generator with every cost counted.

Setup (all inside ``ledger.setup_phase()``, so evaluations *and* wall seconds go to the
setup cost, which budgets count):

1. **Data** for maximum likelihood and for the standardization statistics: Langevin MD
   (BAOAB, ``data_sampler = "md"``, time step ``data_step``) or Metropolis MC (``"mc"``,
   step ``data_step``) at the *target* temperature, ``data_chains`` chains started from
   ``system.sample_initial`` (``data_starts = "states"``: from ``system.sample_states``,
   chains spread over the metastable states) for ``data_steps`` steps, the first 10 %
   discarded, every ``data_thin``-th state kept; or any registered sampler with
   unweighted chains (``data_sampler = "pt"``, parameters ``data_params``), run on half of
   the setup's budget share, whose chains are the data. On the double well the starts put
   half the chains in each well (``DoubleWell.sample_initial``), so the data cover both
   states but with the wrong weights (½ each instead of 0.992/0.008) — as in Noé et al.
   (2019), who fed data from both states; the KL term and the reweighting fix the
   weights. ``balance_states`` draws each state's data equally often in the ML loss.
   Chains (not samples) are split into training and held-out sets (``holdout``) so
   held-out data are not correlated with training data.
2. **Thermal base** (``base = "thermal"``): ``base_chains`` chains at T_base =
   ``base_temperature``·T (β_base = 1/base_temperature), ``base_warmup`` steps (MC steps
   adapted towards 40 % acceptance during warm-up only), then a pool of ``base_pool``
   configurations drawn ``base_stride`` steps apart for KL training (10 % held out).
3. **Training** (:mod:`.train`) until ``train_steps``, early stopping, ``max_train_s``
   seconds, or the setup having spent ``train_fraction`` of the cell's budget.

Sampling:

* Proposal: the trained flow; with a Gaussian base, by default the defensive mixture
  (1 − α)·q + α·q_τ whose latent is α-times N(0, τ²I) (``defensive``, ``defensive_scale``;
  Hesterberg, Technometrics 37, 185 (1995)) — the flow's tails are what the data and the
  mode-seeking KL constrain least, and a slightly too narrow tail gives unbounded weights.
* ``mode = "reweight"``: independent flow samples x with log-weights
  log w = −u(x) − log q(x), shifted by their running maximum (so ≤ 0; stabilized), as one
  population: positions (1, n, dof), log_weights (1, n). Diagnostics: Kish ESS
  (Σw)²/Σw² (Kish, *Survey Sampling*, 1965) and its fraction of the n drawn, and log Ẑ = log mean w
  (the log-partition function relative to the base's normalization; exact for a
  Gaussian base up to the internal-coordinate Jacobian convention).
* ``mode = "mcmc"``: ``n_chains`` independence Metropolis–Hastings chains with flow
  proposals x' ~ q, accepted with min(1, w(x')/w(x)) (Tierney, Ann. Stat. 22, 1701 (1994);
  with flows: Gabrié, Rotskoff & Vanden-Eijnden, PNAS 119, e2109420119 (2022)); with
  probability ``p_local`` a step is instead a random-walk Metropolis move of step
  ``local_step`` (``metropolis_step``). Both kernels leave exp(−u) invariant, so their
  random mixture does. Unweighted chains: positions (T, C, dof), log_weights None. Gaussian
  base only: a thermal base draws its proposals from a Markov chain, so consecutive
  proposals are correlated with each other and with the state they may replace, and the
  independence ratio is no longer exact (measured on the double well at kT = 1 with a base
  stride of 1: ⟨u⟩ 84 and P(right) 45 standard errors off). Its exact form, the learned
  replica exchange with a partner chain at the base temperature, is the ``flow_swap`` sampler.

Non-finite energies or log-densities are dropped (reweighting: weight zero; MCMC: never
accepted) and counted in diagnostics; a cell where almost everything is non-finite fails
with a diagnostic. Samples from internal coordinates come out in the canonical frame of
:class:`~boltzbench.samplers.flows.layers.InternalCoordinates`.

Reuse (``reuse_dir``): the trained flow is cached as ``flow-<key>.pt`` keyed by system,
training parameters, ``train_seed`` and budget; a later cell with the same key loads it
instead of training. Its original setup cost (evaluations and wall seconds) is still
charged to this cell's setup by default (``charge_reused_setup``), so rankings stay fair;
diagnostics ``flow_reused_from`` and ``reused_setup`` say so. Set ``train_seed`` to share a
flow across the seeds of a matrix (with ``None`` the training draws from the cell's own
generator and every seed trains its own flow).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch

from boltzbench.contracts import (Budget, ParameterError, Sampler, Snapshot, System, cell_generator, device_of, param,
                                  require)
from boltzbench.registry import get_sampler, registry
from boltzbench.samplers.chains import ChainTrace
from boltzbench.samplers.flows.base import GaussianBase, ThermalBase
from boltzbench.samplers.flows.layers import zmatrix_from_bonds
from boltzbench.samplers.flows.model import ARCHITECTURES, COORDINATES, BoltzmannGenerator, energy
from boltzbench.samplers.flows.persistence import FORMAT, cache_key, load_flow, save_flow
from boltzbench.samplers.flows.train import TrainSettings, train
from boltzbench.samplers.mc import metropolis_step
from boltzbench.samplers.md import baoab_step

#: parameters that only affect the sampling phase (not part of the reuse key)
SAMPLING_ONLY = ("mode", "sample_batch", "n_chains", "thin", "p_local", "local_step", "reuse_dir",
                 "charge_reused_setup", "device", "defensive", "defensive_scale")
#: fraction of non-finite samples above which a run fails instead of dropping them
MAX_NONFINITE_FRACTION = 0.99
BUILTIN_DATA = ("md", "mc")  #: data samplers run here on data_chains × data_steps
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def kish(log_w: torch.Tensor) -> float:
    w = torch.exp(log_w - log_w.max())
    return float(w.sum() ** 2 / (w * w).sum())


def bond_graph(system: System) -> list[tuple[int, int]] | None:
    """Bonds of a molecular system: ``system.bonds`` if it has them, else the harmonic bonds
    of its OpenMM twin; None for systems without either (no internal coordinates)."""
    bonds = getattr(system, "bonds", None)
    if bonds is not None:
        return [tuple(map(int, b)) for b in (bonds() if callable(bonds) else bonds)]
    try:
        twin = system.openmm_twin()
    except (NotImplementedError, AttributeError, ImportError, LookupError):
        return None
    pairs = []
    for force in twin.system.getForces():
        if type(force).__name__ == "HarmonicBondForce":
            pairs += [tuple(force.getBondParameters(i)[:2]) for i in range(force.getNumBonds())]
    return pairs or None


def particle_spec(system: System, architecture: str, coordinates: str) -> dict[str, Any]:
    """What a particle architecture needs to know of the system: N, the spatial dimension,
    each particle's species and diameter (JSON lists). Raises a clear error for a system
    that is not a particle system, or one of the wrong kind (periodic vs cluster)."""
    if not all(hasattr(system, a) for a in ("n_particles", "dim", "species", "diameters")):
        raise RuntimeError(f"architecture {architecture!r} needs a particle system (n_particles, dim, species, "
                           f"diameters); {system.name!r} is not one")
    periodic = system.box is not None
    if architecture == "periodic_equivariant" and not (periodic and coordinates == "torus"):
        raise RuntimeError(f"architecture 'periodic_equivariant' needs a periodic particle system in torus "
                           f"coordinates; {system.name!r} has box={system.box!r}, coordinates={coordinates!r}")
    if architecture == "equivariant_flow_matching" and (periodic or coordinates != "cartesian"):
        raise RuntimeError(f"architecture 'equivariant_flow_matching' needs a cluster (no box) in cartesian "
                           f"coordinates; {system.name!r} has box={system.box!r}, coordinates={coordinates!r}")
    return {"architecture": architecture, "n_particles": int(system.n_particles), "spatial_dim": int(system.dim),
            "species": [int(v) for v in system.species.tolist()],
            "diameters": [float(v) for v in system.diameters.tolist()]}


def state_balance(system: System, data: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    """Weights 1/(count of its state) per configuration, so each state present in ``data``
    (and the unlabelled ones, state −1, as one more group) is drawn equally often; and the
    counts by state name."""
    group = system.state_of(data.to(dtype=system.dtype, device="cpu")).long() + 1
    counts = torch.bincount(group, minlength=len(system.states) + 1).double()
    weights = (1.0 / counts)[group]
    names = ("none",) + tuple(system.states)
    return weights.to(data.device), {name: int(n) for name, n in zip(names, counts.tolist()) if name != "none" or n}


@dataclass
class FlowSampler(Sampler):
    """Normalizing-flow Boltzmann generator (RealNVP / circular splines / internal coordinates,
    permutation-equivariant couplings on the torus, equivariant flow matching)."""

    name: ClassVar[str] = "flow"
    description: ClassVar[str] = ("normalizing-flow Boltzmann generator: Gaussian or thermal base, ML+KL "
                                  "training charged to setup, reweighting or flow-MCMC")

    mode: str = param("reweight", "'reweight' (weighted i.i.d. flow samples) or 'mcmc' (independence MH chains)")
    base: str = param("gaussian", "'gaussian' (N(0,1), uniform on angles) or 'thermal' (the system at base_temperature)")
    base_temperature: float = param(3.0, "thermal base: T_base / T_target (> 1)")
    base_sampler: str = param("mc", "thermal base chains: 'mc' (Metropolis) or 'md' (BAOAB)")
    base_step: float = param(0.1, "thermal base: MC step σ (adapted in warm-up) or MD time step")
    base_chains: int = param(256, "thermal base: chains run in parallel")
    base_stride: int = param(10, "thermal base: steps of each chain between two draws")
    base_warmup: int = param(500, "thermal base: warm-up steps of every chain (setup)")
    base_pool: int = param(10_000, "thermal base: configurations drawn for training (setup)")
    architecture: str = param("mlp", "'mlp' (couplings with MLP conditioners), 'periodic_equivariant' "
                                     "(permutation-equivariant couplings on the torus, for periodic particle "
                                     "systems) or 'equivariant_flow_matching' (an E(n)-equivariant continuous "
                                     "flow trained by flow matching on the data, no KL term, for clusters)")
    coordinates: str = param("auto", "'auto', 'cartesian', 'torus' (periodic box) or 'internal' (molecules)")
    n_layers: int = param(8, "coupling layers")
    hidden: int = param(64, "width of the conditioner networks")
    n_hidden: int = param(2, "hidden layers of each conditioner")
    n_bins: int = param(8, "bins of the circular splines (periodic coordinates)")
    ode_tol: float = param(1e-5, "equivariant_flow_matching: relative and absolute tolerance of the "
                                 "adaptive ODE solver (dopri5) when sampling and evaluating log q")
    data_sampler: str = param("md", "training data at the target: 'md' (BAOAB), 'mc' (Metropolis), 'none', "
                                    "or any registered sampler with unweighted chains, e.g. 'pt'")
    data_params: dict | None = param(None, "parameters of a registered data_sampler (not 'md' or 'mc')")
    data_starts: str = param("initial", "data ('md', 'mc'): chains start from 'initial' (system.sample_initial) "
                                        "or 'states' (system.sample_states: every metastable state)")
    data_step: float = param(0.01, "data: MD time step or MC step σ")
    data_chains: int = param(64, "data ('md', 'mc'): chains, started as data_starts says")
    data_steps: int = param(2000, "data: steps per chain (first 10 % discarded)")
    data_thin: int = param(10, "data: keep every data_thin-th state")
    balance_states: bool = param(False, "ML: draw the data of each of the system's states equally often "
                                        "(the reweighting restores the Boltzmann populations)")
    ml_weight: float = param(1.0, "weight of the maximum-likelihood loss")
    kl_weight: float = param(1.0, "final weight of the energy-based (reverse) KL loss")
    kl_start: float = param(0.2, "training progress at which the KL weight starts to ramp up")
    kl_ramp: float = param(0.3, "training progress over which the KL weight ramps to kl_weight")
    train_steps: int = param(2000, "maximum optimizer steps; 0: no training (a coupling flow then stays the "
                                   "identity map it starts as — a control)")
    batch_size: int = param(256, "batch size of each loss")
    lr: float = param(1e-3, "Adam learning rate")
    clip_norm: float = param(10.0, "gradient-norm clipping threshold")
    holdout: float = param(0.1, "fraction of data chains held out for early stopping")
    eval_every: int = param(100, "steps between held-out evaluations")
    patience: int = param(10, "held-out evaluations without improvement before stopping")
    force_clip: float = param(10.0, "KL loss: each sample's force is clipped to force_clip × the batch's median force norm")
    train_fraction: float = param(0.5, "fraction of the cell's budget that setup (data + training) may use")
    max_train_s: float | None = param(None, "optional cap on the setup's wall seconds (data + training)")
    defensive: float = param(0.05, "Gaussian base, sampling: weight α of a τ-times wider latent component "
                                   "(defensive importance sampling; bounds the weights); 0 disables")
    defensive_scale: float = param(2.0, "Gaussian base, sampling: width τ of the defensive component")
    sample_batch: int = param(4096, "reweight: flow samples per batch")
    n_chains: int = param(64, "mcmc: independent chains")
    thin: int = param(1, "mcmc: keep one state every `thin` steps")
    p_local: float = param(0.0, "mcmc: probability of a local Metropolis move instead of a flow proposal")
    local_step: float = param(0.1, "mcmc: step σ of the local moves")
    precision: str = param("float32", "flow arithmetic: 'float32' or 'float64'")
    device: str = param("cpu", "device of the flow: 'cpu' or 'cuda' (energies stay on the system's device)")
    train_seed: int | None = param(None, "seed of the setup phase; None: drawn from the cell's generator")
    reuse_dir: str | None = param(None, "directory caching trained flows for reuse across cells")
    charge_reused_setup: bool = param(True, "charge a reused flow's original setup cost to this cell")

    def __post_init__(self) -> None:
        choices = {"mode": ("reweight", "mcmc"), "base": ("gaussian", "thermal"), "architecture": ARCHITECTURES,
                   "base_sampler": ("mc", "md"), "coordinates": ("auto",) + COORDINATES,
                   "data_starts": ("initial", "states"), "precision": tuple(PRECISIONS)}
        for field, valid in choices.items():
            value = getattr(self, field)
            require(value in valid, field, f"must be one of {', '.join(map(repr, valid))}, got {value!r}")
        positive_ints = ("base_chains", "base_stride", "base_pool", "n_layers", "hidden", "n_bins",
                         "data_chains", "data_steps", "data_thin", "batch_size",
                         "eval_every", "patience", "sample_batch", "n_chains", "thin")
        for field in positive_ints:
            require(getattr(self, field) >= 1, field, f"must be an integer >= 1, got {getattr(self, field)}")
        require(self.base_warmup >= 0, "base_warmup", f"must be >= 0, got {self.base_warmup}")
        require(self.train_steps >= 0, "train_steps", f"must be an integer >= 0, got {self.train_steps}")
        data_choices = BUILTIN_DATA + ("none",) + tuple(n for n in registry("samplers").names()
                                                         if n not in BUILTIN_DATA + (self.name,))
        require(self.data_sampler in data_choices, "data_sampler",
                f"must be one of {', '.join(map(repr, data_choices))}, got {self.data_sampler!r}")
        require(self.data_params is None or isinstance(self.data_params, dict), "data_params",
                f"must be a table of the data sampler's parameters, got {self.data_params!r}")
        if self.data_params and self.data_sampler in BUILTIN_DATA + ("none",):
            raise ParameterError("data_params", f"only a registered data_sampler takes parameters "
                                                f"(data_sampler = {self.data_sampler!r})")
        if self.data_sampler not in BUILTIN_DATA + ("none",):
            try:
                get_sampler(self.data_sampler, **(self.data_params or {}))
            except ParameterError as exc:
                raise ParameterError(f"data_params.{exc.field}", exc.message) from exc
        require(self.n_hidden >= 0, "n_hidden", f"must be >= 0, got {self.n_hidden}")
        require(self.n_layers >= 2, "n_layers", f"must be >= 2 so that every coordinate is transformed, got {self.n_layers}")
        require(self.base_temperature > 1.0, "base_temperature", f"must be > 1 (hotter than the target), got {self.base_temperature}")
        for field in ("base_step", "data_step", "lr", "clip_norm", "local_step", "force_clip", "ode_tol"):
            require(getattr(self, field) > 0, field, f"must be > 0, got {getattr(self, field)}")
        for field in ("ml_weight", "kl_weight", "kl_start", "kl_ramp"):
            require(getattr(self, field) >= 0, field, f"must be >= 0, got {getattr(self, field)}")
        require(self.ml_weight > 0 or self.kl_weight > 0, "kl_weight", "ml_weight and kl_weight cannot both be 0")
        require(self.kl_start <= 1.0, "kl_start", f"must be in [0, 1], got {self.kl_start}")
        require(self.ml_weight == 0 or self.data_sampler != "none", "data_sampler",
                "ml_weight > 0 needs training data: set data_sampler to 'md' or 'mc' (or ml_weight = 0)")
        require(not self.balance_states or self.data_sampler != "none", "balance_states",
                "needs training data (data_sampler is 'none')")
        require(0.0 <= self.holdout < 1.0, "holdout", f"must be in [0, 1), got {self.holdout}")
        require(0.0 < self.train_fraction < 1.0, "train_fraction", f"must be in (0, 1), got {self.train_fraction}")
        require(self.max_train_s is None or self.max_train_s > 0, "max_train_s", f"must be > 0 or None, got {self.max_train_s}")
        require(0.0 <= self.p_local <= 1.0, "p_local", f"must be in [0, 1], got {self.p_local}")
        require(0.0 <= self.defensive < 1.0, "defensive", f"must be in [0, 1), got {self.defensive}")
        require(self.defensive_scale >= 1.0, "defensive_scale", f"must be >= 1, got {self.defensive_scale}")
        require(self.device == "cpu" or self.device.startswith("cuda"), "device",
                f"must be 'cpu' or 'cuda[:n]', got {self.device!r}")
        if self.architecture == "equivariant_flow_matching":
            require(self.base == "gaussian", "base", "equivariant_flow_matching uses its mean-free Gaussian base; "
                                                     "set base = 'gaussian'")
            require(self.data_sampler != "none", "data_sampler",
                    "equivariant_flow_matching trains on data: set data_sampler to 'md', 'mc' or a registered sampler")
        require(self.mode == "reweight" or self.base == "gaussian", "mode",
                "'mcmc' needs base = 'gaussian': proposals drawn from a thermal base's Markov chain are "
                "correlated, so independence Metropolis-Hastings is not exact with them; use mode = 'reweight', "
                "or the flow_swap sampler (an exact learned replica exchange with a partner at the base temperature)")
        require(self.reuse_dir is None or self.train_seed is not None, "train_seed",
                "reuse_dir needs a fixed train_seed (with None every seed trains its own flow)")

    def budget_warnings(self, budget: Budget) -> list[str]:
        """The MD/MC data may use half of the setup's share, 0.5·train_fraction·max_evals
        (:meth:`_make_data`); warn when data_chains·(data_steps + 1) evaluations exceed it."""
        if self.data_sampler not in BUILTIN_DATA or budget.max_evals is None:
            return []
        wanted, allowed = self.data_chains * (self.data_steps + 1), 0.5 * self.train_fraction * budget.max_evals
        if wanted <= allowed:
            return []
        return [f"the flow's training data (data_chains × (data_steps + 1) = {wanted:.3g} evaluations) exceed "
                f"half of its setup share (0.5 × train_fraction × max_evals = {allowed:.3g}) and will be cut "
                f"to about {allowed / wanted:.0%}: raise max_evals or train_fraction, or lower data_steps"]

    # ------------------------------------------------------------------ run
    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        if self.device != "cpu" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r} requested but torch.cuda.is_available() is False")
        bg, info = self.setup(system, budget, generator)
        bg.eval()
        if isinstance(bg.base, GaussianBase):  # sampling proposal: the defensive mixture
            bg.base = bg.base.with_defensive(self.defensive, self.defensive_scale)
        if self.mode == "reweight":
            yield from self._reweight(bg, system, budget, generator, info)
        else:
            yield from self._mcmc(bg, system, budget, generator, info)

    # ---------------------------------------------------------------- setup
    def training_key(self, system: System, budget: Budget) -> dict[str, Any]:
        flow_params = {k: v for k, v in self.params().items() if k not in SAMPLING_ONLY}
        return {"system": {"name": system.name, "params": system.params()}, "flow": flow_params,
                "budget": budget.as_dict(), "format": FORMAT}

    def setup(self, system: System, budget: Budget, generator: torch.Generator):
        """Data, base, training — or a cached flow — all charged to the ledger's setup."""
        ledger = system.ledger
        train_gen = generator if self.train_seed is None else cell_generator(system, self.train_seed)
        path = None
        if self.reuse_dir is not None and self.train_seed is not None:
            path = Path(self.reuse_dir) / f"flow-{cache_key(self.training_key(system, budget))}.pt"
            if path.exists():
                with ledger.setup_phase():
                    return self._load(path, system)
        # Starting configurations first, each call in its own setup block: a system whose
        # sample_initial opens its own ledger.setup_phase() (relaxation) ends the phase on
        # exit, which would send the rest of a nested setup to the sampling cost.
        starts = {}
        for key, n, wanted, draw in (
                ("data", self.data_chains, self.data_sampler in BUILTIN_DATA,
                 system.sample_states if self.data_starts == "states" else system.sample_initial),
                ("base", self.base_chains, self.base == "thermal", system.sample_initial)):
            if wanted:
                with ledger.setup_phase():
                    starts[key] = draw(n, train_gen)
        with ledger.setup_phase():
            bg, info, base_state = self._train(system, budget, train_gen, starts)
        if path is not None:
            cost = dataclasses.asdict(system.ledger.setup)
            save_flow(path, bg.state_dict(), bg.spec,
                      {"setup_cost": cost, "training": info, "key": self.training_key(system, budget)},
                      base_state)
            info = {**info, "flow_saved_to": str(path)}
        return bg, info

    def _load(self, path: Path, system: System):
        state_dict, spec, meta, base_state = load_flow(path)
        bg = BoltzmannGenerator(spec).to(dtype=PRECISIONS[self.precision], device=self.device)
        bg.load_state_dict(state_dict)
        if base_state:
            bg.base = ThermalBase.restore(system, 1.0 / self.base_temperature, self.base_sampler,
                                          self.base_stride, base_state)
        cost = meta["setup_cost"]
        if self.charge_reused_setup:
            system.ledger.charge(energy=cost["energy_evals"], forces=cost["force_evals"])
            system.ledger.setup.wall_s += cost["wall_s"]
        info = {**meta["training"], "flow_reused_from": str(path),
                "reused_setup": {**cost, "charged": self.charge_reused_setup,
                                 "note": "setup cost of the original training, charged to this cell's setup"
                                 if self.charge_reused_setup else "not charged: training cost amortized"}}
        return bg, info

    def _train(self, system: System, budget: Budget, gen: torch.Generator, starts: dict):
        ledger, started = system.ledger, time.perf_counter()
        data, data_u, data_info = self._make_data(system, budget, gen, starts.get("data"))
        base, pool = None, None
        if self.base == "thermal":
            base = ThermalBase(system, 1.0 / self.base_temperature, starts["base"], self.base_sampler,
                               self.base_step, self.base_stride, gen)
            warm = 0
            while warm < self.base_warmup and not self._setup_spent(budget, ledger, 0.25):
                chunk = min(20, self.base_warmup - warm)  # 20: the MC step-adaptation window
                base.advance(chunk, gen, adapt=True)
                warm += chunk
            draws = []
            while sum(len(u) for _, u in draws) < self.base_pool and not (draws and self._setup_spent(budget, ledger, 0.5)):
                draws.append(base.draw(min(self.base_chains, self.base_pool - sum(len(u) for _, u in draws)), gen))
            pool = (torch.cat([x for x, _ in draws]), torch.cat([u for _, u in draws]))
            base.load_state(base.state())  # drop draws left over in the buffer: a reused flow restarts here too
        spec = self._spec(system)
        stats_source = data if data is not None else (pool[0] if pool is not None else None)
        mean = std = None
        if spec["coordinates"] != "torus":
            if stats_source is None:
                raise RuntimeError("the flow's standardization needs configurations: set data_sampler "
                                   "to 'md' or 'mc', or use base = 'thermal'")
            probe = BoltzmannGenerator(spec).to(dtype=torch.float64, device=self.device)  # coordinates only
            features = probe.features(stats_source.to(dtype=torch.float64, device=self.device))
            mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
        bg = BoltzmannGenerator(spec, mean, std, generator=gen).to(dtype=PRECISIONS[self.precision],
                                                                   device=self.device)
        if base is not None:
            bg.base = base
        settings = TrainSettings(
            steps=self.train_steps, batch_size=self.batch_size, lr=self.lr, clip_norm=self.clip_norm,
            ml_weight=self.ml_weight if data is not None else 0.0, kl_weight=self.kl_weight,
            kl_start=self.kl_start, kl_ramp=self.kl_ramp, eval_every=self.eval_every,
            patience=self.patience, force_clip=self.force_clip)
        data_train = data_val = base_train = base_val = train_weights = val_weights = None
        if data is not None:
            data_train, data_val = self._split(data.to(dtype=bg.dtype, device=self.device), data_info["chains"])
            if self.balance_states:
                if not system.states:
                    raise RuntimeError(f"balance_states: {system.name!r} defines no states (System.states)")
                train_weights, data_info["states"] = state_balance(system, data_train)
                val_weights = None if data_val is None else state_balance(system, data_val)[0]
        if pool is not None:
            n_val = max(1, int(round(self.holdout * len(pool[1])))) if self.holdout > 0 else 0
            base_train = (pool[0][n_val:], pool[1][n_val:])
            base_val = (pool[0][:n_val], pool[1][:n_val]) if n_val else None
        elif self.kl_weight > 0:  # a fixed held-out latent batch, large enough to see rare states
            base_val = bg.draw_base(4 * self.batch_size, gen)

        def should_stop():
            if budget.used(ledger) >= self.train_fraction:
                return "budget"
            if self.max_train_s is not None and time.perf_counter() - started >= self.max_train_s:
                return "max_train_s"
            if getattr(ledger, "past_deadline", lambda: False)():
                return "deadline"
            return None

        if self.architecture == "equivariant_flow_matching":  # data only: no energies, no KL
            from boltzbench.samplers.flows.flow_matching import train_flow_matching
            info = train_flow_matching(bg, settings, gen, data_train=data_train, data_val=data_val,
                                       data_weights=train_weights, should_stop=should_stop)
        else:
            info = train(bg, system, settings, gen, data_train=data_train, data_val=data_val,
                         base_train=base_train, base_val=base_val, data_weights=train_weights,
                         val_weights=val_weights, should_stop=should_stop,
                         budget_progress=lambda: self._setup_progress(budget, ledger, started))
        info = {**info, "data": data_info, "coordinates": spec["coordinates"],
                "setup_wall_s": time.perf_counter() - started}
        if base is not None:
            info["base"] = {"beta": base.beta, "step": base.step, "acceptance": base.acceptance(),
                            "warmup_steps": warm, "pool": len(pool[1])}
        return bg, info, (base.state() if base is not None else None)

    def _setup_progress(self, budget: Budget, ledger, started: float) -> float:
        """Fraction of the setup's allowance spent: the binding one of the budget share and
        ``max_train_s`` (so the loss schedule completes whichever limit stops training)."""
        progress = budget.used(ledger) / self.train_fraction
        if self.max_train_s is not None:
            progress = max(progress, (time.perf_counter() - started) / self.max_train_s)
        return progress

    def _setup_spent(self, budget: Budget, ledger, share: float) -> bool:
        """Has setup used ``share`` of its training budget (or passed the runner's deadline)?"""
        past = getattr(ledger, "past_deadline", lambda: False)()
        return past or budget.used(ledger) >= share * self.train_fraction

    def _split(self, data: torch.Tensor, n_chains: int):
        """Hold out whole chains: data are (T·C, dof) in time-major order."""
        n_val = int(round(self.holdout * n_chains))
        if n_val == 0 or n_val >= n_chains:
            return data, None
        per_chain = data.reshape(-1, n_chains, data.shape[-1])
        return (per_chain[:, n_val:].reshape(-1, data.shape[-1]),
                per_chain[:, :n_val].reshape(-1, data.shape[-1]))

    def _make_data(self, system: System, budget: Budget, gen: torch.Generator, x: torch.Tensor | None):
        """Target-temperature MD/MC data (see the module docstring). Stops early (and says so)
        if it would eat more than half of the training budget."""
        if self.data_sampler == "none":
            return None, None, {"sampler": "none", "chains": 0, "samples": 0}
        if self.data_sampler not in BUILTIN_DATA:
            return self._data_from_sampler(system, budget, gen)
        ledger = system.ledger
        if self.data_sampler == "md":
            u, f = system.energy_and_forces(x)
            v = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        else:
            u = system.energy(x)
        burn = self.data_steps // 10
        kept_x, kept_u, truncated, steps = [], [], False, 0
        for steps in range(1, self.data_steps + 1):
            if self.data_sampler == "md":
                x, v, u, f = baoab_step(x, v, f, system, self.data_step, 1.0, 1.0, gen)
            else:
                x, u, _ = metropolis_step(x, u, system, self.data_step, gen)
            if steps > burn and steps % self.data_thin == 0:
                kept_x.append(x.clone())
                kept_u.append(u.clone())
            if self._setup_spent(budget, ledger, 0.5):
                truncated = True
                break
        if not kept_x:
            raise RuntimeError(f"training data: the budget allowed only {steps} steps, fewer than the "
                               f"burn-in; raise the budget or train_fraction, or lower data_steps")
        data, data_u = torch.cat(kept_x), torch.cat(kept_u)
        finite = torch.isfinite(data_u) & torch.isfinite(data).all(-1)
        if not finite.all():
            raise RuntimeError(f"training data: {int((~finite).sum())} non-finite configurations from "
                               f"{self.data_sampler!r}; lower data_step")
        return data, data_u, {"sampler": self.data_sampler, "chains": self.data_chains, "steps": steps,
                              "samples": len(data_u), "truncated_by_budget": truncated}

    def _data_from_sampler(self, system: System, budget: Budget, gen: torch.Generator):
        """Data from the registered sampler ``data_sampler`` with ``data_params``, run on half
        of the setup's share of the budget (as the MD/MC data at most use): the kept
        states of its last snapshot, which must be unweighted chains (T, C, dof)."""
        sampler = get_sampler(self.data_sampler, **(self.data_params or {}))
        ledger = system.ledger
        limits = {}
        if budget.max_evals is not None:
            limits["max_evals"] = ledger.total_evals + 0.5 * self.train_fraction * budget.max_evals
        if budget.max_wall_s is not None:
            limits["max_wall_s"] = ledger.total_wall_s + 0.5 * self.train_fraction * budget.max_wall_s
        last = None
        for last in sampler.run(system, Budget(**limits, n_snapshots=1), gen):
            pass
        if last is None or last.log_weights is not None:
            raise RuntimeError(f"data_sampler {self.data_sampler!r} must yield unweighted chains; it yielded "
                               f"{'nothing' if last is None else 'weighted samples'}")
        n_kept, n_chains = last.positions.shape[:2]
        data = last.positions.reshape(n_kept * n_chains, -1)
        data_u = last.energies.reshape(-1)
        return data, data_u, {"sampler": self.data_sampler, "params": sampler.params(), "chains": n_chains,
                              "samples": len(data_u), "diagnostics": last.diagnostics}

    def _spec(self, system: System) -> dict[str, Any]:
        coordinates = self.coordinates
        bonds = None
        if coordinates in ("auto", "internal"):
            bonds = bond_graph(system) if system.box is None else None
        if coordinates == "auto":
            coordinates = "torus" if system.box is not None else ("internal" if bonds else "cartesian")
        spec = {"dof": system.dof, "coordinates": coordinates, "n_layers": self.n_layers,
                "hidden": self.hidden, "n_hidden": self.n_hidden, "n_bins": self.n_bins}
        if coordinates == "torus":
            if system.box is None:
                raise RuntimeError(f"coordinates 'torus' need a periodic system; {system.name!r} has no box")
            box = torch.as_tensor(system.box, dtype=torch.float64).flatten()
            spec["box"] = box.repeat(system.dof // len(box)).tolist() if len(box) < system.dof else box.tolist()
        if coordinates == "internal":
            if not bonds or system.dof % 3:
                raise RuntimeError(f"coordinates 'internal' need a 3D molecule with a bond graph; "
                                   f"{system.name!r} has none")
            spec["zmatrix"] = zmatrix_from_bonds(system.dof // 3, bonds)
        if self.architecture != "mlp":
            spec.update(particle_spec(system, self.architecture, coordinates))
            if self.architecture == "equivariant_flow_matching":
                spec["ode_tol"] = self.ode_tol
        return spec

    # -------------------------------------------------------------- sampling
    def _flow_batch(self, bg: BoltzmannGenerator, system: System, n: int, gen: torch.Generator):
        """n flow samples on the system's device (no copy when the flow is there too):
        positions in the flow's dtype, u and log w (float64), finite mask.

        The positions stay the flow's own numbers (float32 by default) and are cast to the
        system's dtype only to evaluate u: storing a float64 copy of exactly the same values
        doubled the memory of a reweighting cell (10⁷ alanine samples: 5.6 GB each copy)."""
        device = device_of(system)
        with torch.no_grad():
            x, log_q = bg.push_base(bg.draw_base(n, gen))
            x = x.to(device=device)
            u = energy(system, x)
            log_q = log_q.to(dtype=torch.float64, device=device)
        log_w = -u - log_q
        finite = torch.isfinite(log_w) & torch.isfinite(x).all(-1)
        return x, u, log_w, finite

    def _per_sample_cost(self) -> float:
        return 1.0 + (self.base_stride if self.base == "thermal" else 0.0)

    def _reweight(self, bg, system, budget, gen, info) -> Iterator[Snapshot]:
        ledger, schedule = system.ledger, budget.schedule()
        xs, us, log_ws = [], [], []
        n_total = n_bad = 0
        while True:
            n = self.sample_batch
            if budget.max_evals is not None:
                remaining = budget.max_evals - ledger.total_evals
                n = int(max(1, min(n, math.ceil(remaining / self._per_sample_cost()))))
            x, u, log_w, finite = self._flow_batch(bg, system, n, gen)
            n_total += n
            n_bad += int((~finite).sum())
            if n_bad > MAX_NONFINITE_FRACTION * n_total and n_total >= 10 * self.sample_batch:
                raise RuntimeError(f"the flow produced {n_bad} of {n_total} samples with non-finite energy "
                                   f"or log-density: the trained flow is unusable")
            xs.append(x[finite])
            us.append(u[finite])
            log_ws.append(log_w[finite])
            kept = sum(len(u) for u in us)
            due = bool(kept) and schedule.due(ledger)
            exhausted = budget.exhausted(ledger)  # after due: one clock reading, so both agree
            if due or (kept and exhausted):
                positions, energies, log_w_all = torch.cat(xs), torch.cat(us), torch.cat(log_ws)
                xs, us, log_ws = [positions], [energies], [log_w_all]
                shifted = log_w_all - log_w_all.max()
                ess = kish(shifted)
                diagnostics = {
                    "mode": "reweight", "base": self.base, "n_samples": len(energies),
                    "n_drawn": n_total, "n_nonfinite": n_bad, "kish_ess": ess,
                    "ess_fraction": ess / n_total,  # of every sample drawn: a dropped one has weight zero
                    "log_z": float(torch.logsumexp(log_w_all, 0) - math.log(len(energies))),
                    **self._common(bg, info)}
                yield Snapshot(positions=positions[None].cpu(), energies=energies[None].cpu(),
                               log_weights=shifted[None].cpu(),
                               cost=ledger.as_dict(), diagnostics=diagnostics)
            if exhausted:
                if not kept:
                    raise RuntimeError(f"the budget ended with no finite flow sample ({n_bad} non-finite)")
                return

    def _log_w_of(self, bg, system, x, u):
        """log w = −u − log q at given configurations (Gaussian base: no energy needed for q)."""
        with torch.no_grad():
            log_q = bg.log_q(x).to(dtype=torch.float64, device=u.device)
        return -u - log_q

    def _mcmc(self, bg, system, budget, gen, info) -> Iterator[Snapshot]:
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        c = self.n_chains
        x, u, log_w, finite = self._flow_batch(bg, system, c, gen)
        x = x.to(system.dtype)  # the chains' local moves work in the system's dtype
        tries = 1
        while not finite.all():  # start every chain from a finite flow sample
            if tries >= 100:
                raise RuntimeError(f"after {tries} batches, {int((~finite).sum())} chains still have no "
                                   f"finite flow sample to start from")
            x2, u2, lw2, f2 = self._flow_batch(bg, system, c, gen)
            take = ~finite & f2
            x, u, log_w = torch.where(take[:, None], x2, x), torch.where(take, u2, u), torch.where(take, lw2, log_w)
            finite, tries = finite | f2, tries + 1
        flow_acc = flow_moves = local_acc = local_moves = 0.0
        n_bad = 0
        while not budget.exhausted(ledger):
            if self.p_local > 0 and float(torch.rand((), generator=gen, device=gen.device)) < self.p_local:
                x, u, accept = metropolis_step(x, u, system, self.local_step, gen)
                if accept.any():
                    log_w = torch.where(accept, self._log_w_of(bg, system, x, u), log_w)
                local_acc += float(accept.double().mean())
                local_moves += 1
            else:
                x2, u2, lw2, f2 = self._flow_batch(bg, system, c, gen)
                n_bad += int((~f2).sum())
                log_uniform = torch.log(torch.rand(c, generator=gen, dtype=torch.float64, device=gen.device)
                                        ).to(log_w.device)
                accept = f2 & (log_uniform < lw2 - log_w)
                x = torch.where(accept[:, None], x2, x)
                u, log_w = torch.where(accept, u2, u), torch.where(accept, lw2, log_w)
                flow_acc += float(accept.double().mean())
                flow_moves += 1
            trace.step(x, u)
            if trace.ready and schedule.due(ledger):  # a snapshot due before the first kept sample waits
                yield trace.snapshot(ledger, {
                    "mode": "mcmc", "base": self.base,
                    "flow_acceptance": flow_acc / flow_moves if flow_moves else None,
                    "local_acceptance": local_acc / local_moves if local_moves else None,
                    "n_nonfinite": n_bad, **self._common(bg, info)})
        if not trace.ready:
            trace.snapshot(ledger, {})  # raises: the budget ended before the first kept sample

    def _common(self, bg, info) -> dict[str, Any]:
        out = {"training": {k: v for k, v in info.items() if k not in ("flow_reused_from", "reused_setup")}}
        for key in ("flow_reused_from", "reused_setup"):
            if key in info:
                out[key] = info[key]
        if isinstance(bg.base, ThermalBase):
            out["base_acceptance"] = bg.base.acceptance()
        return out
