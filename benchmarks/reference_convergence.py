"""Benchmark: are the swap-MC references converged? Independent runs from different starts.

Run ``python -m boltzbench.benchmarks.reference_convergence --build --folder DIR`` to build
the references of :data:`CASES` with seeds 0, 1, 2 (``boltzbench reference build``, one
sub-folder per seed): seed 0 by the system's ``reference_recipe`` (what is shipped), seeds 1
and 2, the independent checks, with the smaller budget of :data:`CASES`; then without
``--build`` to print the table (``--json PATH`` keeps it). ``--shipped`` takes seed 0 from
the package's own references instead of ``DIR/s0``. About 25 CPU minutes to build.

For every run (the stored reference of one seed, all ``n_chains`` independent chains, each
started from its own random configuration, burn-in and warm-up discarded):

* u = ⟨U⟩/N and C = Var(βU)/N (heat capacity per particle, kB = 1) of all kept samples,
  each with a jackknife standard error over blocks: every kept chain cut into
  :data:`BLOCKS` consecutive blocks (each ≳ 10 τ_int, so nearly independent);
* τ_int of βU (Sokal's window, :func:`boltzbench.metrics.ess.integrated_autocorr_time`,
  all chains), in sweeps, and as a fraction of one chain's kept run;
* the pair-distance distribution per species pair (histogram of r_ij on [0.5, L/2) in bins
  of 0.05 σ_AA, i.e. g(r) up to its r-dependent normalization), per block.

Between every two seeds: z = |Δ|/√(SE₁² + SE₂²) for u and C, and χ²/n_bins of the
histogram difference over all species pairs and bins with counts (per-bin SE from the
spread over chains where both runs keep ≥ 4 chains, else over blocks, which misses
correlations slower than a block). Converged: |z| ≲ 3 for u and C, χ²/n_bins ≈ 1, τ_int a small fraction of a run.

The stored samples are a thinned (stride s) flattening of the (frames, chains) array, so
sample k is frame ⌊s·k/C⌋ of chain s·k mod C; each chain's samples form a regular series
(spacing lcm(s, C)/C frames), recovered here by :func:`chain_traces`. Only C/gcd(s, C) of
the chains are kept when gcd(s, C) > 1 (the T = 0.2 reference: 2 of 8).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
import torch

from boltzbench import get_system
from boltzbench.metrics.ess import integrated_autocorr_time
from boltzbench.systems.references import PACKAGED, ReferenceMissing, build_reference, load_reference

#: (label, system name, parameters, budget of the check runs of seeds 1 and 2): the glass
#: matrix's ladder and its soft spheres.
CASES = (
    ("ternary2d_T0.32", "ternary2d", {"temperature": 0.32}, 1e6),
    ("ternary2d_T0.26", "ternary2d", {"temperature": 0.26}, 1e6),
    ("ternary2d_T0.2", "ternary2d", {"temperature": 0.2}, 1e6),   # not converged: not shipped, not in the ladder
    ("soft_spheres_2d", "soft_spheres", {"dim": 2, "n_particles": 64, "temperature": 0.2}, 5e5),
)
SEEDS = (0, 1, 2)
BIN = 0.05
BLOCKS = 8  # per kept chain


def chain_traces(n_samples: int, n_chains: int, frames: int, burn_in: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(chain, frame) of each stored sample and the spacing (frames) of each chain's series.

    The reference keeps frames ⌊burn_in·frames⌋.. of a (frames, C) array, flattened and taken
    with the smallest stride s that leaves ``n_samples`` samples.
    """
    total = (frames - int(burn_in * frames)) * n_chains
    stride = next(s for s in range(1, total + 1) if math.ceil(total / s) == n_samples)
    flat = stride * np.arange(n_samples)
    return flat % n_chains, flat // n_chains, math.lcm(stride, n_chains) // n_chains


def run_statistics(system, ref) -> dict:
    """u, C with SEs over chains, τ_int (sweeps and fraction of a run), per-chain histograms."""
    meta = ref.provenance
    gen = meta["generator"]
    n_chains, thin = gen["params"]["n_chains"], gen["params"]["thin"]
    frames = meta["diagnostics"]["steps"] // thin
    chain, frame, spacing = chain_traces(len(ref.energies), n_chains, frames, gen["burn_in"])
    kept = np.unique(chain)
    length = min(np.sum(chain == c) for c in kept) // BLOCKS * BLOCKS
    order = [np.flatnonzero(chain == c)[:length] for c in kept]              # sorted by frame already
    beta_u = np.stack([ref.energies[o] for o in order], axis=1)              # (length, kept chains)
    n = system.n_particles
    tau = integrated_autocorr_time(beta_u) * spacing * thin                  # sweeps
    blocks = [b for o in order for b in np.split(o, BLOCKS)]                 # sample indices per block

    def jackknife(stat):
        """stat over all blocks, and its jackknife standard error (leave one block out)."""
        values = np.array([stat(np.concatenate(blocks[:i] + blocks[i + 1:])) for i in range(len(blocks))])
        return stat(np.concatenate(blocks)), math.sqrt((len(values) - 1) * values.var())

    u, u_se = jackknife(lambda idx: ref.energies[idx].mean() * system.temperature / n)
    c, c_se = jackknife(lambda idx: ref.energies[idx].var(ddof=1) / n)
    edges = np.arange(0.5, system.box_edges[0] / 2 + BIN, BIN)
    hists = {}
    for key, values in ref.observables.items():
        if not key.startswith("pair_distance/") or key == "pair_distance/scaled":
            continue
        r = values.reshape(len(ref.energies), -1)
        hists[key] = np.stack([np.histogram(r[b], edges)[0] / r[b].size for b in blocks])  # (blocks, bins)
    return {
        "u": u, "u_se": u_se, "C": c, "C_se": c_se, "chains": len(kept),
        "tau_sweeps": tau, "run_sweeps": length * spacing * thin, "hists": hists,
        "acceptance_swap": meta["diagnostics"].get("acceptance_swap"),
    }


def compare(a: dict, b: dict) -> dict:
    """z of u and C and χ²/n_bins of the pair-distance histograms between two runs."""
    z = {k: abs(a[k] - b[k]) / math.hypot(a[f"{k}_se"], b[f"{k}_se"]) for k in ("u", "C")}
    by_chain = min(a["chains"], b["chains"]) >= 4   # independent chains where there are enough
    chi2, bins = 0.0, 0
    for key, ha in a["hists"].items():
        hb = b["hists"][key]
        if by_chain:
            ha, hb = (h.reshape(-1, BLOCKS, h.shape[-1]).mean(1) for h in (ha, hb))
        var = ha.var(axis=0, ddof=1) / len(ha) + hb.var(axis=0, ddof=1) / len(hb)
        ok = var > 0
        chi2 += float((((ha.mean(0) - hb.mean(0)) ** 2)[ok] / var[ok]).sum())
        bins += int(ok.sum())
    return {**z, "chi2_per_bin": chi2 / max(bins, 1), "bins": bins}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/boltzbench_refconv", help="one sub-folder s<seed> per seed")
    parser.add_argument("--build", action="store_true", help="build the runs first (minutes per run)")
    parser.add_argument("--shipped", action="store_true", help="seed 0 = the package's shipped references")
    parser.add_argument("--json", default=None, help="write the table as JSON to this path")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    rows = []
    for label, name, params, check_evals in CASES:
        system = get_system(name, **params)
        if args.build:
            for seed in SEEDS:
                build_reference(system, seed=seed, out=folder / f"s{seed}", progress=False,
                                max_evals=None if seed == 0 else check_evals)
        runs = {}
        for seed in SEEDS:
            where = [PACKAGED] if (seed == 0 and args.shipped) else [folder / f"s{seed}"]
            try:
                runs[seed] = run_statistics(system, load_reference(system, folders=where))
            except ReferenceMissing:
                print(f"{label}: no run of seed {seed} in {where[0]}, skipped")
        if len(runs) < 2:
            continue
        pairs = [compare(a, b) for a, b in itertools.combinations(runs.values(), 2)]
        rows.append({
            "case": label, "seeds": list(runs), "chains": [r["chains"] for r in runs.values()],
            **{f"{k}_seed{s}": r[k] for s, r in runs.items() for k in ("u", "u_se", "C", "C_se")},
            "tau_sweeps": [r["tau_sweeps"] for r in runs.values()],
            "tau_fraction": [r["tau_sweeps"] / r["run_sweeps"] for r in runs.values()],
            "z_u_max": max(p["u"] for p in pairs), "z_C_max": max(p["C"] for p in pairs),
            "chi2_per_bin_max": max(p["chi2_per_bin"] for p in pairs), "bins": pairs[0]["bins"],
            "acceptance_swap": [r["acceptance_swap"] for r in runs.values()],
        })
    print("per seed: u = <U>/N ± SE, C = Var(βU)/N ± SE, τ_int of βU (sweeps) / fraction of a chain's run; "
          "between seeds: max z of u and C, max χ²/bin of the pair-distance histograms")
    for r in rows:
        print(f"{r['case']}: max z_u {r['z_u_max']:.2f}, max z_C {r['z_C_max']:.2f}, "
              f"max χ²/bin {r['chi2_per_bin_max']:.2f} ({r['bins']} bins)")
        for i, s in enumerate(r["seeds"]):
            print(f"  seed {s}: u {r[f'u_seed{s}']:.4f} ± {r[f'u_se_seed{s}']:.4f}   "
                  f"C {r[f'C_seed{s}']:.3f} ± {r[f'C_se_seed{s}']:.3f}   τ_int {r['tau_sweeps'][i]:.0f} "
                  f"({r['tau_fraction'][i]:.3f} of {r['chains'][i]} chain(s)' runs), "
                  f"swap acceptance {r['acceptance_swap'][i]:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
