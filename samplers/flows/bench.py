"""Throughput of the flow sampler: training step time and sampling rate.

    python -m boltzbench.samplers.flows.bench [--system double_well] [--threads 2] [--device cpu]
                                              [--architecture mlp]

Times, for an architecture at its default size (``mlp``: 8 couplings, width 64, 2 hidden
layers) on the given system (on the flow's device when it has a ``device`` parameter), with batch 256: one ML step (no energy), one KL step (energy and forces of 256
configurations), one ML+KL step; and the sampling rate of the flow alone and with the
energies (what the ``reweight`` mode does). Prints a Markdown table. Data are random
configurations around ``system.sample_initial`` (timing only: no training quality).
"""

from __future__ import annotations

import argparse
import time

import torch

import boltzbench
import boltzbench.registry
from boltzbench.contracts import cell_generator
from boltzbench.samplers.flows.model import BoltzmannGenerator, energy
from boltzbench.samplers.flows.sampler import FlowSampler
from boltzbench.samplers.flows.train import TrainSettings, kl_terms, nll_terms


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def measure(system_name: str = "double_well", device: str = "cpu", precision: str = "float32",
            batch: int = 256, sample_batch: int = 4096, repeats: int = 20,
            architecture: str = "mlp") -> dict[str, float]:
    system_cls = boltzbench.registry.registry("systems").load(system_name)
    on_device = {"device": device} if "device" in {f.name for f in system_cls.parameters()} else {}
    system = boltzbench.get_system(system_name, **on_device)
    sampler = FlowSampler(device=device, precision=precision, architecture=architecture)
    spec = sampler._spec(system)
    gen = cell_generator(system, 0)
    x0 = system.sample_initial(1024, gen)
    bg = BoltzmannGenerator(spec).to(dtype=torch.float64)  # on the CPU: coordinates only
    feats = bg.features(x0.to(dtype=torch.float64, device="cpu"))  # x0 is on the system's device
    bg = BoltzmannGenerator(spec, feats.mean(0), feats.std(0).clamp(min=1e-3) + 0.01)
    bg = bg.to(dtype=torch.float32 if precision == "float32" else torch.float64, device=device)
    data = x0.to(dtype=bg.dtype, device=device)
    opt = torch.optim.Adam(bg.couplings.parameters(), lr=1e-4, foreach=True)
    s = TrainSettings()

    def step(ml: bool, kl: bool):
        def run():
            loss = 0.0
            if ml:
                idx = torch.randint(len(data), (batch,), generator=gen, device=gen.device).to(device)
                loss = loss + nll_terms(bg, system, data[idx], s.force_clip)[0].mean()
            if kl:
                loss = loss + kl_terms(bg, system, bg.draw_base(batch, gen), s.force_clip)[0].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bg.couplings.parameters(), 10.0)
            opt.step()
        return run

    def sample_only():
        with torch.no_grad():
            bg.push_base(bg.draw_base(sample_batch, gen))

    def sample_with_energy():
        with torch.no_grad():
            x, _ = bg.push_base(bg.draw_base(sample_batch, gen))
            energy(system, x)  # on the system's device

    few = max(2, repeats // 4)
    return {
        "ml_step_ms": 1e3 * _time(step(True, False), repeats, device),
        "kl_step_ms": 1e3 * _time(step(False, True), repeats, device),
        "ml_kl_step_ms": 1e3 * _time(step(True, True), repeats, device),
        "flow_samples_per_s": sample_batch / _time(sample_only, few, device),
        "samples_with_energy_per_s": sample_batch / _time(sample_with_energy, few, device),
        "energy_force_evals_per_s": batch / _time(lambda: system.energy_and_forces(x0[:batch]), few, device),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="double_well")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--architecture", default="mlp")
    args = parser.parse_args(argv)
    keys = ["ml_step_ms", "kl_step_ms", "ml_kl_step_ms", "flow_samples_per_s", "samples_with_energy_per_s",
            "energy_force_evals_per_s"]
    print(f"| system | device | threads | {' | '.join(keys)} |")
    print("|" + "---|" * (len(keys) + 3))
    for threads in args.threads:
        torch.set_num_threads(threads)
        r = measure(args.system, args.device, args.precision, repeats=args.repeats, architecture=args.architecture)
        print(f"| {args.system} | {args.device} | {threads} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
