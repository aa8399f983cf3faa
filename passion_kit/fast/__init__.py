"""Faster kernels for the plain models, swapped in by one call.

The backbones in :mod:`passion_kit.models` are plain PyTorch. :func:`speed_up` swaps, in
place, the class of every ``nn.Conv3d``, ``nn.InstanceNorm3d`` and
:class:`~passion_kit.models.blocks.Upsample` of a model for a subclass that computes the
same values on a faster route where one pays (:mod:`passion_kit.fast.kernels`); the
parameters, their names and the checkpoints do not change, and each kernel is tested
equal to the plain op in values and gradients.

Training and evaluation call it when ``train.fast_kernels`` is true (the default)::

    from passion_kit.fast import speed_up
    net = speed_up(build_backbone("rfnet", patch_size=32))

``python -m passion_kit train --preset cpu train.fast_kernels=false`` trains the plain model.
"""

from __future__ import annotations

from torch import nn

from passion_kit.fast.kernels import FastConv3d, FastInstanceNorm3d, FastUpsample
from passion_kit.models.blocks import Upsample

__all__ = ["speed_up", "plain"]

_FAST: dict[type, type] = {
    nn.Conv3d: FastConv3d,
    nn.InstanceNorm3d: FastInstanceNorm3d,
    Upsample: FastUpsample,
}
_PLAIN = {fast: plain_cls for plain_cls, fast in _FAST.items()}


def speed_up(model: nn.Module) -> nn.Module:
    """Swap the plain modules of ``model`` for their fast kernels, in place; returns it."""
    for module in model.modules():
        fast = _FAST.get(type(module))
        if fast is not None:
            module.__class__ = fast
    return model


def plain(model: nn.Module) -> nn.Module:
    """Undo :func:`speed_up`, in place; returns ``model``."""
    for module in model.modules():
        original = _PLAIN.get(type(module))
        if original is not None:
            module.__class__ = original
    return model
