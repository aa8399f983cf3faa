"""The teacher and student rows of a step, shared by every objective.

One step encodes each modality once; ``fuse`` then decodes several mask rows per sample
from those features: the sample's own mask (the teacher, the multi-modal prediction) and
a one-modality mask per student. The unimodal ("sep") decoder scores each available
modality alone. These helpers build the rows and the unimodal losses; the baseline,
PASSION and the balancing objectives all use them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from passion_kit.method.losses import segmentation_loss
from passion_kit.models.base import Backbone

__all__ = ["separate_outputs", "student_masks", "true_class_confidence"]


def student_masks(mask: torch.Tensor, mods: list[int], *, teacher: bool) -> torch.Tensor:
    """Fuse rows per sample: its own mask first if ``teacher``, then ``e_m`` for m in mods.

    Returns:
        (B * S, M) bool with S = len(mods) + teacher; row r belongs to sample r // S.
    """
    b, m = mask.shape
    eye = torch.eye(m, dtype=torch.bool, device=mask.device)
    rows = [mask.unsqueeze(1)] if teacher else []
    rows.append(eye[mods].unsqueeze(0).expand(b, -1, -1))
    return torch.cat(rows, 1).reshape(-1, m)


def separate_outputs(
    backbone: Backbone, feats: list[torch.Tensor], available: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unimodal ("sep") decoder losses and confidences of every available modality.

    Returns:
        ``(loss, confidence)``, each (B, M) and 0 where ``available`` is False; the loss
        carries gradient, the confidence (:func:`true_class_confidence`) does not.
    """
    b, m = available.shape
    mods = [int(i) for i in torch.nonzero(available.any(0)).flatten()]
    level_feats = [f[:, mods].flatten(0, 1) for f in feats]  # (B * |mods|, C_l, *sp)
    probs = F.softmax(backbone.separate(level_feats).float(), 1)
    losses = segmentation_loss(probs, y.repeat_interleave(len(mods), 0)).view(b, len(mods))
    loss, conf = y.new_zeros(b, m), y.new_zeros(b, m)
    loss[:, mods] = losses
    conf[:, mods] = true_class_confidence(probs, y).view(b, len(mods))
    af = available.to(y.dtype)
    return loss * af, conf * af


def true_class_confidence(probs: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
    """Class-balanced probability of the true class, one value per row.

    ``mean_{k present} mean_{v in class k} p_k(v)``. The plain voxel mean would measure
    the background alone (about 98% of a BraTS patch), so each class present in the
    sample counts equally, like a balanced accuracy.

    Args:
        probs: (R, K, *sp) probabilities; R may be B * S (row r is sample r // S).
        target_onehot: (B, K, *sp) one-hot target.

    Returns:
        (R,) detached confidences in [0, 1].
    """
    y = target_onehot.to(probs.dtype).flatten(2)
    if probs.shape[0] % y.shape[0] or probs.shape[1:] != target_onehot.shape[1:]:
        raise ValueError(
            f"probs {tuple(probs.shape)} must match target_onehot "
            f"{tuple(target_onehot.shape)}, with a multiple of its batch size"
        )
    y = y.repeat_interleave(probs.shape[0] // y.shape[0], 0)
    count = y.sum(-1)  # (R, K)
    per_class = (probs.detach().flatten(2) * y).sum(-1) / count.clamp_min(1.0)
    present = (count > 0).to(probs.dtype)
    return (per_class * present).sum(1) / present.sum(1)
