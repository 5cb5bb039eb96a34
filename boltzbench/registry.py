"""Where systems, samplers and metrics are found: built-in tables plus entry points.

A plugin package registers a class (or, for metrics, a function ``f(samples, reference)``)
under one of the entry-point groups ``boltzbench.systems``, ``boltzbench.samplers``,
``boltzbench.metrics``. Built-ins are named by ``"module:attr"`` and imported only when
used, so one broken entry never stops the others from loading. A matrix may also name a
local ``"module:attr"`` directly, for development.
"""

from __future__ import annotations

import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from boltzbench.contracts import Configurable, ParameterError, Sampler, System

BUILTIN = {
    "systems": {
        "double_well": "boltzbench.systems.double_well:DoubleWell",
        "harmonic": "boltzbench.systems.harmonic:Harmonic",
        "alanine_dipeptide": "boltzbench.systems.alanine:AlanineDipeptide",
        "ka3d": "boltzbench.systems.liquids:KobAndersen3D",
        "ka2d": "boltzbench.systems.liquids:KobAndersen2D",
        "ternary2d": "boltzbench.systems.liquids:Ternary2D",
        "soft_spheres": "boltzbench.systems.liquids:SoftSpheres",
        "dw4": "boltzbench.systems.clusters:DoubleWell4",
        "lj13": "boltzbench.systems.clusters:LennardJones13",
    },
    "samplers": {
        "md": "boltzbench.samplers.md:LangevinMD",
        "mc": "boltzbench.samplers.mc:MetropolisMC",
        "pt": "boltzbench.samplers.parallel_tempering:ParallelTempering",
        "pa": "boltzbench.samplers.population_annealing:PopulationAnnealing",
        "flow": "boltzbench.samplers.flows.sampler:FlowSampler",
        "swap_mc": "boltzbench.samplers.swap_mc:SwapMC",
        "flow_swap": "boltzbench.samplers.flow_swap:FlowSwap",
    },
    "metrics": {
        "energy_w1": "boltzbench.metrics.wasserstein:energy_w1",
        "x1_w1": "boltzbench.metrics.wasserstein:x1_w1",
        "mean_energy_error": "boltzbench.metrics.observables:mean_energy_error",
        "heat_capacity_error": "boltzbench.metrics.observables:heat_capacity_error",
        "delta_f_error": "boltzbench.metrics.free_energy:delta_f_error",
        "ess": "boltzbench.metrics.ess:ess",
        "ess_geyer": "boltzbench.metrics.ess:ess_geyer",
        "ess_fraction": "boltzbench.metrics.ess:ess_fraction",
        "energy_w2": "boltzbench.metrics.wasserstein:energy_w2",
        "dihedral_w2": "boltzbench.metrics.wasserstein:dihedral_w2",
        "config_emd_w2": "boltzbench.metrics.wasserstein:config_emd_w2",
        "config_sliced_w2": "boltzbench.metrics.wasserstein:config_sliced_w2",
        "pair_distance_w1": "boltzbench.metrics.wasserstein:pair_distance_w1",
        **{f"pair_distance_w1_{p}": f"boltzbench.metrics.wasserstein:pair_distance_w1_{p}"
           for p in ("AA", "AB", "BB", "AC", "BC", "CC")},
        "delta_f": "boltzbench.metrics.free_energy:delta_f",
        "delta_f_stderr": "boltzbench.metrics.free_energy:delta_f_stderr",
    },
}
KIND_BASE = {"systems": System, "samplers": Sampler}


class UnknownName(KeyError):
    """A name that no table or entry point provides."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        super().__init__(f"unknown {kind[:-1]} {name!r}; valid choices: {', '.join(valid)}")

    def __str__(self) -> str:
        return self.args[0]


class PluginError(ImportError):
    """A registered entry that fails to import or does not honour the contract."""


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _check_contract(kind: str, name: str, obj: Any) -> Any:
    base = KIND_BASE.get(kind)
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(f"{kind[:-1]} {name!r} is {obj!r}, not a subclass of boltzbench {base.__name__}")
    if base is None and not callable(obj):
        raise PluginError(f"metric {name!r} is {obj!r}, not a function f(samples, reference)")
    return obj


@dataclass
class Registry:
    """One kind of component: name → ``"module:attr"`` from the built-ins and entry points."""

    kind: str
    targets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def discover(cls, kind: str) -> "Registry":
        targets = dict(BUILTIN[kind])
        for ep in entry_points(group=f"boltzbench.{kind}"):
            targets.setdefault(ep.name, ep.value)
        return cls(kind, targets)

    def names(self) -> list[str]:
        return sorted(self.targets)

    def load(self, name: str) -> Any:
        """The class (or metric function) registered as ``name``, or a ``module:attr``."""
        target = self.targets.get(name)
        if target is None and ":" not in name:
            raise UnknownName(self.kind, name, self.names())
        target = target or name
        try:
            obj = _import(target)
        except Exception as exc:  # noqa: BLE001 - any import failure names the plugin
            raise PluginError(f"{self.kind[:-1]} {name!r} ({target}) failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        return _check_contract(self.kind, name, obj)


def registry(kind: str) -> Registry:
    return Registry.discover(kind)


# ------------------------------------------------------------------ construction

def _type_ok(value: Any, annotation: Any) -> bool:
    """Does a TOML/JSON value fit a parameter's annotation (int, float, bool, str, lists, None)?"""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def build(cls: type[Configurable], params: dict[str, Any]) -> Configurable:
    """Construct ``cls(**params)`` after checking names and types; errors name the field."""
    fields = {f.name: f for f in cls.parameters()}
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        if key not in fields:
            raise ParameterError(key, f"unknown parameter of {cls.name!r}; valid: {', '.join(fields) or 'none'}")
        if not _type_ok(value, hints[key]):
            raise ParameterError(key, f"expected {getattr(hints[key], '__name__', hints[key])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ParameterError(key, f"must be finite, got {value!r}")
    return cls(**{k: normalized_value(v, hints[k]) for k, v in params.items()})


def _arms(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union annotation (``float | None`` → float, None), else itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def normalized_value(value: Any, annotation: Any) -> Any:
    """A parameter value in its normal form, so that equal settings hash to one cell id: an
    integer where the annotation takes floats but not integers becomes a float (``dt = 1``
    and ``dt = 1.0`` are one setting), element by element in lists (``list[float]``)."""
    arms = _arms(annotation)
    if isinstance(value, (list, tuple)):
        items = [typing.get_args(a) for a in arms if typing.get_origin(a) in (list, tuple)]
        item = items[0][0] if items and len(items[0]) == 1 else Any
        return [normalized_value(v, item) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and float in arms and int not in arms:
        return float(value)
    return value


def get_system(name: str, **params: Any) -> System:
    """A system by registered name (or ``module:attr``) with parameters."""
    return build(registry("systems").load(name), params)


def get_sampler(name: str, **params: Any) -> Sampler:
    """A sampler by registered name (or ``module:attr``) with parameters."""
    return build(registry("samplers").load(name), params)


def get_metric(name: str) -> Callable:
    """A metric function ``f(samples, reference)`` by registered name."""
    return registry("metrics").load(name)
