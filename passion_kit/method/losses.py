"""PASSION's losses (docs/method.md C), each returning one value per sample, shape (B,).

Conventions shared by all functions:

- ``probs`` are probabilities (softmax already applied), ``*_logits`` are logits.
- ``target_onehot`` is a float or bool one-hot tensor (B, K, *spatial).
- Reductions over the batch are left to the caller (PASSION averages by default;
  the official code sums, docs/method.md G.6).
- ``size`` upsamples predictions to the target grid first with ``up`` (``Up``: trilinear,
  ``align_corners=True``), as the official deep supervision does with its probabilities.

The clamps (0.005 for the log), epsilons (1e-7 Dice, 1e-5 prototypes) and the
"mean over classes and voxels" of the KL are the official code's (docs/method.md C.1-C.5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "weighted_cross_entropy",
    "soft_dice_loss",
    "segmentation_loss",
    "deep_supervision_loss",
    "deep_supervision_weights",
    "soft_probabilities",
    "kl_map",
    "temperature_kl",
    "pixel_distillation",
    "class_prototypes",
    "similarity_maps",
    "prototype_distillation",
]

PROB_CLAMP = 0.005


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``Up``: trilinear interpolation to ``size`` with ``align_corners=True``.

    The default ``up`` of the functions below; the objectives pass their own
    :class:`~passion_kit.models.blocks.Upsample` module, which
    :func:`passion_kit.fast.speed_up` can swap for a faster kernel.
    """
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)


Up = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def weighted_cross_entropy(probs: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy on probabilities (docs/method.md C.1).

    ``w_c = 1 - |{v: y_c(v) = 1}| / |V|`` per sample, and
    ``L = mean_v sum_c -w_c y_c(v) log(clamp(p_c(v), 0.005, 1))``.

    Returns:
        (B,) loss per sample.
    """
    _check_pair(probs, target_onehot, ("probs", "target_onehot"))
    y = target_onehot.to(probs.dtype)
    dims = _spatial_dims(y)
    nvox = y[0, 0].numel()
    weight = 1.0 - y.sum(dims) / nvox  # (B, K)
    logp = torch.log(probs.clamp(PROB_CLAMP, 1.0))
    per_class = -(y * logp).sum(dims) / nvox  # (B, K): mean over voxels of -y_c log p_c
    return (weight * per_class).sum(1)


def soft_dice_loss(probs: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
    """Soft Dice over all K classes, background included (docs/method.md C.2).

    ``L = 1 - (1/K) sum_c 2 sum_v p_c y_c / (sum_v p_c + sum_v y_c + 1e-7)``.

    Returns:
        (B,) loss per sample.
    """
    _check_pair(probs, target_onehot, ("probs", "target_onehot"))
    y = target_onehot.to(probs.dtype)
    dims = _spatial_dims(y)
    inter = (probs * y).sum(dims)
    denom = probs.sum(dims) + y.sum(dims) + 1e-7
    return 1.0 - (2.0 * inter / denom).mean(1)


def segmentation_loss(probs: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
    """``weighted_cross_entropy + soft_dice_loss``: the fused and unimodal terms
    (docs/method.md C.3)."""
    return weighted_cross_entropy(probs, target_onehot) + soft_dice_loss(probs, target_onehot)


def deep_supervision_weights(levels: int) -> list[float]:
    """Weights 2^-l for levels l = 1..L (finest first): 0.5, 0.25, ..."""
    return [2.0 ** -(level + 1) for level in range(levels)]


def deep_supervision_loss(
    deep_logits: Sequence[torch.Tensor], target_onehot: torch.Tensor, *, up: Up = upsample
) -> torch.Tensor:
    """``sum_l 2^-l [wCE + Dice](Up(softmax(Q_l)))`` over the backbone's levels
    (docs/method.md C.3).

    Args:
        deep_logits: logits per level, finest first, at their native resolution.
        target_onehot: (B, K, *spatial) at full resolution.

    Returns:
        (B,) loss per sample.
    """
    size = target_onehot.shape[2:]
    total = target_onehot.new_zeros(target_onehot.shape[0], dtype=deep_logits[0].dtype)
    for w, logits in zip(deep_supervision_weights(len(deep_logits)), deep_logits, strict=True):
        total = total + w * segmentation_loss(up(F.softmax(logits, 1), size), target_onehot)
    return total


def soft_probabilities(
    logits: torch.Tensor, temperature: float, size=None, *, up: Up = upsample
) -> torch.Tensor:
    """``clamp(Up(softmax(z / T)), 0.005, 1)``: clamped after upsampling, not renormalised."""
    p = F.softmax(logits / temperature, dim=1)
    if size is not None:
        p = up(p, size)
    return p.clamp(PROB_CLAMP, 1.0)


def _students_per_teacher(student: torch.Tensor, teacher: torch.Tensor, names) -> int:
    """S when the teacher has one row per sample and the student S rows per sample."""
    if student.shape[1:] != teacher.shape[1:] or student.shape[0] % teacher.shape[0]:
        raise ValueError(
            f"{names[0]} {tuple(student.shape)} must have the shape of {names[1]} "
            f"{tuple(teacher.shape)}, with a batch size that is a multiple of it"
        )
    return student.shape[0] // teacher.shape[0]


def kl_map(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    size: Sequence[int] | None = None,
    up: Up = upsample,
) -> torch.Tensor:
    """Per-voxel pixel-wise distillation ``T^2 mean_c p_t (log p_t - log p_s)``
    (docs/method.md C.4).

    ``p = soft_probabilities(z, T, size)``; the mean runs over the K classes, as the
    official code's. The teacher is detached: its output is held constant, and the
    gradient reaches the network through the student only.

    Args:
        student_logits: (B * S, K, *sp) student logits.
        teacher_logits: (B, K, *sp) teacher logits (row r of the student uses row r // S).
        temperature: T.
        size: upsample both to this size first with ``up`` (the deep levels).

    Returns:
        (B * S, *sp) the map of each student.
    """
    rows = _students_per_teacher(
        student_logits, teacher_logits, ("student_logits", "teacher_logits")
    )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p_s = soft_probabilities(student_logits, temperature, size, up=up)
    p_t = soft_probabilities(teacher_logits.detach(), temperature, size, up=up)
    b, k, sp = p_t.shape[0], p_t.shape[1], p_t.shape[2:]
    p_s = p_s.view(b, rows, k, *sp)
    p_t = p_t.view(b, 1, k, *sp)
    kl = (p_t * (torch.log(p_t) - torch.log(p_s))).mean(2)  # (B, S, *sp)
    return temperature**2 * kl.reshape(b * rows, *sp)


def temperature_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    size: Sequence[int] | None = None,
    up: Up = upsample,
) -> torch.Tensor:
    """Temperature-scaled KL(teacher || student), the mean of :func:`kl_map` over the voxels
    (docs/method.md C.4): ``T^2 mean_{c,v} p_t (log p_t - log p_s)``, 1/K of the usual
    per-voxel KL, exactly as the official code.

    Returns:
        (B * S,) loss per student row.
    """
    kl = kl_map(student_logits, teacher_logits, temperature, size=size, up=up)
    return kl.flatten(1).mean(1)


def pixel_distillation(
    student_logits: torch.Tensor,
    student_deep: Sequence[torch.Tensor],
    teacher_logits: torch.Tensor,
    teacher_deep: Sequence[torch.Tensor],
    temperature: float,
    *,
    up: Up = upsample,
) -> torch.Tensor:
    """``L_pix = KL_T(P^m <- P) + sum_l 2^-l KL_T(Up(Q_l^m) <- Up(Q_l))`` (docs/method.md C.4).

    ``P`` and ``Q_l`` are the teacher's final and deep-level logits, ``P^m`` and ``Q_l^m``
    the student's; the teacher may have one row per sample for S student rows.

    Returns:
        (B * S,) loss per student row.
    """
    size = student_logits.shape[2:]
    total = temperature_kl(student_logits, teacher_logits, temperature)
    weights = deep_supervision_weights(len(student_deep))
    for w, s, t in zip(weights, student_deep, teacher_deep, strict=True):
        total = total + w * temperature_kl(s, t, temperature, size=size, up=up)
    return total


PROTO_EPS = 1e-5


def class_prototypes(feature: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
    """``mu_k = sum_v f(v) y_k(v) / (sum_v y_k(v) + 1e-5)``: the mean feature of class k
    (docs/method.md C.5).

    Args:
        feature: (R, C, *sp) features; R = B, or B * S student rows (row r is sample r // S).
        target_onehot: (B, K, *sp) one-hot labels.

    Returns:
        (R, K, C) prototypes; a class without voxels gets the zero vector.
    """
    b, k = target_onehot.shape[:2]
    if feature.shape[0] % b or feature.shape[2:] != target_onehot.shape[2:]:
        raise ValueError(
            f"feature {tuple(feature.shape)} does not match target_onehot "
            f"{tuple(target_onehot.shape)} in batch size (a multiple of it) and spatial shape"
        )
    rows, c = feature.shape[0] // b, feature.shape[1]
    y = target_onehot.to(feature.dtype).flatten(2)  # (B, K, V)
    f = feature.reshape(b, rows, c, -1)  # (B, S, C, V)
    proto = torch.einsum("bscv,bkv->bskc", f, y) / (y.sum(-1)[:, None, :, None] + PROTO_EPS)
    return proto.reshape(b * rows, k, c)


def similarity_maps(feature: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``S_k(v) = cos(f(v), mu_k)``, each norm clamped at 1e-5 (docs/method.md C.5).

    Args:
        feature: (R, C, *sp) features.
        prototypes: (R, K, C) prototypes.

    Returns:
        (R, K, *sp) similarity maps in [-1, 1].
    """
    f = feature.flatten(2)  # (R, C, V)
    # ||f|| clamped at eps, as sqrt(max(sum f^2, eps^2)): the same value and gradient, and on
    # CPU several times faster than norm's reduction over the channel axis (tested equal).
    f_unit = f / (f * f).sum(1, keepdim=True).clamp_min(PROTO_EPS**2).sqrt()
    p_unit = prototypes / prototypes.norm(dim=-1, keepdim=True).clamp_min(PROTO_EPS)
    maps = torch.einsum("rcv,rkc->rkv", f_unit, p_unit)
    return maps.view(*maps.shape[:2], *feature.shape[2:])


def prototype_distillation(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    target_onehot: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic-wise self-distillation with class prototypes (docs/method.md C.5).

    For each class k present in *every* sample of the batch (the official class set),
    :func:`class_prototypes` and :func:`similarity_maps` of the student's features and of
    the teacher's (detached) features, each with its own prototypes.

    ``teacher_features`` and ``target_onehot`` may have B rows for the student's B * S
    (S students per sample, row r against sample r // S); the teacher's maps are then
    computed once per sample.

    Returns:
        ``(loss, distance)``, each (B * S,): ``mean_{k,v} (S_k^s - S_k^t)^2`` with gradient to
        the student only, and the detached ``mean_{k,v} |S_k^s - S_k^t|`` (the distance D
        that drives the relative preference). Both are 0 when no class is present in
        every sample (impossible when background is present).
    """
    rows = _students_per_teacher(
        student_features, teacher_features, ("student_features", "teacher_features")
    )
    b = teacher_features.shape[0]
    if target_onehot.shape[0] != b or target_onehot.shape[2:] != student_features.shape[2:]:
        raise ValueError(
            f"target_onehot {tuple(target_onehot.shape)} does not match the teacher features "
            f"{tuple(teacher_features.shape)} in batch size and spatial shape"
        )
    present = (target_onehot.flatten(2).sum(-1) > 0).all(0)  # in every sample of the batch
    if not bool(present.any()):
        zero = student_features.new_zeros(b * rows)
        return zero, zero
    y = target_onehot[:, present]
    teacher = teacher_features.detach()
    s = similarity_maps(student_features, class_prototypes(student_features, y)).flatten(2)
    t = similarity_maps(teacher, class_prototypes(teacher, y)).flatten(2)
    diff = s.view(b, rows, *s.shape[1:]) - t.view(b, 1, *t.shape[1:])  # (B, S, K_b, V)
    loss = diff.pow(2).flatten(2).mean(-1).reshape(-1)
    distance = diff.detach().abs().flatten(2).mean(-1).reshape(-1)
    return loss, distance
