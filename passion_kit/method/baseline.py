"""The baseline objective that PASSION plugs into (docs/method.md D.4).

One step of the baseline:

1. ``encode`` every modality once; the unimodal ("sep") decoder scores each available
   modality alone (``L_sep^m``).
2. ``fuse`` the sample's own mask: the multi-modal prediction, with its fused loss
   ``L_fuse`` (weighted CE + Dice) and deep supervision ``L_ds``.
3. ``L = L_fuse + L_ds + w_sep sum_m L_sep^m``, each term reduced over the batch.

During warm-up (``warmup_epochs``) only the unimodal decoders train. The baseline can also
*measure* each student's distance D to the multi-modal prediction without training on it
(``track_distance``), so that its preference dynamics can be set beside PASSION's.

:class:`Deviations` groups the switches that reproduce the official code where the kit
departs from it (docs/deviations.md); ``Deviations.official()`` is the official set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from passion_kit.method.base import StepResult, check_batch, one_hot, reduce_batch, teacher_terms
from passion_kit.method.losses import prototype_distillation
from passion_kit.method.preference import PreferenceState
from passion_kit.method.students import separate_outputs, student_masks
from passion_kit.models.base import Backbone
from passion_kit.models.blocks import Upsample

__all__ = ["BaselineObjective", "Deviations", "Step"]


@dataclass(frozen=True)
class Deviations:
    """Where the kit's objective departs from the official code, one switch each.

    Attributes:
        students: ``"available"``: students (and unimodal losses) only for the modalities
            in the sample's mask, as the paper-time code; ``"all"``: all M, as the official
            HEAD does in PDT.
        reduction: ``"mean"`` over the batch; the official ``"sum"`` makes the effective
            learning rate grow with the batch size (docs/method.md G.6).
        skip_degenerate: leave samples with a single student (D = 0 by construction) out of
            the per-iteration preference; the official code turns it into NaN (G.2).
        exclude_single_modality: leave single-modality samples out of the epoch distance;
            the official code counts them with D = 0 (G.3).
        keep_self_students: also train a single-modality sample's student, whose mask is
            the teacher's (the official code does): its KL and D are 0 here, but the KL's
            gradient is not where the clamp at 0.005 cuts a teacher probability.
        epoch_distance: how the epoch's D is averaged, ``"modality"`` or ``"iteration"``
            (:class:`~passion_kit.method.preference.PreferenceState` ``distance_mean``).
        warmup_decay: during warm-up, give every parameter the loss does not reach a zero
            gradient, so the optimizer still updates it (weight decay, and with Adam a
            moment-driven step), as the official code's "fusion terms times 0" does.
    """

    students: Literal["available", "all"] = "available"
    reduction: Literal["mean", "sum"] = "mean"
    skip_degenerate: bool = True
    exclude_single_modality: bool = False
    keep_self_students: bool = False
    epoch_distance: Literal["modality", "iteration"] = "modality"
    warmup_decay: bool = False

    def __post_init__(self) -> None:
        choices = {
            "students": ("available", "all"),
            "reduction": ("mean", "sum"),
            "epoch_distance": ("modality", "iteration"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")

    @classmethod
    def official(cls, setting: str = "idt") -> Deviations:
        """The official code's behaviour in ``setting`` (idt | pdt | idt_drop)."""
        return cls(
            students="all" if setting == "pdt" else "available",
            reduction="sum",
            skip_degenerate=False,
            keep_self_students=True,
            epoch_distance="modality" if setting == "idt" else "iteration",
            warmup_decay=True,
        )


@dataclass
class Step:
    """What every step computes first (see :meth:`BaselineObjective._begin`)."""

    feats: list[torch.Tensor]  # per level (B, M, C_l, *sp)
    y: torch.Tensor  # (B, K, *sp) one-hot
    mask: torch.Tensor  # (B, M) the sample's own mask (the teacher's)
    students: torch.Tensor  # (B, M) a[n, m]: m is a student / has a unimodal loss for n
    sep: torch.Tensor  # (B, M) unimodal losses L_sep, with gradient


class BaselineObjective:
    """``L = L_fuse + L_ds + w_sep sum_m L_sep^m`` over any backbone (docs/method.md D.4).

    Args:
        num_modalities: M.
        num_classes: K.
        weight_sep: weight of the unimodal losses (1).
        deviations: the official-code switches (:class:`Deviations`).
        track_distance: also measure each student's distance D (no gradient, no random
            number: training is unchanged), for the preference plots.
        track_every: measure on every k-th step only (the first, the (k+1)-th, ...).
        eta, eta_factor, eta_every, beta_range, warmup_epochs, eta_scale: the beta
            schedule (docs/method.md E; :class:`~passion_kit.method.preference.PreferenceState`).
            The baseline's beta stays 1; the schedule sets the warm-up and the records.
        omega: (M,) inverse-availability weights (IDT); ones if None.

    Example::

        objective = BaselineObjective(num_modalities=4, num_classes=4)
        result = objective(batch, backbone)  # batch: image (B, M, *sp), label, mask (B, M)
        result.loss.backward()
    """

    name = "baseline"

    def __init__(
        self,
        *,
        num_modalities: int,
        num_classes: int,
        weight_sep: float = 1.0,
        deviations: Deviations | None = None,
        track_distance: bool = False,
        track_every: int = 1,
        eta: float = 0.01,
        eta_factor: float = 1.5,
        eta_every: int = 100,
        beta_range: tuple[float, float] = (0.1, 4.0),
        warmup_epochs: int = 0,
        eta_scale: float = 1.0,
        omega: torch.Tensor | None = None,
    ) -> None:
        if track_every < 1:
            raise ValueError(f"track_every must be >= 1, got {track_every}")
        if not eta_scale > 0:
            raise ValueError(f"eta_scale must be > 0, got {eta_scale}")
        self.num_modalities = num_modalities
        self.num_classes = num_classes
        self.weight_sep = weight_sep
        self.deviations = deviations if deviations is not None else Deviations()
        self.track_distance = track_distance
        self.track_every = track_every
        self._calls = 0  # fusion steps so far (after warm-up), for track_every
        # Up of the deep-level losses: a module, so that fast.speed_up can swap its kernel
        self.upsample = Upsample()
        # Set by the trainer under DDP: sums a (M,) tensor over ranks, so the per-iteration
        # preference and gate are those of the global batch.
        self.batch_reducer = None
        self.state = PreferenceState(
            num_modalities,
            eta=eta,
            eta_factor=eta_factor,
            eta_every=eta_every,
            beta_low=beta_range[0],
            beta_high=beta_range[1],
            warmup_epochs=warmup_epochs,
            eta_scale=eta_scale,
            distance_mean=self.deviations.epoch_distance,
        )
        if omega is not None:
            self.set_omega(omega)

    def set_omega(self, omega: torch.Tensor) -> None:
        omega = torch.as_tensor(omega, dtype=torch.float32)
        if omega.shape != (self.num_modalities,):
            raise ValueError(f"omega must be ({self.num_modalities},), got {tuple(omega.shape)}")
        self.state.omega = omega.clone()

    def after_backward(self, backbone: Backbone) -> None:
        """With ``warmup_decay``, during warm-up: zero gradients where the loss has none."""
        if self.deviations.warmup_decay and self.state.in_warmup:
            for p in backbone.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)

    def end_epoch(self) -> dict[str, list[float]]:
        """Close the epoch (PASSION also updates beta here); returns the per-modality record."""
        return self.state.end_epoch(update_beta=False)

    def __call__(self, batch: dict, backbone: Backbone) -> StepResult:
        step = self._begin(batch, backbone)
        if self.state.in_warmup:
            return self._warmup_step(step)
        return self._fusion_step(step, backbone)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return reduce_batch(x, self.deviations.reduction)

    def _begin(self, batch: dict, backbone: Backbone) -> Step:
        """Check the batch, encode every modality once, run the unimodal decoder."""
        image, label, mask = check_batch(batch, self.num_modalities)
        device = image.device
        y = one_hot(label.to(device), self.num_classes, torch.float32)
        mask = mask.to(device)
        feats = backbone.encode(image)
        a = mask if self.deviations.students == "available" else torch.ones_like(mask)
        sep = separate_outputs(backbone, feats, a, y)[0]
        return Step(feats, y, mask, a, sep)

    def _warmup_weights(self) -> torch.Tensor:
        """(M,) weights of the unimodal losses during warm-up: ones for the baseline."""
        return torch.ones(self.num_modalities)

    def _warmup_step(self, step: Step) -> StepResult:
        """Warm-up (docs/method.md D.3): only the unimodal decoders train."""
        sep = self._reduce(step.sep)
        loss = self.weight_sep * (self._warmup_weights().to(sep.device) * sep).sum()
        return StepResult(
            loss=loss,
            terms={"sep": float(sep.detach().sum())},
            per_modality={"sep": sep.detach().cpu()},
        )

    def _fusion_step(self, step: Step, backbone: Backbone) -> StepResult:
        """``L_fuse + L_ds + w_sep sum_m L_sep^m``, and D measured if asked."""
        measure = self.track_distance and self._calls % self.track_every == 0
        self._calls += 1
        out = backbone.fuse(step.feats, student_masks(step.mask, [], teacher=True))
        terms = teacher_terms(out, step.y, self.deviations.reduction, self.upsample)
        sep = self._reduce(step.sep)
        loss = terms["fuse"] + terms["deep"] + self.weight_sep * sep.sum()
        per_mod = {"sep": sep.detach()}
        if measure:
            with torch.no_grad():
                distance = self._measure_distance(backbone, step, out.feature.detach())
            gate = torch.zeros(self.num_modalities, device=step.y.device)
            per_mod["distance"] = self._record_distance(step, distance, gate)
        terms["sep"] = per_mod["sep"].sum()
        return self._result(loss, terms, per_mod)

    def _real_students(self, step: Step) -> torch.Tensor:
        """(B, M): modality m is a student of sample n whose terms count.

        A single-modality sample's student has the teacher's mask: it is the teacher, and
        it is left out unless ``keep_self_students``.
        """
        if self.deviations.keep_self_students:
            return step.students
        mask = step.mask
        return step.students & ~((mask.sum(1, keepdim=True) == 1) & mask)

    def _student_modalities(self, step: Step) -> list[int]:
        """Modalities that are a counted student for some sample."""
        return [int(i) for i in torch.nonzero(self._real_students(step).any(0)).flatten()]

    def _measure_distance(
        self, backbone: Backbone, step: Step, teacher_feature: torch.Tensor
    ) -> torch.Tensor:
        """(B, M) distance D of every student, measured without gradient.

        Only the students are fused (the teacher's feature is the one the loss used), and
        a batch without a real student costs nothing.
        """
        b, m = step.mask.shape
        distance = step.y.new_zeros(b, m)
        mods = self._student_modalities(step)
        if not mods:
            return distance
        out = backbone.fuse(step.feats, student_masks(step.mask, mods, teacher=False))
        dist = prototype_distillation(out.feature.float(), teacher_feature.float(), step.y)[1]
        distance[:, mods] = dist.view(b, len(mods)).float()
        return distance * self._real_students(step).float()

    def _record_distance(self, step: Step, distance: torch.Tensor, gate: torch.Tensor):
        """Add the step's D to the epoch's; returns its (M,) mean over the counted samples.

        Every sample where m is a student counts, a single-modality one too (with D = 0, as
        the official code), unless ``exclude_single_modality``.
        """
        counted = step.students.float()
        if self.deviations.exclude_single_modality:
            counted = counted * (step.mask.sum(1, keepdim=True) > 1).float()
        count = counted.sum(0)
        dist_sum = (distance * counted).sum(0)
        self.state.record(dist_sum, count, gate)
        return (dist_sum / count.clamp_min(1)).detach()

    @staticmethod
    def _result(loss: torch.Tensor, terms: dict, per_mod: dict) -> StepResult:
        return StepResult(
            loss=loss,
            terms={k: float(v.detach()) for k, v in terms.items()},
            per_modality={k: v.detach().cpu() for k, v in per_mod.items()},
        )
