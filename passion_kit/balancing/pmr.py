"""PMR (Fan et al., CVPR 2023) as an objective over any backbone.

Prototypical Modal Rebalance. Class prototypes (mean features per class) give each
modality a non-parametric classifier, ``p_k ~ exp(-||f - mu_k||_2)``. Its confidence
ranks the modalities; the lagging (weak) modality gets a prototypical cross-entropy
(PCE) that pulls its features to their class prototypes ("speed up"), and, during the
first epochs, the dominant one gets a prototype entropy regularizer (PER) that keeps its
prototype distribution from collapsing too early ("slow down"):

``L = L_baseline + alpha sum_m b_m PCE_m - mu sum_m g_m H_m``, with
``b_m = clip(1 / rho_m - 1, 0, 1)`` (weak), ``g_m = clip(rho_m - 1, 0, 1)`` (dominant,
epochs ``< entropy_epochs`` only) and rho the relative prototype confidence.

The clipped coefficients follow the method as written up in the paper and its
re-implementation in GeWu-Lab's BalanceBenchmark (``PMR_trainer.py``); the PMR
repository's own script switches PCE fully on for the weak modality (weight alpha) and
has no entropy term.

Adaptation to 3-D segmentation with missing modalities (each a decision of this kit):

- **Unimodal features.** Voxel features of the fusion decoder run with the one-modality
  mask ``e_m`` (``FusionOut.feature``, the last decoder layer before the segmentation
  head), as the PASSION authors' PMR-style loss (``prototype_pmr_loss`` in the official
  ``criterions.py``) does. PCE's gradient reaches encoder m and the shared decoder.
- **Prototypes.** PMR averages features over a tenth of the training set each epoch with
  momentum; a 3-D volume holds thousands of voxels per class, so prototypes are computed
  per sample from that sample's own voxels (as ``prototype_pmr_loss``), without gradient
  (PMR's prototypes are constants). Classes: those present in every sample of the batch
  (the official class set of the prototype losses; background is always one).
- **Confidence, PCE and entropy** are class-balanced voxel means (each class present
  counts equally, see :func:`~passion_kit.balancing.common.true_class_confidence`);
  the official function averages over all voxels, i.e. mostly background. The log uses
  the official 0.005 clamp.
- **Ratio.** rho compares a modality with the other modalities of the same samples
  (:func:`~passion_kit.balancing.common.relative_confidence`); only samples with at
  least two modalities take part (one-modality fusions have no imbalance), and only
  their students are run.
- **Missing modalities** get no student, no PCE or entropy, and coefficient 1.
- **Several processes (DDP).** The confidence sums behind rho are summed over ranks, so
  the weights are those of the global batch, as PASSION's per-iteration preference.

Per-modality record: ``coefficient = 1 + b_m - g_m`` (1: left alone, < 1: slowed by
the entropy term, > 1: sped up by PCE), ``pce_weight`` (alpha b), ``entropy_weight``
(mu g), ``confidence``, ``ratio``, ``pce``, ``entropy`` and ``sep``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from passion_kit.balancing.common import (
    BalancingObjective,
    comparable,
)
from passion_kit.method.base import StepResult, reduce_batch
from passion_kit.method.losses import PROB_CLAMP
from passion_kit.method.students import student_masks
from passion_kit.models.base import Backbone

__all__ = ["PMRObjective", "prototype_terms", "pmr_rebalance"]


def prototype_terms(
    features: torch.Tensor, target_onehot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCE, confidence and entropy of the per-sample prototype classifier.

    Args:
        features: (R, C, *sp) voxel features; R = B * S rows, row r of sample r // S.
        target_onehot: (B, K, *sp).

    Returns:
        ``(pce, confidence, entropy)``, each (R,): class-balanced means over the voxels of
        each class present in every sample of ``-log clamp(p_y, 0.005)``, of ``p_y``
        (detached) and of ``-sum_k p_k log p_k``; zeros if no class is in every sample.
    """
    b = target_onehot.shape[0]
    if features.shape[0] % b or features.shape[2:] != target_onehot.shape[2:]:
        raise ValueError(
            f"features {tuple(features.shape)} must match target_onehot "
            f"{tuple(target_onehot.shape)} spatially, with a multiple of its batch size"
        )
    y = target_onehot.to(torch.float32).flatten(2)
    classes = (y.sum(-1) > 0).all(0)
    zero = features.new_zeros(features.shape[0], dtype=torch.float32)
    if not bool(classes.any()):
        return zero, zero, zero
    y = y[:, classes].repeat_interleave(features.shape[0] // b, 0)  # (R, K_b, V)
    f = features.float().flatten(2)  # (R, C, V)
    count = y.sum(-1)  # (R, K_b)
    with torch.no_grad():
        proto = torch.einsum("rcv,rkv->rkc", f, y) / count.unsqueeze(-1)
    # Euclidean distance; the clamp keeps sqrt's gradient finite at a prototype.
    sq = [(f - proto[:, k, :, None]).pow(2).sum(1) for k in range(y.shape[1])]
    dist = torch.stack(sq, dim=1).clamp_min(1e-12).sqrt()  # (R, K_b, V)
    log_p = F.log_softmax(-dist, dim=1)
    p = log_p.exp()
    p_true = (p * y).sum(1)  # (R, V); 0 on voxels of classes outside K_b (excluded below)

    def class_mean(x: torch.Tensor) -> torch.Tensor:
        return ((x.unsqueeze(1) * y).sum(-1) / count).mean(1)

    pce = class_mean(-torch.log(p_true.clamp(PROB_CLAMP, 1.0)))
    entropy = class_mean(-(p * log_p).sum(1))
    return pce, class_mean(p_true).detach(), entropy


def pmr_rebalance(ratio: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PMR's per-modality coefficients from the relative confidence rho.

    Args:
        ratio: (M,) rho (> 1: dominant).
        valid: (M,) bool, False where rho is undefined (both coefficients 0).

    Returns:
        ``(stimulate, suppress)``, each (M,) in [0, 1]: ``clip(1 / rho - 1, 0, 1)`` for the
        PCE of a weak modality and ``clip(rho - 1, 0, 1)`` for the entropy of a dominant one.
    """
    v = valid.to(ratio.dtype)
    stimulate = (1 / ratio.clamp_min(1e-12) - 1).clamp(0, 1) * v
    suppress = (ratio - 1).clamp(0, 1) * v
    return stimulate, suppress


def _per_modality(values: torch.Tensor, mods: list[int], compared: torch.Tensor) -> torch.Tensor:
    """(B * S,) values of the students ``mods`` -> (B, M), 0 where not compared."""
    b, m = compared.shape
    out = values.new_zeros(b, m)
    out[:, mods] = values.view(b, len(mods))
    return out * compared


class PMRObjective(BalancingObjective):
    """Baseline loss plus PMR's prototype cross-entropy and entropy terms.

    Args:
        num_modalities, num_classes, weight_sep, students, reduction: as the baseline
            (:class:`~passion_kit.balancing.common.BalancingObjective`).
        alpha: PCE weight (1.0, the PMR script's default).
        mu: entropy (PER) weight (0.1; the kit's choice, not a published value).
        entropy_epochs: the "early training stage" with the entropy term (10; the kit's
            choice, not a published value).
        modulation_start, modulation_end: epochs (inclusive) with PCE and entropy;
            ``modulation_end=None`` until the end. Outside, the objective is the baseline.
    """

    name = "pmr"
    record_keys = ("coefficient", "confidence", "ratio", "pce_weight", "entropy_weight")

    def __init__(
        self,
        *,
        num_modalities: int,
        num_classes: int,
        alpha: float = 1.0,
        mu: float = 0.1,
        entropy_epochs: int = 10,
        modulation_start: int = 0,
        modulation_end: int | None = None,
        weight_sep: float = 1.0,
        students: Literal["available", "all"] = "available",
        reduction: Literal["mean", "sum"] = "mean",
    ) -> None:
        super().__init__(
            num_modalities=num_modalities,
            num_classes=num_classes,
            weight_sep=weight_sep,
            students=students,
            reduction=reduction,
            modulation_start=modulation_start,
            modulation_end=modulation_end,
        )
        for arg, value in (("alpha", alpha), ("mu", mu), ("entropy_epochs", entropy_epochs)):
            if value < 0:
                raise ValueError(f"{arg} must be >= 0, got {value}")
        self.alpha = alpha
        self.mu = mu
        self.entropy_epochs = entropy_epochs

    def __call__(self, batch: dict, backbone: Backbone) -> StepResult:
        step = self._begin(batch, backbone)
        b, m = step.mask.shape
        compared = comparable(step.available)
        # Students only for modalities that can be compared, and only inside the window.
        balances = self._balances(compared)
        mods = [int(i) for i in torch.nonzero(compared.any(0)).flatten()] if balances else []
        rows = 1 + len(mods)
        out = backbone.fuse(step.feats, student_masks(step.mask, mods, teacher=True))
        loss, terms, sep = self._baseline_loss(out.rows(slice(0, None, rows)), step)
        per_mod = {"sep": sep}
        coefficient = torch.ones(m)

        if balances:
            if mods:
                feature = out.feature.reshape(b, rows, *out.feature.shape[1:])[:, 1:]
                pce, conf, ent = (
                    _per_modality(t, mods, compared)
                    for t in prototype_terms(feature.flatten(0, 1), step.y)
                )
            else:
                pce = conf = ent = step.y.new_zeros(b, m)
            ratio, valid, mean_conf = self._ratio(conf, compared)
            stimulate, suppress = pmr_rebalance(ratio, valid)
            if self.state.epoch >= self.entropy_epochs:
                suppress = torch.zeros_like(suppress)
            pce_w, ent_w = self.alpha * stimulate, self.mu * suppress
            # Weighted contributions: L = fuse + deep + weight_sep sep + pce - entropy;
            # the minus makes PER *maximise* the dominant modality's prototype entropy.
            terms["pce"] = (pce_w * reduce_batch(pce, self.reduction)).sum()
            terms["entropy"] = (ent_w * reduce_batch(ent, self.reduction)).sum()
            loss = loss + terms["pce"] - terms["entropy"]
            coefficient = (1 + stimulate - suppress).cpu()
            self.state.add("pce_weight", pce_w, valid.float())
            self.state.add("entropy_weight", ent_w, valid.float())
            per_mod.update(
                pce=reduce_batch(pce, self.reduction),
                entropy=reduce_batch(ent, self.reduction),
                confidence=mean_conf,
                ratio=ratio,
                pce_weight=pce_w,
                entropy_weight=ent_w,
            )
        self.state.add("coefficient", coefficient, step.available.any(0).float())
        per_mod["coefficient"] = coefficient
        return self._result(loss, terms, per_mod)
