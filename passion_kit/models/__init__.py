"""Backbones behind one interface (:mod:`passion_kit.models.base`) and a registry by name.

A new backbone is one file plus one line in ``_REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable

from passion_kit.config import build_named
from passion_kit.models.base import Backbone, FusionOut
from passion_kit.models.m2ftrans import M2FTrans
from passion_kit.models.mmformer import MMFormer
from passion_kit.models.rfnet import RFNet

__all__ = [
    "Backbone",
    "FusionOut",
    "M2FTrans",
    "MMFormer",
    "RFNet",
    "available_backbones",
    "build_backbone",
]

_REGISTRY: dict[str, Callable[..., Backbone]] = {
    "rfnet": RFNet,
    "mmformer": MMFormer,
    "m2ftrans": M2FTrans,
}


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(
    name: str,
    *,
    num_modalities: int = 4,
    num_classes: int = 4,
    width: int = 8,
    patch_size: int | tuple[int, int, int] = 80,
    **options,
) -> Backbone:
    """Build a backbone by name (see :func:`available_backbones`).

    Args:
        name: backbone name, e.g. ``"rfnet"``.
        num_modalities: M.
        num_classes: K including background.
        width: channels at full resolution (8 in the paper).
        patch_size: training patch size, an int or an (H, W, D) tuple.
        **options: backbone-specific options.

    Raises:
        ValueError: for an unknown name or option.
    """
    return build_named(
        _REGISTRY,
        name,
        "backbone",
        "model.options",
        num_modalities=num_modalities,
        num_classes=num_classes,
        width=width,
        patch_size=patch_size,
        **options,
    )
