"""Swap Monte Carlo for particle systems: single-particle displacements and identity swaps.

Swap Monte Carlo (T. S. Grigera & G. Parisi, Phys. Rev. E 63, 045102(R) (2001); A. Ninarello,
L. Berthier & D. Coslovich, Phys. Rev. X 7, 021039 (2017); L. Berthier et al.,
Phys. Rev. Lett. 116, 238002 (2016)). Every attempted move is, with probability ``p_swap``,
an exchange of the identities (species or diameters) of two particles i ≠ j drawn uniformly
at random, and otherwise a displacement of one particle drawn uniformly at random by a
vector uniform in the cube [−δ, δ]^d, wrapped into the periodic box. Both proposals are
symmetric and are accepted with the plain Metropolis rule min(1, exp(−β·Δu)) (reduced
energies; β = 1 is the system's target temperature), so every walker's exp(−β·u) is
invariant; the choice between them is state-independent, and a mixture of invariant kernels
is invariant (Tierney, Ann. Statist. 22, 1701 (1994)). A *sweep* is N attempted moves per
walker (N = number of particles), sequential within a walker, all walkers batched.

Conventions:

* Identities stay attached to particle indices (the system's ``species``/``diameters`` are
  fixed), so an accepted swap exchanges the *positions* of i and j in the configuration;
  ``system.energy(x)`` of every returned configuration is then its energy. Δu comes from the
  system's local-energy API: ``energy_change_displace`` (charged 1/N evaluation per walker)
  and ``energy_change_swap`` (2/N); a sweep of N displacements costs one evaluation.
* A swap proposed between two identical particles (same species and same diameter) would not
  change the physical state; it is *skipped*: not attempted, not charged, not counted in
  ``acceptance_swap``, counted in ``swaps_skipped``. (Skipping is the identity kernel, which
  keeps the chain exact; the pair is not redrawn.) With KA 80:20 about 2/3 of the proposed
  pairs are skipped, with the ternary 2D mixture about 2/5, with polydisperse systems none.
* All random numbers of a sweep are drawn up front from the torch generator
  (:func:`draw_sweep`), so the two backends below consume the same stream and, for the same
  seed, follow the same trajectory (up to rounding in Δu).

Backends. ``torch`` calls the system's local-energy API, one vectorized call per attempt
(sequential attempts make it latency-bound: tens of µs per attempt). ``numba`` runs a whole
sweep of all walkers in one compiled loop (:func:`_sweep_kernel`) with the system's pair
table — the same kernels as ``systems/particles.py``: truncated Lennard-Jones, the
Ninarello–Berthier–Coslovich soft sphere and the DW-4 double well, r² clamped at r²_min —
and charges the ledger exactly as the local-energy API would. Positions are stored
coordinate-major (d, N) per walker and the loops over partners are branch-free, so that they
vectorize; measured 50-170× faster than the torch backend and cheaper than one MD step of the
same system and batch (``benchmarks/mc_sweep.py``). ``auto`` uses numba when it is installed
(openmmtools brings it), the system lives on the CPU and its pair potential has a compiled
twin without a one-body term (LJ-13's restraint needs the torch path).

Warm-up (a fraction ``warmup`` of the budget, charged, samples discarded): every
``TUNE_WINDOW`` sweeps the displacement half-width δ (one for all chains) is updated towards
``target_acceptance`` by :func:`boltzbench.samplers.moves.tune`; it is frozen in production.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from boltzbench.contracts import Budget, ParameterError, Snapshot, System, param, require
from boltzbench.samplers.chains import ChainSampler, ChainTrace
from boltzbench.samplers.moves import Move, Walkers, displacement_attempt, tune

try:  # numba comes with openmmtools; without it the torch backend runs
    import numba

    # reassociation lets the loops over partners vectorize; no nnan/ninf: r² = ∞ marks
    # excluded partners and NaN energy changes must stay rejected
    _jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "arcp", "nsz"})
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    def _jit(f):
        return f
    HAVE_NUMBA = False

BACKENDS = ("auto", "numba", "torch")
TUNE_WINDOW = 10  # sweeps between two step-size updates during warm-up
#: Columns of the per-walker move counts.
DISP_ATTEMPTS, DISP_ACCEPTED, SWAP_ATTEMPTS, SWAP_ACCEPTED, SWAPS_SKIPPED = range(5)


# --------------------------------------------------------------------------- checks


def check_particle_system(system: System, p_swap: float) -> None:
    """Raise unless ``system`` has the local-energy API, and several species or diameters
    when swaps are requested (``p_swap`` > 0)."""
    if not all(hasattr(system, a) for a in ("energy_change_displace", "energy_change_swap", "swappable")):
        raise ParameterError("system", f"swap_mc needs a particle system with local energies "
                                       f"(energy_change_displace / energy_change_swap); {system.name!r} has none")
    if p_swap > 0 and not system.swappable:
        raise ParameterError("p_swap", f"system {system.name!r} has a single species and no polydispersity: swap "
                                       f"moves need several species or polydisperse diameters; use p_swap = 0 "
                                       f"(displacements only) for this system")


def identical_pairs(system: System) -> torch.Tensor:
    """(N, N) bool: particles i, j of the same species and the same diameter."""
    s, d = system.species.cpu(), system.diameters.cpu()
    return (s[:, None] == s[None, :]) & (d[:, None] == d[None, :])


# --------------------------------------------------------------------------- randoms


@dataclass
class SweepRandoms:
    """Random numbers of one sweep of B walkers, A = N attempts each, all float64 on the CPU:
    ``swap`` (A, B) bool, ``i``/``j`` (A, B) long with j ≠ i, ``delta`` (A, B, d) uniform in
    [−δ_b, δ_b]^d, ``log_uniform`` (A, B)."""

    swap: torch.Tensor
    i: torch.Tensor
    j: torch.Tensor
    delta: torch.Tensor
    log_uniform: torch.Tensor


def draw_sweep(n_particles: int, dim: int, step: torch.Tensor, p_swap: float,
               generator: torch.Generator) -> SweepRandoms:
    """All random numbers of one sweep (N attempts) of B = len(step) walkers, in a fixed order."""
    a, b = n_particles, step.shape[0]
    f64 = torch.float64
    swap = torch.rand((a, b), generator=generator, dtype=f64) < p_swap
    i = torch.randint(0, n_particles, (a, b), generator=generator)
    j = torch.randint(0, n_particles - 1, (a, b), generator=generator)
    j = j + (j >= i).long()                      # uniform over the N − 1 particles ≠ i
    delta = (2 * torch.rand((a, b, dim), generator=generator, dtype=f64) - 1) * step.to(f64)[:, None]
    log_uniform = torch.log(torch.rand((a, b), generator=generator, dtype=f64))
    return SweepRandoms(swap, i, j, delta, log_uniform)


# --------------------------------------------------------------------------- torch backend


def swap_attempt(x: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, system: System,
                 i: torch.Tensor, j: torch.Tensor, log_uniform: torch.Tensor) -> torch.Tensor:
    """One identity-swap attempt per walker, in place on x (B, dof) and u (B,): accepted
    (log_uniform < −β·Δu) swaps exchange the positions of i[b] and j[b]. Δu from
    ``system.energy_change_swap`` (charged 2/N per walker). Returns the accepted mask."""
    b = x.shape[0]
    pos = x.view(b, system.n_particles, system.dim)
    du = system.energy_change_swap(x, i, j).to(u.dtype)
    accept = log_uniform < -beta * du
    rows = torch.arange(b, device=x.device)[accept]
    ia, ja = i[accept], j[accept]
    pi, pj = pos[rows, ia].clone(), pos[rows, ja].clone()
    pos[rows, ia], pos[rows, ja] = pj, pi
    u += torch.where(accept, du, torch.zeros_like(du))
    return accept


def _on_subset(mask: torch.Tensor, attempt, x, u, beta, *per_walker) -> torch.Tensor:
    """Run ``attempt(x, u, beta, *per_walker)`` on the walkers in ``mask`` only (so that only
    they are charged); returns the accepted mask over all walkers."""
    if bool(mask.all()):
        return attempt(x, u, beta, *per_walker)
    idx = mask.nonzero()[:, 0]
    xs, us = x[idx], u[idx]
    accepted = attempt(xs, us, beta[idx], *(t[idx] for t in per_walker))
    x[idx], u[idx] = xs, us
    out = torch.zeros_like(mask)
    out[idx] = accepted
    return out


def sweep_torch(x: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, system: System,
                r: SweepRandoms, identical: torch.Tensor) -> torch.Tensor:
    """One sweep through the system's local-energy API, in place on x (B, dof) and u (B,) (on
    the system's device); ``r`` and ``identical`` (N, N) live on the CPU. Returns the (B, 5)
    move counts (columns DISP_ATTEMPTS … SWAPS_SKIPPED), on the CPU."""
    device, box = x.device, system.box
    counts = torch.zeros((x.shape[0], 5), dtype=torch.float64)
    for t in range(r.i.shape[0]):
        i, j, swap = r.i[t], r.j[t], r.swap[t]
        skipped = swap & identical[i, j]
        real_swap = swap & ~skipped
        displace = ~swap
        counts[:, DISP_ATTEMPTS] += displace
        counts[:, SWAP_ATTEMPTS] += real_swap
        counts[:, SWAPS_SKIPPED] += skipped
        if bool(displace.any()):
            def attempt(xs, us, bs, i_, d_, l_):
                return displacement_attempt(xs, us, bs, system, i_, d_, l_, box)
            acc = _on_subset(displace.to(device), attempt, x, u, beta, i.to(device),
                             r.delta[t].to(device=device, dtype=x.dtype), r.log_uniform[t].to(device))
            counts[:, DISP_ACCEPTED] += acc.cpu()
        if bool(real_swap.any()):
            def attempt(xs, us, bs, i_, j_, l_):
                return swap_attempt(xs, us, bs, system, i_, j_, l_)
            acc = _on_subset(real_swap.to(device), attempt, x, u, beta, i.to(device), j.to(device),
                             r.log_uniform[t].to(device))
            counts[:, SWAP_ACCEPTED] += acc.cpu()
    return counts


# --------------------------------------------------------------------------- numba backend

KIND_LJ, KIND_SOFT, KIND_DW = 0, 1, 2


@dataclass
class CompiledTable:
    """A system's pair table as float64 NumPy arrays for :func:`_sweep_kernel`: ``kind`` (LJ:
    p0, p1, p2 = c12, c6, shift; soft sphere: p0 = σ²_ij, consts = c0, c2, c4; double well:
    consts = a, b, c, d0), ``rc2`` (N, N), ``r2_min``, ``box`` (d,) and ``periodic``,
    ``identical`` (N, N), ``inv_t`` = 1/kT."""

    kind: int
    p0: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    consts: np.ndarray
    rc2: np.ndarray
    r2_min: float
    box: np.ndarray
    periodic: bool
    identical: np.ndarray
    inv_t: float


def compile_table(system: System) -> CompiledTable | None:
    """The system's pair table for the compiled sweep, or None when it has no compiled twin
    (another pair potential, a one-body term, a non-CPU device)."""
    from boltzbench.systems.particles import ParticleSystem, double_well, lennard_jones, soft_sphere

    if not isinstance(system, ParticleSystem) or system.torch_device.type != "cpu" \
            or type(system)._external_change is not ParticleSystem._external_change:
        return None
    table = system.pair_table()
    n = system.n_particles

    def matrix(v) -> np.ndarray:
        v = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.float64(v)
        return np.array(np.broadcast_to(v, (n, n)), dtype=np.float64)  # a writable copy: one signature

    zero = np.zeros((n, n))
    prm = table.params
    if table.pair is lennard_jones:
        kind, p, consts = KIND_LJ, (matrix(prm["c12"]), matrix(prm["c6"]), matrix(prm["shift"])), [0.0] * 4
    elif table.pair is soft_sphere:
        kind, p, consts = KIND_SOFT, (matrix(prm["sig2"]), zero, zero), [prm["c0"], prm["c2"], prm["c4"], 0.0]
    elif table.pair is double_well:
        kind, p, consts = KIND_DW, (zero, zero, zero), [prm["a"], prm["b"], prm["c"], prm["d0"]]
    else:
        return None
    edges = system.box_edges
    return CompiledTable(kind, *p, np.asarray(consts, dtype=np.float64), matrix(table.rc2), float(table.r2_min),
                         np.asarray(edges if edges is not None else [1.0] * system.dim, dtype=np.float64),
                         edges is not None, identical_pairs(system).numpy(), 1.0 / float(system.temperature))


@_jit
def _distances(xs, point, out, box, inv_box, periodic):
    """out[k] = |point − x_k|² (minimum image when periodic) for positions xs (d, N), stored
    coordinate-major so that the loop over k vectorizes; rint rounds half to even like torch.round."""
    d, n = xs.shape
    for k in range(n):
        out[k] = 0.0
    for ax in range(d):
        p, edge, inv = point[ax], box[ax], inv_box[ax]
        for k in range(n):
            dr = p - xs[ax, k]
            if periodic:
                dr -= edge * np.rint(dr * inv)
            out[k] += dr * dr


@_jit
def _row_energy(kind, r2, a, p0, p1, p2, consts, rc2, r2_min):
    """Σ_k φ_ak(r2[k]) over the k with r2[k] < rc2[a, k], r² clamped at r²_min: the expressions
    of lennard_jones / soft_sphere / double_well in systems/particles.py, branch-free per k."""
    e = 0.0
    if kind == KIND_LJ:
        for k in range(r2.shape[0]):
            inv2 = 1.0 / max(r2[k], r2_min)
            inv6 = inv2 * inv2 * inv2
            v = (p0[a, k] * inv6 - p1[a, k]) * inv6 - p2[a, k]
            e += v if r2[k] < rc2[a, k] else 0.0
    elif kind == KIND_SOFT:
        c0, c2, c4 = consts[0], consts[1], consts[2]
        for k in range(r2.shape[0]):
            y = max(r2[k], r2_min) / p0[a, k]
            q3 = 1.0 / (y * y * y)
            v = q3 * q3 + c0 + (c2 + c4 * y) * y
            e += v if r2[k] < rc2[a, k] else 0.0
    else:
        c1, c2, c4, d0 = consts[0], consts[1], consts[2], consts[3]
        for k in range(r2.shape[0]):
            s = math.sqrt(max(r2[k], r2_min)) - d0
            v = (c1 + (c2 + c4 * s * s) * s) * s
            e += v if r2[k] < rc2[a, k] else 0.0
    return e


@_jit
def _sweep_kernel(pos, u, beta, swap, ii, jj, delta, log_uniform, counts,
                  kind, p0, p1, p2, consts, rc2, r2_min, box, periodic, identical, inv_t):
    """One sweep of every walker, in place on pos (B, d, N) (coordinate-major), u (B,) and
    counts (B, 5); the random numbers are those of :func:`draw_sweep`. Δu of a displacement is
    Σ_{k≠i} φ_ik(new) − φ_ik(old); of a swap Σ_{k∉{i,j}} φ_ik(|x_j − x_k|) + φ_jk(|x_i − x_k|)
    − φ_ik(|x_i − x_k|) − φ_jk(|x_j − x_k|) (as ``energy_change_swap``); excluded partners get
    r² = ∞, beyond every cutoff."""
    n_walkers, d, n = pos.shape
    inv_box = 1.0 / box
    r_a, r_b = np.empty(n), np.empty(n)
    new, old = np.empty(d), np.empty(d)
    for b in range(n_walkers):
        xs = pos[b]
        for t in range(ii.shape[0]):
            i = ii[t, b]
            if swap[t, b]:
                j = jj[t, b]
                if identical[i, j]:
                    counts[b, SWAPS_SKIPPED] += 1.0
                    continue
                counts[b, SWAP_ATTEMPTS] += 1.0
                for ax in range(d):
                    old[ax], new[ax] = xs[ax, i], xs[ax, j]
                _distances(xs, old, r_a, box, inv_box, periodic)     # from x_i
                _distances(xs, new, r_b, box, inv_box, periodic)     # from x_j
                r_a[i] = r_a[j] = r_b[i] = r_b[j] = np.inf
                du = (_row_energy(kind, r_b, i, p0, p1, p2, consts, rc2, r2_min)
                      + _row_energy(kind, r_a, j, p0, p1, p2, consts, rc2, r2_min)
                      - _row_energy(kind, r_a, i, p0, p1, p2, consts, rc2, r2_min)
                      - _row_energy(kind, r_b, j, p0, p1, p2, consts, rc2, r2_min)) * inv_t
                if log_uniform[t, b] < -beta[b] * du:
                    for ax in range(d):
                        xs[ax, i], xs[ax, j] = new[ax], old[ax]
                    u[b] += du
                    counts[b, SWAP_ACCEPTED] += 1.0
            else:
                counts[b, DISP_ATTEMPTS] += 1.0
                for ax in range(d):
                    old[ax] = xs[ax, i]
                    new[ax] = old[ax] + delta[t, b, ax]
                    if periodic:  # as moves.wrap_into_box
                        new[ax] -= box[ax] * math.floor(new[ax] / box[ax])
                _distances(xs, new, r_a, box, inv_box, periodic)
                _distances(xs, old, r_b, box, inv_box, periodic)
                r_a[i] = r_b[i] = np.inf
                du = (_row_energy(kind, r_a, i, p0, p1, p2, consts, rc2, r2_min)
                      - _row_energy(kind, r_b, i, p0, p1, p2, consts, rc2, r2_min)) * inv_t
                if log_uniform[t, b] < -beta[b] * du:
                    for ax in range(d):
                        xs[ax, i] = new[ax]
                    u[b] += du
                    counts[b, DISP_ACCEPTED] += 1.0


def warm_up_kernel(table: CompiledTable) -> None:
    """Compile :func:`_sweep_kernel` (or load it from numba's disk cache) with an empty batch."""
    n, d = table.rc2.shape[0], table.box.shape[0]
    empty = np.zeros(0)
    _sweep_kernel(np.zeros((0, d, n)), empty, empty, np.zeros((n, 0), dtype=bool), np.zeros((n, 0), dtype=np.int64),
                  np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0, d)), np.zeros((n, 0)), np.zeros((0, 5)),
                  table.kind, table.p0, table.p1, table.p2, table.consts, table.rc2, table.r2_min, table.box,
                  table.periodic, table.identical, table.inv_t)


def sweep_numba(x: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, system: System, r: SweepRandoms,
                table: CompiledTable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sweep in the compiled kernel; charges the ledger as the local-energy API would
    (1/N per displacement, 2/N per swap attempted). Returns new (x, u) and the (B, 5) counts."""
    b, n, d = x.shape[0], system.n_particles, system.dim
    pos = np.ascontiguousarray(x.detach().cpu().double().numpy().reshape(b, n, d).transpose(0, 2, 1))
    energies = u.detach().cpu().double().numpy().copy()
    counts = np.zeros((b, 5))
    _sweep_kernel(pos, energies, beta.detach().cpu().double().numpy(), r.swap.numpy(), r.i.numpy(),
                  r.j.numpy(), r.delta.numpy(), r.log_uniform.numpy(), counts,
                  table.kind, table.p0, table.p1, table.p2, table.consts, table.rc2, table.r2_min,
                  table.box, table.periodic, table.identical, table.inv_t)
    system.ledger.charge(energy=float(counts[:, DISP_ATTEMPTS].sum() + 2 * counts[:, SWAP_ATTEMPTS].sum()) / n)
    x_new = torch.from_numpy(np.ascontiguousarray(pos.transpose(0, 2, 1)).reshape(b, -1)).to(dtype=x.dtype)
    return x_new, torch.from_numpy(energies).to(u.dtype), torch.from_numpy(counts)


# --------------------------------------------------------------------------- the move


class SwapMove(Move):
    """One swap-MC sweep (N attempted moves per walker, a fraction ``p_swap`` of them swaps)
    of a batch of tempered walkers; a :class:`boltzbench.samplers.moves.Move`, so it composes
    with the tempering samplers' machinery.

    ``counts`` (B, 5) holds the move counts since the last reset (columns DISP_ATTEMPTS …
    SWAPS_SKIPPED). For :func:`~boltzbench.samplers.moves.tune`, ``accepted``/``attempts`` is
    each walker's displacement acceptance since the reset (``attempts`` counts sweeps); it
    stays None while no displacement was attempted. ``step`` (B,) is δ, tunable.
    """

    tunable = True

    def __init__(self, step: float, p_swap: float, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
        self.initial_step, self.p_swap, self.backend = float(step), float(p_swap), backend
        self.step: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self._system_id: int | None = None
        self._table: CompiledTable | None = None
        self._identical: torch.Tensor | None = None

    def set_step(self, step: float | torch.Tensor, n: int) -> None:
        self.step = torch.as_tensor(step, dtype=torch.float64).expand(n).clone()

    def prepare(self, system: System) -> str:
        """Build the per-system tables (and compile the kernel); returns the backend used."""
        if self._system_id != id(system):
            self._system_id = id(system)
            self._identical = identical_pairs(system)
            self._table = None
            if self.backend in ("auto", "numba") and HAVE_NUMBA:
                self._table = compile_table(system)
            if self.backend == "numba" and self._table is None:
                raise ParameterError("backend", f"the numba backend needs numba and a CPU particle system with a "
                                                f"Lennard-Jones, soft-sphere or double-well pair table and no "
                                                f"one-body term; {system.name!r} has none: use 'torch' or 'auto'")
            if self._table is not None:
                warm_up_kernel(self._table)
        return "numba" if self._table is not None else "torch"

    def __call__(self, walkers: Walkers, system: System, generator: torch.Generator) -> None:
        b = len(walkers)
        if self.step is None or self.step.shape[0] != b:
            self.set_step(self.initial_step, b)
        if self.attempts == 0 or self.counts is None or self.counts.shape[0] != b:
            self.counts, self.attempts, self.accepted = torch.zeros((b, 5), dtype=torch.float64), 0, None
        backend = self.prepare(system)
        r = draw_sweep(system.n_particles, system.dim, self.step, self.p_swap, generator)
        beta = walkers.beta.to(torch.float64)
        if backend == "numba":
            walkers.x, u, counts = sweep_numba(walkers.x, walkers.u, beta, system, r, self._table)
        else:
            x, u = walkers.x.clone(), walkers.u.to(torch.float64).clone()
            counts = sweep_torch(x, u, beta.to(x.device), system, r, self._identical)
            walkers.x = x
        walkers.u, walkers.forces = u.to(torch.float64), None
        self.counts += counts
        self.attempts += 1
        tried, accepted = self.counts[:, DISP_ATTEMPTS], self.counts[:, DISP_ACCEPTED]
        if float(tried.sum()) > 0:
            overall = accepted.sum() / tried.sum()
            fraction = torch.where(tried > 0, accepted / tried.clamp(min=1), overall)
            self.accepted = fraction * self.attempts


# --------------------------------------------------------------------------- the sampler


@dataclass
class SwapMC(ChainSampler):
    """Swap Monte Carlo (displacements + identity swaps, Metropolis), independent chains batched."""

    name: ClassVar[str] = "swap_mc"
    description: ClassVar[str] = ("swap Monte Carlo (Grigera & Parisi 2001; Ninarello, Berthier & Coslovich 2017): "
                                  "single-particle displacements and species/diameter swaps, chains batched")

    p_swap: float = param(0.2, "probability that an attempted move swaps the identities (species or diameters) of "
                               "two random particles, in [0, 1]; 0 gives displacement-only MC")
    step: float = param(0.1, "initial half-width δ of the uniform displacement cube (length; tuned in warm-up)")
    target_acceptance: float = param(0.4, "displacement acceptance the warm-up tunes δ towards, in (0, 1)")
    warmup: float = param(0.1, "fraction of the budget spent warming up (tuning δ; samples discarded), in [0, 1)")
    thin: int = param(10, "keep one sample every `thin` sweeps (a sweep = N attempted moves per chain)")
    backend: str = param("auto", "'numba' (compiled sweep), 'torch' (the system's local-energy API) or 'auto' "
                                 "(numba where the system allows it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(isinstance(self.p_swap, (int, float)) and 0.0 <= self.p_swap <= 1.0, "p_swap",
                f"must be a probability in [0, 1], got {self.p_swap!r}")
        require(self.step > 0, "step", f"must be > 0, got {self.step}")
        require(0 < self.target_acceptance < 1, "target_acceptance",
                f"must be in (0, 1), got {self.target_acceptance}")
        require(0 <= self.warmup < 1, "warmup", f"must be in [0, 1), got {self.warmup}")
        require(self.backend in BACKENDS, "backend",
                f"unknown backend {self.backend!r}; valid choices: {', '.join(BACKENDS)}")

    def run(self, system: System, budget: Budget, generator: torch.Generator) -> Iterator[Snapshot]:
        check_particle_system(system, self.p_swap)
        ledger, schedule, trace = system.ledger, budget.schedule(), ChainTrace(self.thin)
        move = SwapMove(self.step, self.p_swap, self.backend)
        with ledger.setup_phase():  # tables, and the numba compilation (or its disk cache)
            backend = move.prepare(system)
        c = self.n_chains
        walkers = Walkers.start(system, system.sample_initial(c, generator), torch.ones(c, dtype=torch.float64))
        walkers.u = walkers.u.to(torch.float64)
        one_group = torch.zeros(c, dtype=torch.long)
        warming, sweeps, warmup_sweeps = self.warmup > 0, 0, 0
        while not budget.exhausted(ledger):
            move(walkers, system, generator)
            sweeps += 1
            if warming:
                if sweeps % TUNE_WINDOW == 0:
                    tune(move, one_group, 1, self.target_acceptance)
                if budget.used(ledger) >= self.warmup:  # production: δ frozen, statistics restart
                    warming, warmup_sweeps = False, sweeps
                    move.reset_stats()
                continue
            trace.step(walkers.x, walkers.u)
            if trace.steps >= self.thin and schedule.due(ledger):
                yield trace.snapshot(ledger, self._diagnostics(move, backend, sweeps - warmup_sweeps, warmup_sweeps))
        if warming:
            raise RuntimeError(f"the budget ended during warm-up (warmup = {self.warmup} of the budget), "
                               f"before any production sweep; raise the budget")
        if trace.steps < self.thin:
            trace.snapshot(ledger, {})  # raises: the budget ended before the first kept sample

    @staticmethod
    def _diagnostics(move: SwapMove, backend: str, sweeps: int, warmup_sweeps: int) -> dict[str, Any]:
        total = move.counts.sum(0)

        def rate(accepted: int, tried: int) -> float | None:
            return float(total[accepted] / total[tried]) if float(total[tried]) > 0 else None

        return {
            "acceptance_displacement": rate(DISP_ACCEPTED, DISP_ATTEMPTS),
            "acceptance_swap": rate(SWAP_ACCEPTED, SWAP_ATTEMPTS),
            "swaps_skipped": int(total[SWAPS_SKIPPED]),
            "swaps_attempted": int(total[SWAP_ATTEMPTS]),
            "sweeps": sweeps,
            "warmup_sweeps": warmup_sweeps,
            "step": float(move.step.mean()),
            "backend": backend,
        }
