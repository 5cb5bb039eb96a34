"""Alanine dipeptide (Ace-Ala-Nme) in vacuum, Amber ff96, evaluated through OpenMM.

The molecule and its force field come from openmmtools' ``AlanineDipeptideVacuum`` test
system (Chodera et al., openmmtools, https://github.com/choderalab/openmmtools; the prmtop
was built by tleap with ``leaprc.ff96``, i.e. the Amber ff96 parameters of Kollman et al.,
in *Computer Simulation of Biomolecular Systems* vol. 3 (1997) 83–96). It is built with
``constraints=None``, so all 22 atoms move freely: dof = 66. The vacuum ``NonbondedForce``
has no cutoff. OpenMM (Eastman et al., PLoS Comput. Biol. 13, e1005659 (2017)) computes
U in kJ/mol and −∇U in kJ/mol/nm; this module returns

    u(x) = U(x) / (k_B·T),     forces −∇u = −∇U / (k_B·T)  (1/nm),

with x the 66 Cartesian coordinates in nm (atom-major: x1, y1, z1, x2, ...) and
k_B = R = 8.314462618·10⁻³ kJ/(mol·K), the value OpenMM's integrators use.

Observables are the backbone dihedrals in radians, in (−π, π]:
φ = C(ACE)–N(ALA)–CA(ALA)–C(ALA) and ψ = N(ALA)–CA(ALA)–C(ALA)–N(NME), with the IUPAC sign
convention (IUPAC–IUB, Biochemistry 9, 3471 (1970)): looking along the central bond from its
first to its second atom, the angle is positive when the near bond turns clockwise onto the
far one. That is also OpenMM's torsion angle θ and MDTraj's.

States: the slow degree of freedom of alanine dipeptide is φ (Bolhuis, Dellago & Chandler,
PNAS 97, 5877 (2000); Chodera et al., J. Chem. Phys. 124, 194111 (2006)). State 1
("alphaL/C7ax") is 0 < φ < ``PHI_SPLIT`` = 2 rad (≈ 115°), state 0 ("C5/C7eq/alphaR") is the
rest of the circle. The boundaries are the two barriers in φ: φ = 0 and φ ≈ 2 rad. A plain
sign split (φ > 0) would put its second boundary at φ = ±π, inside the extended C5 basin,
whose tail wraps past ±π. Measured with this module (Langevin, 8 chains × 200 ps, dt 1 fs,
γ 1/ps): at 600 K the φ histogram has its minimum between αL/C7ax and that tail at
φ ≈ 100°–130°; at 300 K, from the C5 start and with no αL/C7ax visit, 0.08 % of the
samples lie at φ > 2 rad, which a sign split would have counted as a visit of state 1.

Cost: each configuration passed to :meth:`AlanineDipeptide.energy` or
:meth:`~AlanineDipeptide.energy_and_forces` is one OpenMM evaluation on one reused
``Context``. The default platform is OpenMM's Reference platform (double precision, one
thread): for 22 atoms it is faster than the CPU platform, whose per-call overhead (threads,
neighbour list) dominates at this size; ``platform = "CPU"`` (one thread, single-precision
forces) is there for comparison.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.optimize
import torch

from boltzbench.contracts import OpenMMTwin, System, param, require

PLATFORMS = ("Reference", "CPU")
N_ATOMS = 22
#: standard deviation (nm) of the Gaussian noise added to the minimized start of each chain
INITIAL_NOISE_NM = 1e-3
#: atoms of the backbone dihedrals as (residue name, atom name)
PHI_ATOMS = (("ACE", "C"), ("ALA", "N"), ("ALA", "CA"), ("ALA", "C"))
PSI_ATOMS = (("ALA", "N"), ("ALA", "CA"), ("ALA", "C"), ("NME", "N"))
#: state 1 (alphaL/C7ax) is 0 < φ < PHI_SPLIT, in radians
PHI_SPLIT = 2.0


def dihedral(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    """Dihedral angle of the points p0–p1–p2–p3 (each (..., 3)), in (−π, π], IUPAC sign.

    With b1 = p1 − p0, b2 = p2 − p1, b3 = p3 − p2 (Blondel & Karplus, J. Comput. Chem. 17,
    1132 (1996)):  φ = atan2(|b2|·b1·(b2×b3), (b1×b2)·(b2×b3)).
    """
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = torch.linalg.vector_norm(b2, dim=-1) * (b1 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    return torch.atan2(y, x)


def _quiet_import_testsystems():
    """openmmtools' testsystems, imported without the notices pymbar prints (to stderr)
    when openmmtools imports it."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from openmmtools import testsystems
    return testsystems


@functools.lru_cache(maxsize=1)
def _testsystem():
    """The openmmtools test system (system, topology, positions), built once per process."""
    return _quiet_import_testsystems().AlanineDipeptideVacuum(constraints=None)


def _atom_indices(topology, atoms: tuple[tuple[str, str], ...]) -> list[int]:
    """Indices of (residue name, atom name) pairs; each must name exactly one atom."""
    found = []
    for residue_name, atom_name in atoms:
        hits = [a.index for a in topology.atoms()
                if a.residue.name == residue_name and a.name == atom_name]
        if len(hits) != 1:
            raise ValueError(f"expected one atom {atom_name} in residue {residue_name}, found {len(hits)}")
        found.append(hits[0])
    return found


def _bonds() -> list[tuple[int, int]]:
    """The covalent bonds of the molecule, as atom-index pairs."""
    return [(bond[0].index, bond[1].index) for bond in _testsystem().topology.bonds()]


def _rotate_beyond(x: torch.Tensor, b: int, c: int, bonds: list[tuple[int, int]], angle: float) -> torch.Tensor:
    """Rotate the atoms on c's side of the bond b–c about the axis b→c by ``angle``
    (right-handed; it adds ``angle`` to every dihedral a–b–c–d). x: (atoms, 3)."""
    side, todo = {c}, [c]
    while todo:
        atom = todo.pop()
        for i, j in bonds:
            for here, there in ((i, j), (j, i)):
                if here == atom and there != b and there not in side:
                    side.add(there)
                    todo.append(there)
    k = (x[c] - x[b]) / torch.linalg.vector_norm(x[c] - x[b])
    v = x[sorted(side)] - x[b]
    cos, sin = np.cos(angle), np.sin(angle)
    rotated = v * cos + torch.linalg.cross(k.expand_as(v), v) * sin + k * (v @ k)[:, None] * (1 - cos)
    out = x.clone()
    out[sorted(side)] = x[b] + rotated
    return out


def _vacuum_system():
    """A copy of the test system's OpenMM System without its CMMotionRemover (a dynamics
    aid that has no energy; leaving it out makes OpenMM dynamics plain Langevin dynamics of
    exp(−u))."""
    import openmm

    system = openmm.XmlSerializer.clone(_testsystem().system)
    for i in reversed(range(system.getNumForces())):
        if isinstance(system.getForce(i), openmm.CMMotionRemover):
            system.removeForce(i)
    return system


@dataclass
class AlanineDipeptide(System):
    """Alanine dipeptide in vacuum (Amber ff96, no constraints) through OpenMM."""

    name: ClassVar[str] = "alanine_dipeptide"
    reference_recipe: ClassVar[dict] = {  # parallel tempering, Langevin local moves, up to 1200 K
        "sampler": "pt", "params": {"n_chains": 8, "t_max": 4.0, "move": "md", "dt": 0.001},
        "max_evals": 2e7, "n_samples": 20000, "burn_in": 0.1}
    description: ClassVar[str] = "alanine dipeptide, vacuum, Amber ff96, no constraints, via OpenMM"
    citation: ClassVar[str] = ("openmmtools AlanineDipeptideVacuum (Amber ff96: Kollman et al. 1997); "
                               "OpenMM: Eastman et al., PLoS Comput. Biol. 13, e1005659 (2017)")
    units: ClassVar[str] = "positions nm; energies k_B·T at `temperature`; forces k_B·T/nm"
    states: ClassVar[tuple[str, ...]] = ("C5/C7eq/alphaR", "alphaL/C7ax")
    default_metrics: ClassVar[tuple[str, ...]] = ("dihedral_w2", "delta_f_error", "energy_w1", "mean_energy_error",
                                                  "ess")

    temperature: float = param(300.0, "temperature in kelvin")
    platform: str = param("Reference", "OpenMM platform that evaluates energies: 'Reference' or 'CPU' (1 thread)",
                          physical=False)

    def __post_init__(self) -> None:
        require(self.temperature > 0, "temperature", f"must be > 0 (kelvin), got {self.temperature}")
        require(self.platform in PLATFORMS, "platform",
                f"must be one of {', '.join(repr(p) for p in PLATFORMS)}, got {self.platform!r}")

    # metadata ------------------------------------------------------------------
    @property
    def dof(self) -> int:
        return 3 * N_ATOMS

    @property
    def n_particles(self) -> int:
        return N_ATOMS

    @property
    def kt(self) -> float:
        """k_B·T in kJ/mol."""
        from openmm import unit

        return unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin) * self.temperature

    # OpenMM ----------------------------------------------------------------------
    @functools.cached_property
    def context(self):
        """The one OpenMM Context every evaluation reuses (built on first use)."""
        import openmm

        properties = {"Threads": "1"} if self.platform == "CPU" else {}
        return openmm.Context(_vacuum_system(), openmm.VerletIntegrator(1e-3),
                              openmm.Platform.getPlatformByName(self.platform), properties)

    def _evaluate(self, x: torch.Tensor, forces: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """U/kT (B,) and, if asked, −∇U/kT (B, 66): one OpenMM evaluation per row of x."""
        xs = x.detach().cpu().double().numpy().reshape(-1, N_ATOMS, 3)
        u = np.empty(len(xs))
        f = np.empty(xs.shape) if forces else None
        context = self.context
        for i, positions in enumerate(xs):
            context.setPositions(positions)
            state = context.getState(getEnergy=True, getForces=forces)
            u[i] = state.getPotentialEnergy()._value  # kJ/mol, OpenMM's internal unit
            if forces:
                f[i] = state.getForces(asNumpy=True)._value  # kJ/mol/nm
        as_tensor = functools.partial(torch.as_tensor, dtype=x.dtype, device=x.device)
        return as_tensor(u / self.kt), None if f is None else as_tensor(f.reshape(len(xs), -1) / self.kt)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return self._evaluate(x, forces=False)[0]

    def _energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._evaluate(x, forces=True)

    def openmm_twin(self) -> OpenMMTwin:
        """A fresh copy of the OpenMM System (no CMMotionRemover): nm and kJ/mol in, so
        ``nm_per_unit`` = 1 and ``kj_per_mol_per_kt`` = k_B·T."""
        return OpenMMTwin(system=_vacuum_system(), nm_per_unit=1.0, kj_per_mol_per_kt=self.kt,
                          temperature_kelvin=self.temperature, box_nm=None)

    # analysis ----------------------------------------------------------------------
    @functools.cached_property
    def _dihedral_atoms(self) -> dict[str, list[int]]:
        topology = _testsystem().topology
        return {"phi": _atom_indices(topology, PHI_ATOMS), "psi": _atom_indices(topology, PSI_ATOMS)}

    def observables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone dihedrals φ and ψ in radians, (−π, π]."""
        atoms = x.reshape(x.shape[0], N_ATOMS, 3)
        return {name: dihedral(*(atoms[:, i] for i in idx)) for name, idx in self._dihedral_atoms.items()}

    def state_of(self, x: torch.Tensor) -> torch.Tensor:
        """1 (αL/C7ax) where 0 < φ < ``PHI_SPLIT``, else 0 (C5/C7eq/αR)."""
        phi = self.observables(x)["phi"]
        return ((phi > 0) & (phi < PHI_SPLIT)).long()

    # starts and reference ------------------------------------------------------------
    @functools.cached_property
    def minimized_positions(self) -> torch.Tensor:
        """The test system's positions, minimized by BFGS on u (66,), in nm (≈ 160
        evaluations to a largest force of 1e-4 k_B·T/nm: the C5 minimum).

        The evaluations go through :meth:`energy_and_forces` inside the ledger's setup
        phase, so the minimization is charged to setup, once per system instance.
        """
        return self._minimize(np.asarray(_testsystem().positions._value, dtype=np.float64).reshape(-1))

    def _minimize(self, start: np.ndarray) -> torch.Tensor:
        """BFGS on u from ``start`` (66,) to a largest force of 1e-4 k_B·T/nm, charged to setup."""
        def u_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
            u, f = self.energy_and_forces(torch.from_numpy(flat)[None])
            return float(u[0]), -f[0].numpy()

        with self.ledger.setup_phase():
            result = scipy.optimize.minimize(u_and_grad, start, jac=True, method="BFGS",
                                             options={"maxiter": 2000, "gtol": 1e-4})
        return torch.as_tensor(result.x, dtype=self.dtype)

    @functools.cached_property
    def state_minima(self) -> torch.Tensor:
        """(2, 66): a minimum in each state. State 0: :attr:`minimized_positions` (C5).
        State 1: from it, φ and ψ turned to the C7ax values (75°, −65°; e.g. Chodera et al.
        2006, Fig. 1) by rigid rotations of the atoms beyond the N–CA (then CA–C) bond,
        then minimized (charged to setup)."""
        x = self.minimized_positions.reshape(N_ATOMS, 3).clone()
        for name, target in (("phi", np.radians(75.0)), ("psi", np.radians(-65.0))):
            a, b, c, d = self._dihedral_atoms[name]
            now = float(dihedral(x[a], x[b], x[c], x[d]))
            x = _rotate_beyond(x, b, c, _bonds(), target - now)
        c7ax = self._minimize(x.reshape(-1).numpy())
        return torch.stack([self.minimized_positions, c7ax])

    def sample_initial(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` copies of the minimized structure plus N(0, (1 pm)²) noise per coordinate."""
        noise = torch.randn(n, self.dof, generator=generator, dtype=self.dtype)
        return self.minimized_positions + INITIAL_NOISE_NM * noise

    def sample_states(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Chain i starts at the minimum of state i mod 2 (C5, C7ax) plus 1 pm noise."""
        noise = torch.randn(n, self.dof, generator=generator, dtype=self.dtype)
        return self.state_minima[torch.arange(n) % 2] + INITIAL_NOISE_NM * noise

