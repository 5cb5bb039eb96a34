"""Pair-potential particle systems: batched torch kernels and the :class:`ParticleSystem` base.

The physics is a chain of small pure functions, in the style of jax-md (Schoenholz & Cubuk,
NeurIPS 2020): a *displacement* (minimum image in a periodic box) → squared *distances* →
a *pair energy* that returns, for every pair, the energy φ(r) and the force factor
−φ'(r)/r, so that the force on particle i is F_i = Σ_j (−φ'(r_ij)/r_ij)·r_ij with
r_ij = x_i − x_j. The total energy is U = Σ_{i<j} φ_{ij}(r_ij) = ½·Σ_{i≠j} φ_{ij}(r_ij).

Pair parameters are held per *particle* pair as (N, N) tensors (a :class:`PairTable`): for a
mixture they are gathered once from the per-species tables, for a polydisperse system they
come from the per-particle diameters. The same table serves the full kernel and the local
(one-particle) energies that swap Monte Carlo needs.

Kernels (measured, see ``benchmarks/throughput.py`` and the report of issue 3). The reference
kernel is dense: all pairs by broadcasting over (B, N, N), the cutoff as a mask, the batch
processed in chunks of about ``PAIR_ELEMENTS`` pair entries so that temporaries stay in cache.
Periodic liquids default to a Verlet neighbour list (Verlet, Phys. Rev. 159, 98 (1967); Allen
& Tildesley, *Computer Simulation of Liquids*, 2nd ed. 2017, Sec. 5.3.2): for every
configuration and particle the indices of the particles within r_c,ij + skin, padded to a
common length K with the particle itself (whose cutoff is 0); it is rebuilt (densely) whenever
some particle has moved more than skin/2 since the last build, or the batch changed shape,
which keeps it exact. At N = 256 (ka3d, K ≈ 110) it evaluates ≈ 2.3× fewer pairs and measured
≈ 2× faster per evaluation than the dense kernel (rebuilds included, in Langevin MD), 1.2-1.5×
at N = 43 (K ≈ 31); a cell list
cannot help at these sizes (two cells of edge ≥ 2.5σ per side at N = 256) and is not
implemented. ``verlet_skin = 0`` selects the dense kernel.

Overlaps: r² is clamped from below at r²_min = (``R_MIN_FRACTION``·σ_min)² (σ_min the smallest
pair diameter of the system) before any power is taken, so two coincident particles give a
finite, huge energy (≈ 4ε·10²⁴ for LJ, representable in float32) and finite forces, never
inf or NaN. Below r_min the energy is frozen at its value at r_min (the analytic force
returned is the one at r_min, along r_ij, and zero for exactly coincident particles).

Periodic systems use the minimum-image convention, exact when every cutoff r_c satisfies
r_c ≤ L/2 for the box edge L; systems reject parameters that break this.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from boltzbench.contracts import OpenMMTwin, System, param, require
from boltzbench.systems.compiled_pairs import HAVE_NUMBA, MAX_PARTICLES, PairArrays, pair_arrays
from boltzbench.systems.compiled_pairs import energy_forces as compiled_energy_forces

#: Pair entries (chunk · N · N) processed at once on the CPU: keeps the temporaries in cache.
PAIR_ELEMENTS = 1 << 16
#: r is clamped from below at R_MIN_FRACTION · (smallest σ_ij of the system) (module docstring).
R_MIN_FRACTION = 0.01
#: Steps and step caps of the setup relaxation in :meth:`ParticleSystem.sample_initial`.
RELAX_STEPS = 100
RELAX_GAIN = 0.002       # displacement per unit physical force (length² / energy)
RELAX_MAX_STEP = 0.05    # largest displacement of one particle in one step (length)

PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def precision_param():
    """The ``precision`` parameter of every particle system (numerical, not physical)."""
    return param("float64", "floating-point precision of the kernels: float64 or float32", physical=False)


def device_param():
    """The ``device`` parameter of every particle system (numerical, not physical)."""
    return param("cpu", "torch device of the kernels: cpu, cuda or cuda:<index>", physical=False)


KERNELS = ("auto", "numba", "torch")


def kernel_param():
    """The ``kernel`` parameter of every particle system (numerical, not physical)."""
    return param("auto", "energy+force kernel on the CPU: 'numba' (compiled loop over all pairs, float64), "
                         "'torch' (tensor kernel, with the Verlet list where the system has one), or 'auto' "
                         f"(numba when installed, on the CPU, for N <= {MAX_PARTICLES}; else torch)",
                 physical=False)


def verlet_skin_param():
    """The ``verlet_skin`` parameter of the periodic liquids (numerical: the list is exact)."""
    return param(0.3, "skin of the Verlet neighbour list (length); 0 selects the dense all-pairs kernel",
                 physical=False)


# ----------------------------------------------------------------------------- geometry


def minimum_image(dr: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """Displacements mapped to their nearest periodic image: dr − L·round(dr/L) per axis."""
    if box is None:
        return dr
    return dr - box * torch.round(dr / box)


def pair_displacements(x: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """All displacements r_ij = x_i − x_j (minimum image) as coordinate planes:
    x (B, N, d) → (B, d, N, N). (Planes keep the innermost axis long, which is several times
    faster on a CPU than a trailing axis of length d.) Periodic boxes work in box-scaled
    coordinates s = x/L: r_ij = L·(s_ij − round(s_ij))."""
    if box is None:
        xt = x.transpose(1, 2)
        return xt[:, :, :, None] - xt[:, :, None, :]
    st = (x / box).transpose(1, 2)
    ds = st[:, :, :, None] - st[:, :, None, :]
    return (ds - torch.round(ds)) * box[:, None, None]


def squared_norm(planes: torch.Tensor) -> torch.Tensor:
    """Σ_k r_k² over the coordinate planes (B, d, N, N) → (B, N, N)."""
    r2 = planes[:, 0] * planes[:, 0]
    for k in range(1, planes.shape[1]):
        r2 = r2 + planes[:, k] * planes[:, k]
    return r2


# ------------------------------------------------------------------------- pair energies
# Each takes squared distances r2 (already clamped at r2_min) and parameters broadcastable
# to r2, and returns (φ, −φ'(r)/r), both shaped like r2. Cutoffs are applied by the caller.


def lennard_jones(r2: torch.Tensor, c12: torch.Tensor, c6: torch.Tensor, shift: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """φ = c12/r¹² − c6/r⁶ − shift (c12 = 4εσ¹², c6 = 4εσ⁶ for the usual 12-6 form);
    −φ'/r = (12·c12/r¹² − 6·c6/r⁶)/r²."""
    inv2 = 1.0 / r2
    inv6 = inv2 * inv2 * inv2
    rep = c12 * inv6
    return (rep - c6) * inv6 - shift, (12.0 * rep - 6.0 * c6) * inv6 * inv2


def smooth_lennard_jones(r2: torch.Tensor, sig2: torch.Tensor, eps4: torch.Tensor, c0: float, c2: float,
                         c4: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lennard-Jones with a polynomial that smooths the cutoff, y = r²/σ², eps4 = 4ε:
    φ = 4ε[y⁻⁶ − y⁻³ + c0 + c2·y + c4·y²] = 4ε[(σ/r)¹² − (σ/r)⁶ + c0 + c2(r/σ)² + c4(r/σ)⁴];
    −φ'/r = 4ε(12·y⁻⁶ − 6·y⁻³ − 2·c2·y − 4·c4·y²)/r²."""
    y = r2 / sig2
    q3 = 1.0 / (y * y * y)
    q6 = q3 * q3
    return (eps4 * (q6 - q3 + c0 + (c2 + c4 * y) * y),
            eps4 * (12.0 * q6 - 6.0 * q3 - (2.0 * c2 + 4.0 * c4 * y) * y) / r2)


def soft_sphere(r2: torch.Tensor, sig2: torch.Tensor, c0: float, c2: float, c4: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ninarello-Berthier-Coslovich repulsion with y = r²/σ²:
    φ = y⁻⁶ + c0 + c2·y + c4·y² = (σ/r)¹² + c0 + c2(r/σ)² + c4(r/σ)⁴;
    −φ'/r = (12·y⁻⁶ − 2·c2·y − 4·c4·y²)/r²."""
    y = r2 / sig2
    q3 = 1.0 / (y * y * y)
    q6 = q3 * q3
    return q6 + c0 + (c2 + c4 * y) * y, (12.0 * q6 - (2.0 * c2 + 4.0 * c4 * y) * y) / r2


def double_well(r2: torch.Tensor, a: float, b: float, c: float, d0: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """φ = a(d−d0) + b(d−d0)² + c(d−d0)⁴ with d = r; −φ'/r = −(a + 2b(d−d0) + 4c(d−d0)³)/d."""
    d = torch.sqrt(r2)
    s = d - d0
    s2 = s * s
    return (a + (b + c * s2) * s) * s, -(a + (2.0 * b + 4.0 * c * s2) * s) / d


@dataclass
class PairTable:
    """Per-particle-pair parameters of one system, each (N, N) (or scalars) on its device.

    ``rc2`` is the squared cutoff (0 on the diagonal, so i = j never counts; ``inf`` for no
    cutoff), ``r2_min`` the clamp of r² (one number: (R_MIN_FRACTION·min σ_ij)²), ``params``
    the keyword arguments of ``pair`` (tensors (N, N) or Python floats).
    """

    pair: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rc2: torch.Tensor
    r2_min: float
    params: dict[str, Any]

    def rows(self, i: torch.Tensor | slice) -> PairTable:
        """The rows of particles i (B,): every (N, N) tensor becomes (B, N). (With a slice:
        that slice of the leading axis of every tensor.)"""
        def take(v):
            if not isinstance(v, torch.Tensor) or (v.dim() != 2 and not isinstance(i, slice)):
                return v
            return v[i]
        return PairTable(self.pair, take(self.rc2), self.r2_min,
                         {k: take(v) for k, v in self.params.items()})

    def evaluate(self, r2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(φ, −φ'/r) with the cutoff applied: zero where r² ≥ rc²."""
        inside = r2 < self.rc2
        phi, fr = self.pair(torch.clamp_min(r2, self.r2_min), **self.params)
        return torch.where(inside, phi, 0.0), torch.where(inside, fr, 0.0)


def pair_energy_forces(x: torch.Tensor, box: torch.Tensor | None, table: PairTable,
                       forces: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Total pair energy U (B,) and forces −∇U (B, N, d) of configurations x (B, N, d).

    Dense over all pairs; physical units (not divided by kT).
    """
    planes = pair_displacements(x, box)
    phi, fr = table.evaluate(squared_norm(planes))
    energy = 0.5 * phi.sum((1, 2))
    if not forces:
        return energy, None
    return energy, torch.einsum("bij,bkij->bik", fr, planes)


def particle_energy(x: torch.Tensor, position: torch.Tensor, rows: PairTable,
                    box: torch.Tensor | None, exclude: torch.Tensor) -> torch.Tensor:
    """Σ_k φ(|position − x_k|) over particles k with ``exclude[b, k]`` false, for one
    particle per configuration whose parameter rows are ``rows`` (B, N). x (B, N, d),
    position (B, d) → (B,). O(N) per configuration."""
    dr = minimum_image(position[:, None, :] - x, box)
    phi, _ = rows.evaluate((dr * dr).sum(-1))
    return torch.where(exclude, 0.0, phi).sum(1)


def chunk_size(n_particles: int, device: torch.device, partners: int | None = None) -> int:
    """Configurations per kernel call: cache-sized chunks on the CPU, whole batches elsewhere.
    ``partners`` is the number of pair entries per particle (N for the dense kernel)."""
    if device.type != "cpu":
        return 1 << 30
    return max(1, PAIR_ELEMENTS // (n_particles * (partners or n_particles)))


@dataclass
class NeighbourList:
    """Verlet lists of a batch: ``index`` (B, N, K) partners of every particle (padded with the
    particle itself), ``table`` the pair parameters gathered to (B, N, K), ``reference`` the
    positions (B, N, d) at the build."""

    reference: torch.Tensor
    index: torch.Tensor
    table: PairTable


def build_neighbour_list(x: torch.Tensor, box: torch.Tensor | None, table: PairTable,
                         rlist2: torch.Tensor) -> NeighbourList:
    """Partners j of every i with |r_ij|² < rlist2[i, j] = (r_c,ij + skin)² (0 on the diagonal),
    by one dense pass over the batch x (B, N, d)."""
    n = x.shape[1]
    within = squared_norm(pair_displacements(x, box)) < rlist2
    k = max(1, int(within.sum(-1).max()))
    order = torch.topk(within.to(x.dtype), k, dim=-1).indices
    rows = torch.arange(n, device=x.device).view(1, n, 1)
    index = torch.where(torch.gather(within, 2, order), order, rows)

    def take(v):
        return v[rows, index] if isinstance(v, torch.Tensor) and v.dim() == 2 else v
    gathered = PairTable(table.pair, take(table.rc2), table.r2_min, {k_: take(v) for k_, v in table.params.items()})
    return NeighbourList(x.detach().clone(), index, gathered)


def concat_neighbour_lists(lists: list[NeighbourList]) -> NeighbourList:
    """One list for the whole batch: chunks padded (with the particle itself) to a common K."""
    if len(lists) == 1:
        return lists[0]
    k = max(nl.index.shape[-1] for nl in lists)

    def pad(v, nl, fill):
        extra = k - v.shape[-1]
        if extra == 0:
            return v
        if fill is None:   # index: the particle itself
            fill_t = torch.arange(v.shape[1], device=v.device).view(1, -1, 1).expand(v.shape[0], -1, extra)
        else:
            fill_t = torch.full((*v.shape[:-1], extra), fill, dtype=v.dtype, device=v.device)
        return torch.cat([v, fill_t], -1)

    def cat(key):
        return torch.cat([pad(nl.table.params[key], nl, 0.0) for nl in lists]) \
            if isinstance(lists[0].table.params[key], torch.Tensor) else lists[0].table.params[key]
    table = PairTable(lists[0].table.pair, torch.cat([pad(nl.table.rc2, nl, 0.0) for nl in lists]),
                      lists[0].table.r2_min, {key: cat(key) for key in lists[0].table.params})
    return NeighbourList(torch.cat([nl.reference for nl in lists]),
                         torch.cat([pad(nl.index, nl, None) for nl in lists]), table)


def neighbour_energy_forces(x: torch.Tensor, box: torch.Tensor | None, nl: NeighbourList,
                            forces: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """As :func:`pair_energy_forces`, over the partners of a (valid) neighbour list of x."""
    b, n, d = x.shape
    k = nl.index.shape[-1]
    st = x.transpose(1, 2) if box is None else (x / box).transpose(1, 2)
    partners = torch.gather(st, 2, nl.index.reshape(b, 1, n * k).expand(b, d, n * k)).reshape(b, d, n, k)
    ds = st[:, :, :, None] - partners
    planes = ds if box is None else (ds - torch.round(ds)) * box[:, None, None]
    phi, fr = nl.table.evaluate(squared_norm(planes))
    energy = 0.5 * phi.sum((1, 2))
    if not forces:
        return energy, None
    return energy, torch.einsum("bij,bkij->bik", fr, planes)


def list_is_valid(nl: NeighbourList | None, x: torch.Tensor, box: torch.Tensor | None, skin: float) -> bool:
    """True while no particle has moved more than skin/2 since the build (same batch shape)."""
    if nl is None or nl.reference.shape != x.shape or nl.reference.dtype != x.dtype \
            or nl.reference.device != x.device:
        return False
    moved = minimum_image(x.detach() - nl.reference, box)
    return bool((moved * moved).sum(-1).max() <= (0.5 * skin) ** 2)


# ------------------------------------------------------------------------- the base class


@dataclass
class ParticleSystem(System):
    """N particles in d dimensions with a pair potential; x has shape (B, N·d).

    Subclasses declare the parameters ``temperature``, ``precision`` and ``device`` and define
    the metadata properties, :meth:`pair_table` (the pair parameters),
    :meth:`_initial_positions` (unrelaxed starts) and may add an external energy with
    :meth:`_external`. Energies are U/kT with kT = ``temperature`` in the potential's energy
    unit; forces are −∇(U/kT).
    """

    citation: ClassVar[str] = ""
    units: ClassVar[str] = "Lennard-Jones reduced units: σ_AA, ε_AA, m = 1, kB = 1"
    #: Names of the species, indexed by ``species``.
    species_names: ClassVar[tuple[str, ...]] = ("A",)

    # Subclasses declare ``precision`` and ``device`` (with :func:`precision_param` and
    # :func:`device_param`) after their physical parameters, so that listings show those first.

    def _check_backend(self) -> None:
        require(self.precision in PRECISIONS, "precision",
                f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            device = None
        require(device is not None and device.type in ("cpu", "cuda"), "device",
                f"must be cpu, cuda or cuda:<index>, got {self.device!r}")
        require(device.type != "cuda" or torch.cuda.is_available(), "device",
                f"{self.device!r} requested but torch.cuda.is_available() is False; use cpu")
        kernel = getattr(self, "kernel", "torch")
        require(kernel in KERNELS, "kernel", f"must be one of {', '.join(map(repr, KERNELS))}, got {kernel!r}")
        require(kernel != "numba" or (device.type == "cpu" and HAVE_NUMBA), "kernel",
                "'numba' runs on the CPU with numba installed; use 'auto' or 'torch'")

    def _check_skin(self) -> None:
        skin = self.verlet_skin
        require(isinstance(skin, (int, float)) and math.isfinite(skin) and 0 <= skin <= 2.0, "verlet_skin",
                f"must be between 0 (dense kernel) and 2.0, got {skin!r}")

    def _check_temperature(self) -> None:
        require(math.isfinite(self.temperature) and self.temperature > 0, "temperature",
                f"must be > 0, got {self.temperature}")

    # metadata ------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return PRECISIONS[self.precision]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def dof(self) -> int:
        return self.n_particles * self.dim

    @property
    def box_edges(self) -> tuple[float, ...] | None:
        """Periodic box edges as floats, or None for an open system."""
        return None

    @property
    def box(self) -> torch.Tensor | None:
        edges = self.box_edges
        return None if edges is None else torch.tensor(edges, dtype=self.dtype, device=self.torch_device)

    @functools.cached_property
    def species(self) -> torch.Tensor:
        """Species index of every particle, (N,) long."""
        return torch.zeros(self.n_particles, dtype=torch.long)

    @functools.cached_property
    def diameters(self) -> torch.Tensor:
        """Diameter σ_i of every particle, (N,) float64 (σ of the species for mixtures)."""
        return torch.ones(self.n_particles, dtype=torch.float64)

    @property
    def swappable(self) -> bool:
        """True when particles differ (more than one species or diameter): swaps can matter."""
        return bool(torch.unique(self.species).numel() > 1 or torch.unique(self.diameters).numel() > 1)

    def pair_table(self) -> PairTable:
        """Pair parameters (N, N) in float64 on the CPU; cast and cached by :attr:`table`."""
        raise NotImplementedError

    @functools.cached_property
    def table(self) -> PairTable:
        t = self.pair_table()

        def cast(v):
            return v.to(device=self.torch_device, dtype=self.dtype) if isinstance(v, torch.Tensor) else v
        return PairTable(t.pair, cast(t.rc2), float(t.r2_min), {k: cast(v) for k, v in t.params.items()})

    @functools.cached_property
    def _box(self) -> torch.Tensor | None:
        return self.box

    # energies ------------------------------------------------------------------------
    def _positions(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.torch_device, dtype=self.dtype).reshape(x.shape[0], self.n_particles, self.dim)

    def _external(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Optional one-body energy (B,) and forces (B, N, d) added to the pair terms."""
        return None

    def _external_change(self, x: torch.Tensor, i: torch.Tensor, new: torch.Tensor) -> torch.Tensor | None:
        """Change (B,) of the one-body energy when particle i[b] moves to new[b] (None: no term)."""
        return None

    def potential(self, x: torch.Tensor, forces: bool = True, neighbour_list: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Physical energy U (B,) and forces −∇U (B, N, d); not charged (use energy*).
        ``neighbour_list=False`` uses the dense kernel and leaves the cached Verlet list alone
        (analysis of arbitrary configurations)."""
        pos = self._positions(x)
        us, fs = [], []
        skin = float(getattr(self, "verlet_skin", 0.0))
        arrays = self._compiled_arrays()
        if arrays is not None:
            u, f = compiled_energy_forces(pos, arrays, forces)
            us, fs = [u], [f]
        elif neighbour_list and skin > 0 and self._box is not None and pos.shape[0] > 0:
            nl = self._neighbour_list(pos, skin)
            step = chunk_size(self.n_particles, pos.device, nl.index.shape[-1])
            for start in range(0, pos.shape[0], step):
                part = NeighbourList(nl.reference[start:start + step], nl.index[start:start + step],
                                     nl.table.rows(slice(start, start + step)))
                u, f = neighbour_energy_forces(pos[start:start + step], self._box, part, forces)
                us.append(u)
                fs.append(f)
        else:
            for chunk in pos.split(chunk_size(self.n_particles, pos.device)):
                u, f = pair_energy_forces(chunk, self._box, self.table, forces)
                us.append(u)
                fs.append(f)
        u = torch.cat(us) if us else pos.new_zeros(0)
        f = (torch.cat(fs) if fs else torch.zeros_like(pos)) if forces else None
        ext = self._external(pos)
        if ext is not None:
            u = u + ext[0]
            f = f + ext[1] if forces else None
        return u, f

    def _compiled_arrays(self) -> PairArrays | None:
        """The compiled kernel's arrays when ``kernel`` selects it (cached), else None."""
        kernel = getattr(self, "kernel", "torch")
        if kernel == "torch" or self.torch_device.type != "cpu" or not HAVE_NUMBA:
            return None
        if kernel == "auto" and self.n_particles > MAX_PARTICLES:
            return None
        if "_compiled" not in self.__dict__:
            self.__dict__["_compiled"] = pair_arrays(self)
        return self.__dict__["_compiled"]

    def _neighbour_list(self, pos: torch.Tensor, skin: float) -> NeighbourList:
        """The cached Verlet list of this batch, rebuilt when stale (see the module docstring)."""
        nl = self.__dict__.get("_verlet")
        if not list_is_valid(nl, pos, self._box, skin):
            rlist = torch.sqrt(self.table.rc2) + skin
            rlist2 = torch.where(self.table.rc2 > 0, rlist * rlist, 0.0)
            nl = concat_neighbour_lists([build_neighbour_list(chunk.detach(), self._box, self.table, rlist2)
                                         for chunk in pos.split(chunk_size(self.n_particles, pos.device))])
            self.__dict__["_verlet"] = nl
            self.__dict__["verlet_builds"] = self.__dict__.get("verlet_builds", 0) + 1
        return nl

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.potential(x, forces=False)[0] / self.temperature

    def _energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, f = self.potential(x, forces=True)
        return u / self.temperature, f.reshape(x.shape[0], -1) / self.temperature

    # local energies for single-particle and swap Monte Carlo ---------------------------
    def energy_change_displace(self, x: torch.Tensor, i: torch.Tensor, new_position: torch.Tensor) -> torch.Tensor:
        """Reduced Δu = u(x') − u(x), x' = x with particle i[b] moved to new_position[b].

        x (B, dof), i (B,) long, new_position (B, d). Computed from particle i's own
        interactions only, O(N) per replica, and charged as 1/N of an energy evaluation per
        replica: a sweep of N single-particle moves costs one evaluation. A one-body term
        (the LJ-13 restraint) enters through :meth:`_external_change`.
        """
        self.ledger.charge(energy=x.shape[0] / self.n_particles)
        pos = self._positions(x)
        i = i.to(pos.device)
        new = new_position.to(device=pos.device, dtype=pos.dtype)
        b = torch.arange(pos.shape[0], device=pos.device)
        rows = self.table.rows(i)
        self_mask = torch.arange(self.n_particles, device=pos.device)[None, :] == i[:, None]
        du = (particle_energy(pos, new, rows, self._box, self_mask)
              - particle_energy(pos, pos[b, i], rows, self._box, self_mask))
        external = self._external_change(pos, i, new)
        if external is not None:
            du = du + external
        return du / self.temperature

    def energy_change_swap(self, x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Reduced Δu after exchanging the identities (species, diameters) of particles i[b]
        and j[b], equivalently exchanging their positions while identities stay put.

        Only the interactions of i and j with the other particles change (the i–j pair keeps
        its distance and its pair of identities), so Δu = Σ_{k∉{i,j}} [φ_ik(|x_j−x_k|) +
        φ_jk(|x_i−x_k|) − φ_ik(|x_i−x_k|) − φ_jk(|x_j−x_k|)]. O(N) per replica, charged as
        2/N of an energy evaluation per replica. Zero when i = j.
        """
        self.ledger.charge(energy=2 * x.shape[0] / self.n_particles)
        pos = self._positions(x)
        i, j = i.to(pos.device), j.to(pos.device)
        b = torch.arange(pos.shape[0], device=pos.device)
        k = torch.arange(self.n_particles, device=pos.device)[None, :]
        exclude = (k == i[:, None]) | (k == j[:, None])
        rows_i, rows_j = self.table.rows(i), self.table.rows(j)
        xi, xj = pos[b, i], pos[b, j]
        du = (particle_energy(pos, xj, rows_i, self._box, exclude)
              + particle_energy(pos, xi, rows_j, self._box, exclude)
              - particle_energy(pos, xi, rows_i, self._box, exclude)
              - particle_energy(pos, xj, rows_j, self._box, exclude))
        return du / self.temperature

    # analysis --------------------------------------------------------------------------
    def pair_groups(self) -> dict[str, torch.Tensor]:
        """Observable name → flat indices into the upper triangle (i < j) of the pair matrix."""
        iu, ju = torch.triu_indices(self.n_particles, self.n_particles, 1)
        if len(self.species_names) == 1:
            return {"all": iu * self.n_particles + ju}
        si, sj = self.species[iu], self.species[ju]
        lo, hi = torch.minimum(si, sj), torch.maximum(si, sj)
        groups = {}
        for a in range(len(self.species_names)):
            for c in range(a, len(self.species_names)):
                sel = (lo == a) & (hi == c)
                if sel.any():
                    name = self.species_names[a] + self.species_names[c]
                    groups[name] = (iu * self.n_particles + ju)[sel]
        return groups

    @functools.cached_property
    def _pair_groups(self) -> dict[str, torch.Tensor]:
        return {k: v.to(self.torch_device) for k, v in self.pair_groups().items()}

    def observables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``energy_per_particle`` U/N (energy unit of the potential) and minimum-image pair
        distances ``pair_distance/<pair>`` (B, n_pairs) per species pair (i < j)."""
        pos = self._positions(x)
        out: dict[str, list[torch.Tensor]] = {"energy_per_particle": []}
        for chunk in pos.split(chunk_size(self.n_particles, pos.device)):
            u = self.potential(chunk.reshape(chunk.shape[0], -1), forces=False, neighbour_list=False)[0]
            out["energy_per_particle"].append(u / self.n_particles)
            r = torch.sqrt(squared_norm(pair_displacements(chunk, self._box))).reshape(chunk.shape[0], -1)
            for name, flat in self._pair_groups.items():
                out.setdefault(f"pair_distance/{name}", []).append(r[:, flat])
        return {k: torch.cat(v) if v else pos.new_zeros(0) for k, v in out.items()}

    # starts ----------------------------------------------------------------------------
    def _initial_positions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Unrelaxed starting positions (n, N, d) in float64 on the CPU."""
        raise NotImplementedError

    def relax(self, x: torch.Tensor, steps: int = RELAX_STEPS) -> torch.Tensor:
        """Capped steepest descent: each particle moves by RELAX_GAIN·F_i (physical force),
        at most RELAX_MAX_STEP per step. Energies and forces go through the charged
        :meth:`energy_and_forces`; call inside ``ledger.setup_phase()`` to charge setup."""
        for _ in range(steps):
            _, f = self.energy_and_forces(x)
            step = (RELAX_GAIN * self.temperature * f).reshape(x.shape[0], self.n_particles, self.dim)
            norm = step.norm(dim=-1, keepdim=True)
            step = step * torch.clamp(RELAX_MAX_STEP / norm.clamp_min(1e-300), max=1.0)
            x = x + step.reshape(x.shape)
        return x

    def sample_initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` starts (n, dof): :meth:`_initial_positions`, then :meth:`relax` for
        RELAX_STEPS steps, charged to the ledger's setup phase."""
        x = self._initial_positions(n, generator).reshape(n, self.dof)
        x = x.to(device=self.torch_device, dtype=self.dtype)
        with self.ledger.setup_phase():
            return self.relax(x)

    def lattice_positions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Periodic systems: N of the m^d sites of a simple cubic (square) lattice, a random
        choice and order per configuration (so species sit at random sites), plus Gaussian
        noise of 0.1 lattice spacing. (n, N, d) float64."""
        edges = torch.tensor(self.box_edges, dtype=torch.float64)
        m = math.ceil(self.n_particles ** (1.0 / self.dim) - 1e-9)
        grid = torch.stack(torch.meshgrid(*[torch.arange(m, dtype=torch.float64)] * self.dim,
                                          indexing="ij"), -1).reshape(-1, self.dim)
        spacing = edges / m
        out = torch.empty(n, self.n_particles, self.dim, dtype=torch.float64)
        for b in range(n):
            sites = torch.randperm(grid.shape[0], generator=generator, device=generator.device)[: self.n_particles].cpu()
            out[b] = (grid[sites] + 0.5) * spacing
        noise = torch.randn(out.shape, generator=generator, dtype=torch.float64, device=generator.device)
        return out.to(noise.device) + 0.1 * spacing.to(noise.device) * noise

    def openmm_twin(self) -> OpenMMTwin:
        from boltzbench.systems.openmm_twins import openmm_twin
        return openmm_twin(self)


def species_counts(n_particles: int, composition: tuple[float, ...]) -> list[int]:
    """Particles per species by largest remainders (Hamilton's apportionment): each species
    gets ⌊q_k⌋ of its quota q_k = x_k·N, and the particles left over go one each to the
    largest fractional parts q_k − ⌊q_k⌋, ties to the earlier species. Quotas are rounded to
    1e-9 first, so float noise in x_k cannot move a particle. Every count is ⌊q_k⌋ or ⌈q_k⌉.

    With two species this is round(x_A·N), halves up, for A (80:20 of N = 256: 205:51); for
    600:330:360 it gives 20:11:12 at N = 43 and 600:330:360 at N = 1290 (exact quotas).
    """
    quotas = [round(x * n_particles, 9) for x in composition]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in order[: n_particles - sum(counts)]:
        counts[k] += 1
    return counts


def check_box(field: str, edge: float, cutoff: float, detail: str) -> None:
    """The minimum-image convention needs a box edge ≥ 2·(largest cutoff)."""
    require(edge >= 2 * cutoff - 1e-12, field,
            f"{detail}: the box edge {edge:.4g} is smaller than twice the largest cutoff "
            f"{cutoff:.4g} (minimum-image convention)")
