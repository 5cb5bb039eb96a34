"""Normalizing-flow Boltzmann generators (the ``flow`` sampler).

layers.py       RealNVP affine couplings, circular-spline couplings on the torus, fixed
                coordinate layers (standardization, periodic box, internal coordinates)
periodic_equivariant.py
                permutation-equivariant coupling flow on the torus for periodic particle systems
flow_matching.py
                E(n)-equivariant continuous flow (EGNN vector field) trained by flow matching, for clusters
base.py         Gaussian and thermal (high-temperature Boltzmann) base distributions
model.py        the generator: coordinates ∘ couplings ∘ base, log-densities, energy surrogates
train.py        maximum likelihood + energy-based KL with a schedule, Adam, clipping, early stopping
sampler.py      FlowSampler: setup charged to the ledger, reweighting or flow-MCMC
persistence.py  save/load a trained flow (weights_only=True), cache keys for reuse
bench.py        training step time and sampling throughput (python -m boltzbench.samplers.flows.bench)
"""

from boltzbench.samplers.flows.sampler import FlowSampler

__all__ = ["FlowSampler"]
