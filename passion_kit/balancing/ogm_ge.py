"""OGM-GE (Peng et al., CVPR 2022) as an objective over any backbone.

On-the-fly Gradient Modulation with Generalization Enhancement. After each backward pass,
the gradient of the *dominant* modality's encoder is scaled down by the ratio of
unimodal confidences, then Gaussian noise with the gradient's own standard deviation is
added to every modality's encoder gradient (official code, ``main.py``):

``k_m = 1 - tanh(alpha * rho_m)`` if ``rho_m > 1`` else 1, and
``g <- k_m g + N(0, std(g) + 1e-8)`` for each weight tensor of encoder m.

The loss itself is the baseline's (docs/method.md D.4); OGM-GE only acts on gradients, so the
trainer must call :meth:`OGMGEObjective.after_backward` between ``loss.backward()`` and
``optimizer.step()`` (and before any gradient clipping)::

    result = objective(batch, net)
    result.loss.backward()
    objective.after_backward(net)
    optimizer.step()

Adaptation to 3-D segmentation with missing modalities (each a decision of this kit):

- **Unimodal prediction.** OGM-GE reads each modality's logits off the fused classifier
  (its weights applied to that modality's features alone). The analogue here is the
  fusion decoder run with the one-modality mask ``e_m`` on the shared encoder features
  (``confidence="fused"``, the default; computed without gradient, one extra ``fuse``
  call). ``confidence="separate"`` uses the shared unimodal decoder instead (free: it
  already runs for the sep loss).
- **Confidence.** The official score is the softmax probability of the label summed
  over the batch. Per sample it becomes the class-balanced mean probability of the true
  class over the voxels (:func:`~passion_kit.balancing.common.true_class_confidence`):
  background would otherwise decide it alone.
- **Ratio.** With M modalities, ``rho_m`` compares modality m with the mean of the
  *other modalities of the same samples*
  (:func:`~passion_kit.balancing.common.relative_confidence`); for two always-present
  modalities it is the official ``score_v / score_a``. Only samples with at least two
  available modalities are compared: a single-modality fusion has no imbalance.
- **Which parameters.** Every weight tensor (``dim >= 2``) of the modality's own
  parameters (:func:`~passion_kit.balancing.common.modality_parameters`: its encoder);
  biases are left alone, as the official code modulates conv weights only. Shared parts
  (fusion and unimodal decoders) are never modulated.
- **Missing modalities.** A modality absent from every sample of the batch has no loss
  and hence no gradient: it gets ``k = 1`` and no noise (noise would be the only update
  its encoder receives). A modality present but never compared (only in single-modality
  samples) gets ``k = 1`` and, as in the official code, the noise.
- **Several processes (DDP).** The gradients are modulated after DDP has averaged
  them, so every rank must scale them alike: the confidence sums behind rho and the set of
  present modalities are summed over ranks (the global batch), and the noise of step s
  comes from a generator seeded with (``seed``, s).
- **Schedule.** Modulation runs for epochs ``modulation_start <= e <= modulation_end``
  (official default 0..50 of 100 epochs; here until the end unless set).

Per-modality record: ``coefficient`` (k), ``confidence``, ``ratio`` (rho) and ``sep``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from passion_kit.balancing.common import (
    BalancingObjective,
    StepInputs,
    comparable,
    modality_parameters,
)
from passion_kit.method.base import StepResult
from passion_kit.method.students import student_masks, true_class_confidence
from passion_kit.models.base import Backbone

__all__ = ["OGMGEObjective", "ogm_coefficients", "modulate_gradients"]


def ogm_coefficients(ratio: torch.Tensor, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM's gradient scale per modality (CVPR 2022, Eq. 10).

    Args:
        ratio: (M,) relative confidence rho (> 1: dominant).
        valid: (M,) bool, False where rho is undefined (then k = 1).
        alpha: modulation strength (> 0).

    Returns:
        (M,) ``k = 1 - tanh(alpha * rho)`` where rho > 1, else 1. As in the official code
        the argument is rho, not rho - 1, so k drops to ``1 - tanh(alpha)`` just above 1.
    """
    dominant = valid & (ratio > 1)
    return torch.where(dominant, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))


def modulate_gradients(
    backbone: Backbone,
    coefficient: torch.Tensor,
    present: torch.Tensor,
    *,
    noise: bool,
    seed: int | None = None,
) -> None:
    """Scale each present modality's weight gradients by its coefficient, then add noise.

    Args:
        backbone: after ``backward()``.
        coefficient: (M,) gradient scales k.
        present: (M,) bool, modalities with a loss in the batch; the others are untouched.
        noise: add ``N(0, std(g) + 1e-8)`` to each scaled gradient (GE; the std is the
            unscaled gradient's, as the official code).
        seed: draw the noise from a generator seeded with it (the same on every DDP
            rank, so replicas stay equal); None: the global torch generator.
    """
    generators: dict[torch.device, torch.Generator] = {}

    def generator(device: torch.device) -> torch.Generator | None:
        if seed is None:
            return None
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed)
        return generators[device]

    for m in torch.nonzero(present).flatten().tolist():
        k = float(coefficient[m])
        for p in modality_parameters(backbone, m):
            if p.grad is None or p.dim() < 2:
                continue
            # In place, so gradients that are views (e.g. DDP buckets) stay attached.
            g = p.grad
            extra = None
            if noise:
                std = g.std() if g.numel() > 1 else g.new_zeros(())
                draw = torch.randn(g.shape, generator=generator(g.device), device=g.device)
                extra = draw.to(g.dtype) * (std + 1e-8)
            g.mul_(k)
            if extra is not None:
                g.add_(extra)


class OGMGEObjective(BalancingObjective):
    """Baseline loss plus OGM-GE gradient modulation in :meth:`after_backward`.

    Args:
        num_modalities, num_classes, weight_sep, students, reduction: as the baseline
            (:class:`~passion_kit.balancing.common.BalancingObjective`).
        alpha: modulation strength (the official README: 0.1 for VGGSound, 0.8 for CREMA-D;
            default 0.1, its "default modulation setting").
        noise: add the Gaussian noise (OGM-GE, default) or not (plain OGM).
        confidence: ``"fused"`` (one-modality fusion pass) or ``"separate"`` (unimodal
            decoder), see the module docstring.
        modulation_start, modulation_end: epochs (inclusive) with modulation;
            ``modulation_end=None`` modulates until the end.
        seed: the noise of step s is drawn from a generator seeded with (seed, s): the
            same on every DDP rank and after a resume.
    """

    name = "ogm_ge"
    record_keys = ("coefficient", "confidence", "ratio")

    def __init__(
        self,
        *,
        num_modalities: int,
        num_classes: int,
        alpha: float = 0.1,
        noise: bool = True,
        confidence: Literal["fused", "separate"] = "fused",
        modulation_start: int = 0,
        modulation_end: int | None = None,
        seed: int = 0,
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
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if confidence not in ("fused", "separate"):
            raise ValueError(f"confidence must be 'fused' or 'separate', got {confidence!r}")
        self.alpha = alpha
        self.noise = noise
        self.confidence = confidence
        self.seed = int(seed)
        # (coefficient, present, modulating) of the last step, consumed by after_backward.
        self._pending: tuple[torch.Tensor, torch.Tensor, bool, int] | None = None

    def __call__(self, batch: dict, backbone: Backbone) -> StepResult:
        step = self._begin(batch, backbone)
        loss, terms, sep = self._baseline_loss(backbone.fuse(step.feats, step.mask), step)

        present = step.available.any(0)
        if self.batch_reducer is not None:  # DDP: the modulated gradients are global
            present = self.batch_reducer(present.float()) > 0
        present = present.cpu()
        compared = comparable(step.available)
        coefficient = torch.ones(self.num_modalities)
        per_mod = {"sep": sep}
        if self._balances(compared):
            conf = self._confidence(backbone, step, compared)
            ratio, valid, mean_conf = self._ratio(conf, compared)
            coefficient = ogm_coefficients(ratio.cpu(), valid.cpu(), self.alpha)
            per_mod.update(confidence=mean_conf, ratio=ratio)
        self.state.add("coefficient", coefficient, present.float())
        per_mod["coefficient"] = coefficient
        self._pending = (coefficient, present, self.modulating, self.state.steps)
        return self._result(loss, terms, per_mod)

    def _confidence(
        self, backbone: Backbone, step: StepInputs, compared: torch.Tensor
    ) -> torch.Tensor:
        """(B, M) per-sample unimodal confidences, 0 where not compared."""
        if self.confidence == "separate":
            return step.sep_confidence * compared
        b, m = compared.shape
        mods = [int(i) for i in torch.nonzero(compared.any(0)).flatten()]
        if not mods:
            return step.y.new_zeros(b, m)
        with torch.no_grad():
            out = backbone.fuse(step.feats, student_masks(step.mask, mods, teacher=False))
            probs = F.softmax(out.logits.float(), 1)
        conf = step.y.new_zeros(b, m)
        conf[:, mods] = true_class_confidence(probs, step.y).view(b, len(mods))
        return conf * compared

    def after_backward(self, backbone: Backbone) -> None:
        """Modulate the encoder gradients of the last step; nothing outside the window.

        Raises:
            RuntimeError: when not preceded by a step (e.g. called twice for one step).
        """
        if self._pending is None:
            raise RuntimeError(
                "after_backward() needs a step first: objective(batch, backbone), "
                "loss.backward(), then after_backward(backbone), once per step"
            )
        coefficient, present, active, steps = self._pending
        self._pending = None
        if active:
            seed = (self.seed * 1_000_003 + steps) % 2**63
            modulate_gradients(backbone, coefficient, present, noise=self.noise, seed=seed)
