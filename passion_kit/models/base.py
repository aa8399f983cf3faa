"""The one interface every backbone implements, and PASSION and the trainer rely on.

A backbone is split into three calls so that objectives can reuse work:

- ``encode(image) -> Features``: every modality through its own encoder, once.
- ``fuse(feats, mask) -> FusionOut``: the fusion decoder under availability masks.
  ``mask`` may hold several rows per sample (B' = B * S): row ``r`` applies to
  sample ``r // S``. PASSION runs the teacher and all its students in one call and
  never re-encodes.
- ``separate(level_feats) -> logits``: the shared unimodal ("sep") decoder on one
  modality's features.

All heads return logits; softmax happens in the losses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Backbone", "FusionOut", "rows_per_sample", "expand_rows"]

Features = list[torch.Tensor]  # per level l (finest first): (B, M, C_l, *spatial_l)


@dataclass
class FusionOut:
    """Output of :meth:`Backbone.fuse` for B' mask rows.

    Attributes:
        logits: (B', K, *spatial) final segmentation logits.
        deep: deep-supervision logits, finest to coarsest, each (B', K, *spatial_l)
            at its native resolution; level l (1-based) carries weight 2^-l.
        feature: (B', C_1, *spatial) the last decoder feature before the segmentation
            head (``de_x1`` in the official code), used by the prototype loss.
    """

    logits: torch.Tensor
    deep: list[torch.Tensor]
    feature: torch.Tensor

    def rows(self, index: slice | torch.Tensor) -> FusionOut:
        """The same output restricted to some mask rows."""
        return FusionOut(self.logits[index], [d[index] for d in self.deep], self.feature[index])


def rows_per_sample(num_samples: int, mask: torch.Tensor) -> int:
    """S = mask rows per sample; checks that ``mask`` is (B * S, M) bool."""
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(
            f"mask must be a 2-D bool tensor (rows, M), got {mask.dtype} {tuple(mask.shape)}"
        )
    if mask.shape[0] % num_samples:
        raise ValueError(
            f"mask has {mask.shape[0]} rows, not a multiple of the batch size {num_samples}"
        )
    return mask.shape[0] // num_samples


def expand_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, ...) -> (B * rows, ...), row r is sample r // rows (a view when rows == 1)."""
    if rows == 1:
        return x
    return x.repeat_interleave(rows, dim=0)


class Backbone(nn.Module):
    """Base class: stores the sizes and defines the interface.

    Args:
        num_modalities: M, one encoder each.
        num_classes: K, segmentation classes including background.
        width: channels of the first level (``basic_dims``; 8 in the paper).
    """

    name: str = "backbone"

    def __init__(self, *, num_modalities: int, num_classes: int, width: int) -> None:
        super().__init__()
        for arg, value, low in (
            ("num_modalities", num_modalities, 1),
            ("num_classes", num_classes, 2),
            ("width", width, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
        self.num_modalities = num_modalities
        self.num_classes = num_classes
        self.width = width

    def encode(self, image: torch.Tensor) -> Features:  # pragma: no cover - interface
        raise NotImplementedError

    def fuse(self, feats: Features, mask: torch.Tensor) -> FusionOut:  # pragma: no cover
        raise NotImplementedError

    def separate(self, level_feats: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def modality_parameters(self, modality: int) -> Iterator[nn.Parameter]:
        """The parameters that only modality ``modality`` uses (what gradient modulation
        such as OGM-GE scales).

        By default the modality's encoder, ``self.encoders[modality]``; a backbone whose
        modalities own more than their encoder (mmFormer's per-modality transformer)
        overrides this.
        """
        if not 0 <= modality < self.num_modalities:
            raise IndexError(f"modality must be in [0, {self.num_modalities}), got {modality!r}")
        encoders = getattr(self, "encoders", None)
        if not isinstance(encoders, nn.ModuleList):
            raise TypeError(
                f"{type(self).__name__} has no `encoders` ModuleList: define "
                "modality_parameters(m) to name each modality's own parameters"
            )
        return encoders[modality].parameters()

    def check_image(self, image: torch.Tensor) -> None:
        if image.dim() < 4 or image.shape[1] != self.num_modalities:
            raise ValueError(
                f"image must be (B, {self.num_modalities}, *spatial), got {tuple(image.shape)}"
            )

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Inference: segmentation logits (B, K, *spatial) under ``mask`` (B, M)."""
        return self.fuse(self.encode(image), mask).logits
