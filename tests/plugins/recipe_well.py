"""A double well whose reference is built by a recipe run instead of quadrature."""

from dataclasses import dataclass
from typing import ClassVar

from boltzbench.contracts import System
from boltzbench.systems.double_well import DoubleWell


@dataclass
class RecipeWell(DoubleWell):
    name: ClassVar[str] = "recipe_well"
    reference_recipe: ClassVar[dict] = {"sampler": "mc", "params": {"step": 0.7, "n_chains": 64, "thin": 10},
                                        "max_evals": 64 * 20_000, "n_samples": 5_000, "burn_in": 0.2}
    reference = System.reference  # the stored reference, not the quadrature
