"""asv benchmarks: energy kernels, one step of each sampler, metrics, tracked accuracy.

Run with the existing environment (the one boltzbench is installed in)::

    asv machine --yes                  # once per machine
    asv run -E existing --quick        # or without --quick for stable numbers
    asv publish && asv preview         # HTML in .asv/html
    asv compare <commit-a> <commit-b>  # after `asv run` on both commits

Parameters cover whatever systems and samplers the installed registry has, so plugins and
new systems join the suite without edits here.
"""

import torch

import boltzbench
from boltzbench.registry import registry
from boltzbench.runner import make_cell, run_cell

SYSTEMS = [s for s in ("double_well", "harmonic", "dw4", "lj13", "ternary2d", "ka2d", "ka3d",
                       "soft_spheres", "alanine_dipeptide") if s in registry("systems").names()]
SAMPLERS = [s for s in ("md", "mc", "pt", "pa", "swap_mc", "flow") if s in registry("samplers").names()]
TRACK_SYSTEMS = [s for s in ("double_well", "harmonic") if s in SYSTEMS]


class EnergyKernels:
    """Energy + forces of a batch of configurations: the cost unit of every sampler."""

    params = (SYSTEMS, [1, 64])
    param_names = ("system", "batch")

    def setup(self, system, batch):
        self.system = boltzbench.get_system(system)
        self.x = self.system.sample_initial(batch, torch.Generator().manual_seed(0))

    def time_energy_and_forces(self, system, batch):
        self.system.energy_and_forces(self.x)

    def time_energy(self, system, batch):
        self.system.energy(self.x)


class SamplerThroughput:
    """Each sampler (default parameters) on the double well for 2·10⁵ evaluations."""

    params = (SAMPLERS,)
    param_names = ("sampler",)

    def setup(self, sampler):
        self.sampler = boltzbench.get_sampler(sampler)
        self.budget = boltzbench.Budget(max_evals=200_000, n_snapshots=1)

    def time_200k_evaluations(self, sampler):
        system = boltzbench.get_system("double_well")
        for _ in self.sampler.run(system, self.budget, torch.Generator().manual_seed(0)):
            pass


class Metrics:
    """Every default metric of the double well on 10⁵ samples (64 chains)."""

    def setup(self):
        cell = make_cell("double_well", "mc", budget=boltzbench.Budget(max_evals=64 * 15_700, n_snapshots=1),
                         sampler_params={"thin": 10})
        self.cell = cell

    def time_one_cell_with_metrics(self):
        run_cell(self.cell)


class Accuracy:
    """Accuracy and ESS that each sampler reaches for a fixed budget (tracked over commits)."""

    params = (TRACK_SYSTEMS, SAMPLERS)
    param_names = ("system", "sampler")
    timeout = 600

    def setup_cache(self):
        records = {}
        for system in TRACK_SYSTEMS:
            for sampler in SAMPLERS:
                cell = make_cell(system, sampler, seed=0, budget=boltzbench.Budget(max_evals=1_000_000, n_snapshots=1))
                records[(system, sampler)] = run_cell(cell).record
        return records

    def track_energy_w1(self, records, system, sampler):
        return records[(system, sampler)]["final"]["metrics"].get("energy_w1")

    def track_ess_per_million_evals(self, records, system, sampler):
        record = records[(system, sampler)]
        ess = record["final"]["metrics"].get("ess")
        return None if ess is None else ess / record["cost"]["total_evals"] * 1e6
