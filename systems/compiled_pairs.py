"""The compiled (numba) pair kernels of the particle systems, on the CPU.

:func:`pair_arrays` turns a system's :class:`~boltzbench.systems.particles.PairTable` into
float64 NumPy arrays (``kind`` selects one of the pair potentials of
:mod:`boltzbench.systems.particles`; the same expressions, term by term). Two kernels use
them: the swap-MC sweep of :mod:`boltzbench.samplers.moves` (local energy changes), and
:func:`energy_forces` here — the total energy U (B,) and forces −∇U (B, N, d) of a batch,
every pair i < j once with the minimum image; with T > 1 torch threads (the cell's
``--threads``) the batch is split into T parts run on T Python threads (the kernel releases
the GIL). Not numba's ``parallel=True``: its OpenMP layer aborts any process forked after
it ran, and cells are forked processes.

Why all pairs and no cell list: at the sizes benchmarked here (N ≤ a few hundred, boxes of
a few cut-offs) a cell list has 2–3 cells per axis and saves nothing, while a compiled loop
over N(N−1)/2 pairs beats the tensor kernels' dense and Verlet-list paths, whose cost is
memory traffic over (B, N, N) or (B, N, K) intermediates (benchmarks/throughput.py
measures both against OpenMM). Above :data:`MAX_PARTICLES` the tensor kernel with its
Verlet list is used instead.

Arithmetic is float64 whatever the system's precision (the result is cast), so the
compiled path is never less accurate than the tensor one.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

try:  # numba comes with openmmtools; without it the tensor kernels run
    import numba

    # reassociation lets inner loops vectorize; no nnan/ninf: r² = ∞ marks excluded partners
    FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
    jit = numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    def jit(f):
        return f
    HAVE_NUMBA = False

KIND_LJ, KIND_SOFT, KIND_DW, KIND_SMOOTH_LJ = 0, 1, 2, 3
#: largest N for which ``kernel = "auto"`` takes the compiled all-pairs path
MAX_PARTICLES = 1024


@dataclass
class PairArrays:
    """A pair table as float64 arrays: ``kind`` (LJ: p0, p1, p2 = c12, c6, shift; soft sphere:
    p0 = σ²_ij, consts = c0, c2, c4; double well: consts = a, b, c, d0; smoothed LJ: p0, p1 =
    σ²_ij, 4ε_ij, consts = c0, c2, c4), ``rc2`` (N, N, 0 on the diagonal), ``r2_min``,
    ``box`` (d,) and ``periodic``."""

    kind: int
    p0: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    consts: np.ndarray
    rc2: np.ndarray
    r2_min: float
    box: np.ndarray
    periodic: bool


def pair_arrays(system) -> PairArrays | None:
    """The system's pair table as :class:`PairArrays`, or None when no compiled twin exists
    (another pair potential)."""
    from boltzbench.systems import particles

    table = system.pair_table()
    n = system.n_particles

    def matrix(v) -> np.ndarray:
        v = v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else np.float64(v)
        return np.array(np.broadcast_to(v, (n, n)), dtype=np.float64)  # a writable copy: one signature

    zero = np.zeros((n, n))
    prm = table.params
    if table.pair is particles.lennard_jones:
        kind, p, consts = KIND_LJ, (matrix(prm["c12"]), matrix(prm["c6"]), matrix(prm["shift"])), [0.0] * 4
    elif table.pair is particles.soft_sphere:
        kind, p, consts = KIND_SOFT, (matrix(prm["sig2"]), zero, zero), [prm["c0"], prm["c2"], prm["c4"], 0.0]
    elif table.pair is particles.double_well:
        kind, p, consts = KIND_DW, (zero, zero, zero), [prm["a"], prm["b"], prm["c"], prm["d0"]]
    elif table.pair is particles.smooth_lennard_jones:
        kind, p = KIND_SMOOTH_LJ, (matrix(prm["sig2"]), matrix(prm["eps4"]), zero)
        consts = [prm["c0"], prm["c2"], prm["c4"], 0.0]
    else:
        return None
    edges = system.box_edges
    return PairArrays(kind, *p, np.asarray(consts, dtype=np.float64), matrix(table.rc2), float(table.r2_min),
                      np.asarray(edges if edges is not None else [1.0] * system.dim, dtype=np.float64),
                      edges is not None)


@jit
def pair_row(kind, rr, a, idx, m, p0, p1, p2, consts, r2_min, phi, fr):
    """phi[q], fr[q] = φ_ak, −φ'_ak(r)/r for the m partners k = idx[q] inside the cutoff, at
    r² = rr[q] (clamped at r²_min): the expressions of lennard_jones, soft_sphere,
    double_well and smooth_lennard_jones in systems/particles.py, one loop per kind."""
    c0, c2, c4, c3 = consts[0], consts[1], consts[2], consts[3]
    if kind == KIND_LJ:
        for q in range(m):
            k = idx[q]
            inv2 = 1.0 / max(rr[q], r2_min)
            inv6 = inv2 * inv2 * inv2
            rep = p0[a, k] * inv6
            phi[q] = (rep - p1[a, k]) * inv6 - p2[a, k]
            fr[q] = (12.0 * rep - 6.0 * p1[a, k]) * inv6 * inv2
    elif kind == KIND_SOFT:
        for q in range(m):
            k = idx[q]
            r2k = max(rr[q], r2_min)
            y = r2k / p0[a, k]
            q3 = 1.0 / (y * y * y)
            q6 = q3 * q3
            phi[q] = q6 + c0 + (c2 + c4 * y) * y
            fr[q] = (12.0 * q6 - (2.0 * c2 + 4.0 * c4 * y) * y) / r2k
    elif kind == KIND_DW:  # consts: a, b, c, d0
        for q in range(m):
            d = math.sqrt(max(rr[q], r2_min))
            t = d - c3
            t2 = t * t
            phi[q] = (c0 + (c2 + c4 * t2) * t) * t
            fr[q] = -(c0 + (2.0 * c2 + 4.0 * c4 * t2) * t) / d
    else:
        for q in range(m):
            k = idx[q]
            r2k = max(rr[q], r2_min)
            y = r2k / p0[a, k]
            q3 = 1.0 / (y * y * y)
            q6 = q3 * q3
            phi[q] = p1[a, k] * (q6 - q3 + c0 + (c2 + c4 * y) * y)
            fr[q] = p1[a, k] * (12.0 * q6 - 6.0 * q3 - (2.0 * c2 + 4.0 * c4 * y) * y) / r2k


@jit
def _energy_forces_kernel(pos, energy, forces, want_forces, kind, p0, p1, p2, consts, rc2, r2_min, box,
                          periodic):
    """energy[b] = Σ_{i<j} φ_ij, forces[b, :, i] = Σ_j (−φ'_ij/r)·(x_i − x_j) for coordinate-
    major pos (B, d, N). For each i: the distances to every j > i as one vector loop, the
    partners inside their cutoff gathered, the pair terms evaluated for those only."""
    n_batch, d, n = pos.shape
    inv_box = 1.0 / box
    for b in range(n_batch):
        xs, f = pos[b], forces[b]
        dr, r2 = np.empty((d, n)), np.empty(n)
        idx, rr = np.empty(n, dtype=np.int64), np.empty(n)
        phi, fr = np.empty(n), np.empty(n)
        e = 0.0
        for i in range(n - 1):
            lo = i + 1
            for k in range(lo, n):
                r2[k] = 0.0
            for ax in range(d):
                p, edge, inv = xs[ax, i], box[ax], inv_box[ax]
                for k in range(lo, n):
                    t = p - xs[ax, k]
                    if periodic:
                        t -= edge * np.rint(t * inv)
                    dr[ax, k] = t
                    r2[k] += t * t
            m = 0
            for k in range(lo, n):
                if r2[k] < rc2[i, k]:
                    idx[m] = k
                    rr[m] = r2[k]
                    m += 1
            pair_row(kind, rr, i, idx, m, p0, p1, p2, consts, r2_min, phi, fr)
            for q in range(m):
                e += phi[q]
            if want_forces:
                for ax in range(d):
                    total = 0.0
                    for q in range(m):
                        k = idx[q]
                        g = fr[q] * dr[ax, k]
                        total += g
                        f[ax, k] -= g
                    f[ax, i] += total
        energy[b] = e


def energy_forces(x: torch.Tensor, arrays: PairArrays, forces: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pair energy U (B,) and forces −∇U (B, N, d) of CPU configurations x (B, N, d), in
    x's dtype (computed in float64). Physical units (not divided by kT)."""
    pos = np.ascontiguousarray(x.detach().to(torch.float64).numpy().transpose(0, 2, 1))  # (B, d, N)
    energy = np.zeros(pos.shape[0])
    force = np.zeros(pos.shape if forces else (pos.shape[0], pos.shape[1], 0))
    a = arrays

    def run(part: slice) -> None:
        _energy_forces_kernel(pos[part], energy[part], force[part], forces, a.kind, a.p0, a.p1, a.p2, a.consts,
                              a.rc2, a.r2_min, a.box, a.periodic)

    threads = min(torch.get_num_threads(), len(energy))
    if threads <= 1:
        run(slice(None))
    else:  # the kernel releases the GIL: T threads on T contiguous parts of the batch
        bounds = np.linspace(0, len(energy), threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]))
    u = torch.from_numpy(energy).to(x.dtype)
    return u, (torch.from_numpy(np.ascontiguousarray(force.transpose(0, 2, 1))).to(x.dtype) if forces else None)


def warm_up() -> None:
    """Compile :func:`_energy_forces_kernel` (or load it from numba's disk cache) once, e.g.
    in the fork server of the cell processes, so that no cell pays for it (single-threaded:
    no thread is left behind in a process that forks)."""
    if not HAVE_NUMBA:
        return
    z1, z2 = np.zeros(1), np.zeros((1, 1))
    _energy_forces_kernel(np.zeros((1, 2, 1)), z1, np.zeros((1, 2, 1)), True, KIND_LJ, z2, z2, z2, np.zeros(4),
                          z2, 0.0, np.ones(2), False)
