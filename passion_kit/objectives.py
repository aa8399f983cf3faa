"""Training objectives over the backbone interface, selectable by name.

``build_objective("passion" | "baseline" | "ogm_ge" | "pmr" | "redcore", num_modalities=...,
num_classes=..., **options)``. An objective never imports a concrete backbone.
"""

from __future__ import annotations

from collections.abc import Callable

from passion_kit.balancing.ogm_ge import OGMGEObjective
from passion_kit.balancing.pmr import PMRObjective
from passion_kit.balancing.redcore import RedCoreObjective
from passion_kit.config import build_named
from passion_kit.method.base import StepResult
from passion_kit.method.baseline import BaselineObjective
from passion_kit.method.passion import PassionObjective

__all__ = [
    "BaselineObjective",
    "OGMGEObjective",
    "PMRObjective",
    "PassionObjective",
    "RedCoreObjective",
    "StepResult",
    "available_objectives",
    "build_objective",
]

_REGISTRY: dict[str, Callable[..., object]] = {
    "baseline": BaselineObjective,
    "passion": PassionObjective,
    "ogm_ge": OGMGEObjective,
    "pmr": PMRObjective,
    "redcore": RedCoreObjective,
}


def available_objectives() -> list[str]:
    return sorted(_REGISTRY)


def build_objective(name: str, *, num_modalities: int, num_classes: int, **options):
    """Build an objective by name (see :func:`available_objectives`).

    Raises:
        ValueError: for an unknown name or option.
    """
    return build_named(
        _REGISTRY,
        name,
        "objective",
        "objective.options",
        num_modalities=num_modalities,
        num_classes=num_classes,
        **options,
    )
