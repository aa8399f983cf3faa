"""What every training objective returns, and small helpers they share.

An objective is called as ``objective(batch, backbone) -> StepResult`` and keeps its
per-run state (e.g. PASSION's beta) in ``objective.state``, which the trainer saves
in checkpoints and closes with ``objective.end_epoch()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from passion_kit.method.losses import Up, deep_supervision_loss, segmentation_loss, upsample
from passion_kit.models.base import FusionOut

__all__ = ["StepResult", "one_hot", "check_batch", "reduce_batch", "teacher_terms"]


@dataclass
class StepResult:
    """One training step's loss and a detached record of it.

    Attributes:
        loss: scalar to call ``backward()`` on.
        terms: batch-level loss terms (detached floats), e.g. ``fuse``, ``deep``, ``sep``.
        per_modality: (M,) detached tensors, e.g. ``distance``, ``gate``, ``beta``,
            ``sep``, ``pixel``, ``proto`` (each loss term already reduced over the batch).
    """

    loss: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)
    per_modality: dict[str, torch.Tensor] = field(default_factory=dict)


def one_hot(label: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, *sp) class indices -> (B, K, *sp) one-hot of ``dtype``."""
    if label.min() < 0 or label.max() >= num_classes:
        raise ValueError(
            f"label values must be in [0, {num_classes - 1}], "
            f"got min {int(label.min())} and max {int(label.max())}"
        )
    return F.one_hot(label.long(), num_classes).movedim(-1, 1).to(dtype)


def check_batch(
    batch: dict, num_modalities: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a batch dict and return ``(image, label, mask)``."""
    missing = {"image", "label", "mask"} - set(batch)
    if missing:
        raise ValueError(f"batch is missing keys {sorted(missing)}; expected image, label, mask")
    image, label, mask = batch["image"], batch["label"], batch["mask"]
    b = image.shape[0]
    if image.dim() < 4 or image.shape[1] != num_modalities:
        raise ValueError(
            f"batch['image'] must be (B, {num_modalities}, *sp), got {tuple(image.shape)}"
        )
    if tuple(label.shape) != (b, *image.shape[2:]):
        raise ValueError(
            f"batch['label'] must be (B, *sp) = {(b, *image.shape[2:])}, got {tuple(label.shape)}"
        )
    if mask.dtype != torch.bool or tuple(mask.shape) != (b, num_modalities):
        raise ValueError(
            f"batch['mask'] must be bool (B, M) = {(b, num_modalities)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if not bool(mask.any(1).all()):
        raise ValueError("batch['mask'] has a sample with no available modality")
    return image, label, mask


def reduce_batch(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a per-sample loss over the batch (dim 0): ``"mean"``, or ``"sum"`` as the
    official code does (its effective learning rate grows with the batch size,
    docs/method.md G.6)."""
    return x.mean(0) if reduction == "mean" else x.sum(0)


def teacher_terms(
    teacher: FusionOut, y: torch.Tensor, reduction: str, up: Up = upsample
) -> dict[str, torch.Tensor]:
    """``L_fuse`` and ``L_ds`` of the multi-modal (teacher) rows, reduced over the batch
    (docs/method.md C.3): weighted CE + Dice of the fused prediction, and the same on
    each deep level's upsampled prediction with weights 1/2, 1/4, ..."""
    return {
        "fuse": reduce_batch(segmentation_loss(F.softmax(teacher.logits.float(), 1), y), reduction),
        "deep": reduce_batch(
            deep_supervision_loss([d.float() for d in teacher.deep], y, up=up), reduction
        ),
    }
