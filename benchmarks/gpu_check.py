"""The prepared GPU check: one command, one Markdown table, CPU beside CUDA.

    python -m boltzbench.benchmarks.gpu_check            # on a machine with a GPU: < 8 minutes
    python -m boltzbench.benchmarks.gpu_check --quick    # what CI runs (CPU only; CUDA parts skipped)

Rows of the table:

* **tests** — the CUDA tests (``tests/test_cuda.py``: every sampler end to end on ``cuda``,
  and the tests named ``*cuda*`` elsewhere), run by pytest in a subprocess: passed/failed.
* **kernel** — energy+forces of the torch pair kernels, particle-evaluations per second, for
  the ternary glass former (N = 43) and Kob–Andersen 3D (N = 256) at 1 to 65 536 replicas
  (CPU up to 256 replicas: the CPU's rate is flat beyond).
* **flow step** — one maximum-likelihood + KL training step at batch 256 (ms), and the
  sampling rate with energies, from :func:`boltzbench.samplers.flows.bench.measure`.
* **cell** — one glass flow cell (thermal base at 2T) and one PT cell on ``ternary2d``
  (N = 43, T = 0.5), 10⁵ evaluations: status and wall seconds.

Without CUDA every CUDA entry reads "no CUDA"; the CPU entries still run. A measurement that
raises reads "failed: <error>" and the table goes on (the failed CUDA tests are named in their
entry); the exit status is 1 when any entry, cell or test failed, so the script cannot rot
unnoticed. Every time is the best of a few repetitions after a warm-up, with
``torch.cuda.synchronize()`` around timed CUDA work.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

import boltzbench
from boltzbench.contracts import Budget, cell_generator

REPLICAS = (1, 16, 256, 4096, 65536)
CPU_MAX_REPLICAS = 256
MAX_PARTICLES_PER_CALL = 2**22  # replicas × N on the GPU per call (memory)
KERNEL_SYSTEMS = (("ternary2d", {"n_particles": 43, "temperature": 0.5}), ("ka3d", {"n_particles": 256}))
CELL_SYSTEM = {"n_particles": 43, "temperature": 0.5}
CELLS = {
    "flow (thermal base 2T)": ("flow", {"base": "thermal", "base_temperature": 2.0, "base_sampler": "md",
                                        "base_step": 0.005, "base_chains": 64, "base_pool": 4096,
                                        "data_step": 0.005, "data_chains": 32, "data_steps": 500,
                                        "train_steps": 300, "sample_batch": 2048}),
    "pt (MD moves)": ("pt", {"n_chains": 16, "n_replicas": 8, "t_max": 1.5}),
}
NO_CUDA = "no CUDA"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, device: str, repeats: int) -> float:
    """Best wall seconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def kernel_rate(name: str, params: dict, device: str, replicas: int, repeats: int) -> float:
    """Particle-evaluations (energy+forces) per second of ``replicas`` configurations."""
    system = boltzbench.get_system(name, **params, device=device)
    lattice = system.lattice_positions(1, cell_generator(system, 0)).reshape(1, system.dof)  # no overlaps
    x = lattice.to(device=device, dtype=system.dtype).expand(replicas, -1).contiguous()
    seconds = best_time(lambda: system.energy_and_forces(x), device, repeats)
    return replicas * system.n_particles / seconds


def run_cuda_tests(root: Path) -> str:
    """pytest on the CUDA tests in a subprocess: its summary line (e.g. '12 passed'), then the
    ids of the tests that failed, each with the first line of its error."""
    tests = [str(root / "tests" / f) for f in ("test_cuda.py", "test_particles.py", "test_liquids.py",
                                               "test_swap_mc.py", "test_flow_sampler.py")]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-k", "cuda",
                           *tests], capture_output=True, text=True, cwd=root)
    lines = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    summary = lines[-1].strip("= ") if lines else f"pytest exit {done.returncode}"
    failed = [line.split(" ", 1)[1][:160] for line in done.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return "; ".join([summary, *failed]).replace("|", "/")


def failure(exc: BaseException) -> str:
    """A table entry for a measurement that raised: one broken entry does not end the table."""
    first = (str(exc).splitlines() or [""])[0][:100].replace("|", "/")
    return f"failed: {type(exc).__name__}: {first}"


def attempt(measurement, *args, **kwargs):
    """``measurement(*args, **kwargs)``, or :func:`failure`'s entry if it raises."""
    try:
        return measurement(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 — reported in the table and in the exit status
        return failure(exc)


def run_glass_cell(sampler: str, params: dict, device: str, max_evals: float) -> str:
    from boltzbench import make_cell, run_cell
    sampler_params = {**params, "device": device} if sampler == "flow" else params
    cell = make_cell("ternary2d", sampler, system_params={**CELL_SYSTEM, "device": device},
                     sampler_params=sampler_params, budget=Budget(max_evals=max_evals, n_snapshots=2))
    record = run_cell(cell).record
    if record["status"] != "ok":
        return f"{record['status']}: {(record['error'] or '').splitlines()[-1][:80]}"
    return f"ok, {record['cost']['total_wall_s']:.1f} s"


def fmt(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.3g}"


def rows(quick: bool, root: Path) -> Iterator[tuple[str, str, str, str]]:
    """(part, case, cpu, cuda) rows of the table, as they are measured."""
    has_cuda = torch.cuda.is_available()
    repeats = 2 if quick else 5
    yield ("tests", "CUDA tests (pytest -k cuda)", "—", run_cuda_tests(root) if has_cuda else NO_CUDA)
    replicas = (1, 16) if quick else REPLICAS
    systems = KERNEL_SYSTEMS[:1] if quick else KERNEL_SYSTEMS
    for name, params in systems:
        n = params["n_particles"]
        for b in replicas:
            cpu = fmt(attempt(kernel_rate, name, params, "cpu", b, repeats)) if b <= CPU_MAX_REPLICAS else "—"
            gpu = NO_CUDA
            if has_cuda:
                gpu = (fmt(attempt(kernel_rate, name, params, "cuda", b, repeats))
                       if b * n <= MAX_PARTICLES_PER_CALL else "—")
            yield ("kernel", f"{name} N={n}, {b} replicas (particle-evals/s)", cpu, gpu)
    from boltzbench.samplers.flows.bench import measure
    flow_cases = [("double_well", "mlp")] + ([] if quick else [("ternary2d", "mlp")])
    for system, architecture in flow_cases:
        results = {}
        for device in ("cpu", "cuda"):
            results[device] = (NO_CUDA if device == "cuda" and not has_cuda else
                               attempt(measure, system, device, repeats=repeats, architecture=architecture,
                                       sample_batch=1024 if quick else 4096))
        for key, label in (("ml_kl_step_ms", "ML+KL step, batch 256 (ms)"),
                           ("samples_with_energy_per_s", "samples with energies (1/s)")):
            yield ("flow step", f"{system} {architecture}: {label}",
                   *(fmt(r[key]) if isinstance(r, dict) else r for r in (results["cpu"], results["cuda"])))
    max_evals = 2e4 if quick else 1e5
    for label, (sampler, params) in CELLS.items():
        if quick and sampler == "flow":
            params = {**params, "base_chains": 16, "base_warmup": 50, "base_pool": 256, "data_chains": 8,
                      "data_steps": 100, "train_steps": 10, "sample_batch": 256}
        cpu = attempt(run_glass_cell, sampler, params, "cpu", max_evals)
        gpu = attempt(run_glass_cell, sampler, params, "cuda", max_evals) if has_cuda else NO_CUDA
        yield ("cell", f"ternary2d N=43 T=0.5, {label}, {max_evals:.0e} evals", cpu, gpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (CPU only, a minute or two)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root (for the tests)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: small batches are slower with many threads; on the "
                             "H200 machine's 16 CPU threads the double-well flow step took 39.6 ms on the CPU "
                             "and 33.8 ms with the flow on CUDA and the energies on the CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else NO_CUDA
    print(f"GPU check: torch {torch.__version__}, CUDA device: {device}, torch threads {torch.get_num_threads()}\n")
    print("| part | case | cpu | cuda |")
    print("|---|---|---|---|", flush=True)
    broken = []
    for row in rows(args.quick, args.root):
        print("| " + " | ".join(row) + " |", flush=True)
        broken += [row[1] for value in row[2:] if value.startswith(("failed", "timeout", "pytest exit"))
                   or re.match(r"\d+ failed", value)]
    print(f"\n{time.perf_counter() - started:.0f} s")
    if broken:
        print("failed: " + "; ".join(broken), file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
