"""Training objectives over the backbone interface, selectable by name.

``build_objective("passion" | "baseline" | "ogm_ge" | "pmr" | "redcore", num_modalities=...,
num_classes=..., **options)``. An objective never imports a concrete backbone.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from passion_kit.balancing.ogm_ge import OGMGEObjective
from passion_kit.balancing.pmr import PMRObjective
from passion_kit.balancing.redcore import RedCoreObjective
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
        ValueError: for an unknown name.
    """
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; expected one of {available_objectives()}")
    try:
        return _REGISTRY[key](num_modalities=num_modalities, num_classes=num_classes, **options)
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unknown is None:
            raise
        raise ValueError(
            f"objective.options: the {key} objective takes no option {unknown.group(1)!r}"
        ) from None
