"""The PASSION objective (spec D) over any backbone, and the baseline it plugs into.

One training step (PASSION on):

1. ``encode`` every modality once.
2. ``fuse`` the teacher (the sample's own mask) and one student per available modality
   (a one-modality mask) in a single call: the students reuse the encoder features.
3. Teacher: ``L_fuse`` (weighted CE + Dice) and deep supervision ``L_ds``.
   Unimodal decoder: ``L_sep`` per available modality.
4. Students: pixel-wise self-distillation ``L_pix`` (temperature KL to the detached
   teacher, final and deep levels) and semantic-wise ``L_proto`` (prototype similarity
   maps), with the distance D of each student to the teacher.
5. Task-wise gate from the per-iteration relative preference; gradient-wise beta
   from the per-epoch one (:mod:`passion_kit.preference`).

``L = L_fuse + L_ds + sum_m tau_m beta_m omega_m L_sep^m + 0.5 sum_m beta_m omega_m L_pix^m
+ 0.1 sum_m tau_m omega_m L_proto^m`` (spec D.3), each term reduced over the batch.
With PASSION off (the baseline, spec D.4): ``L = L_fuse + L_ds + sum_m L_sep^m``.

Deviations from the official code, each switchable:

- ``reduction="mean"``: terms are averaged over the batch; the official code sums them,
  so its effective learning rate grows with the batch size (spec G.6). ``"sum"`` reproduces it.
- ``skip_degenerate=True``: samples with a single student (D = 0 by construction) are left
  out of the per-iteration preference instead of turning it into NaN (spec G.2).
- ``students="available"``: students only for modalities in the sample's mask (the
  paper-time code); ``"all"`` computes all M, as the official HEAD does in PDT.
- ``exclude_single_modality=False``: single-modality samples count (with D = 0) in the epoch
  distance, as in the official code; ``True`` leaves them out (spec G.3).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from passion_kit.losses import (
    deep_supervision_loss,
    pixel_distillation,
    prototype_distillation,
    segmentation_loss,
)
from passion_kit.models.base import Backbone, FusionOut
from passion_kit.objectives.base import StepResult, check_batch, one_hot
from passion_kit.objectives.common import separate_outputs, student_masks
from passion_kit.preference import PreferenceState, iteration_preference, task_gate

__all__ = ["PassionObjective", "BaselineObjective"]


class PassionObjective:
    """PASSION as a plug-in objective; ``enabled=False`` gives the plain baseline.

    Args:
        num_modalities: M.
        num_classes: K.
        enabled: PASSION on (True) or the baseline (False).
        temperature: KD temperature T (4).
        weight_sep, weight_pixel, weight_proto: loss weights (1, 0.5, 0.1).
        students: ``"available"`` (default) or ``"all"`` (official HEAD in PDT).
        reduction: ``"mean"`` (default) or ``"sum"`` (official) over the batch.
        skip_degenerate: fix for NaN preferences from single-student samples (G.2).
        exclude_single_modality: leave single-modality samples out of the epoch D (G.3).
        warmup_decay: during warm-up, give every parameter the loss does not reach a zero
            gradient, so the optimizer still updates it: weight decay, and with Adam's
            coupled decay a moment-driven step (the official code multiplies the fusion
            terms by 0, which has this effect). Off by default: the kit leaves the fusion
            parameters untouched during warm-up (it matters for ``myops2020-paper``, 20
            warm-up epochs with Adam).
        epoch_distance: ``"modality"`` or ``"iteration"``: how the epoch's D is averaged
            (:class:`~passion_kit.preference.PreferenceState` ``distance_mean``).
        keep_self_students: also compute and back-propagate the terms of a single-modality
            sample's student, whose mask is the teacher's (the official code does). Its KL
            value and D are 0 here, but the KL's gradient is not where the clamp at 0.005
            cuts a teacher probability; off by default, as a student equal to its teacher
            teaches nothing (on mmFormer and M2FTrans the official student is a separate
            pass with its own dropout, so its KL and D there are dropout noise; the kit's
            rows share the teacher's dropout mask, so they stay 0).
        track_distance: for the baseline only, also measure each student's distance D
            (without gradient) so preference dynamics can be compared.
        track_every: with ``track_distance``, measure on every k-th call only (the first,
            the (k+1)-th, ...): the epoch's D is then a mean over fewer samples, and the
            training itself is unchanged (the measurement takes no gradient and no random
            number).
        eta, eta_factor, eta_every, beta_range, warmup_epochs: the beta schedule (spec E).
        eta_scale: schedule epochs per training epoch (see
            :class:`~passion_kit.preference.PreferenceState`); 1 is the paper's schedule.
        omega: (M,) inverse-availability weights (IDT); ones if None (PDT).
    """

    def __init__(
        self,
        *,
        num_modalities: int,
        num_classes: int,
        enabled: bool = True,
        temperature: float = 4.0,
        weight_sep: float = 1.0,
        weight_pixel: float = 0.5,
        weight_proto: float = 0.1,
        students: Literal["available", "all"] = "available",
        reduction: Literal["mean", "sum"] = "mean",
        skip_degenerate: bool = True,
        exclude_single_modality: bool = False,
        keep_self_students: bool = False,
        epoch_distance: Literal["modality", "iteration"] = "modality",
        warmup_decay: bool = False,
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
        if students not in ("available", "all"):
            raise ValueError(f"students must be 'available' or 'all', got {students!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if track_every < 1:
            raise ValueError(f"track_every must be >= 1, got {track_every}")
        if not eta_scale > 0:
            raise ValueError(f"eta_scale must be > 0, got {eta_scale}")
        self.name = "passion" if enabled else "baseline"
        self.num_modalities = num_modalities
        self.num_classes = num_classes
        self.enabled = enabled
        self.temperature = temperature
        self.weight_sep = weight_sep
        self.weight_pixel = weight_pixel
        self.weight_proto = weight_proto
        self.students = students
        self.reduction = reduction
        self.skip_degenerate = skip_degenerate
        self.exclude_single_modality = exclude_single_modality
        self.keep_self_students = keep_self_students
        self.warmup_decay = warmup_decay
        self.track_distance = track_distance
        self.track_every = track_every
        self._calls = 0  # fusion steps so far (after warm-up), for track_every
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
            distance_mean=epoch_distance,
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
        if self.warmup_decay and self.state.in_warmup:
            for p in backbone.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)

    def end_epoch(self) -> dict[str, list[float]]:
        """Close the epoch (beta update with PASSION on); returns the per-modality record."""
        return self.state.end_epoch(update_beta=self.enabled)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Reduce over the batch (dim 0)."""
        return x.mean(0) if self.reduction == "mean" else x.sum(0)

    def __call__(self, batch: dict, backbone: Backbone) -> StepResult:
        image, label, mask = check_batch(batch, self.num_modalities)
        b, m = mask.shape
        device = image.device
        y = one_hot(label.to(device), self.num_classes, torch.float32)
        mask = mask.to(device)
        feats = backbone.encode(image)
        # a[n, m]: modality m is a student / has a unimodal loss for sample n.
        a = mask if self.students == "available" else torch.ones_like(mask)
        af = a.float()

        l_sep = separate_outputs(backbone, feats, a, y)[0]
        per_mod: dict[str, torch.Tensor] = {"sep": self._reduce(l_sep).detach()}
        if self.state.in_warmup:
            # Warm-up (spec D.3): only the unimodal decoders train (beta * omega for PASSION).
            weights = self.state.beta * self.state.omega if self.enabled else torch.ones(m)
            loss = self.weight_sep * (weights.to(device) * self._reduce(l_sep)).sum()
            return StepResult(
                loss=loss,
                terms={"sep": float(per_mod["sep"].sum())},
                per_modality={k: v.cpu() for k, v in per_mod.items()},
            )

        measure = self.track_distance and self._calls % self.track_every == 0
        self._calls += 1
        student_mods = self._student_modalities(mask, a) if self.enabled else []
        rows = 1 + len(student_mods)
        out = backbone.fuse(feats, student_masks(mask, student_mods, teacher=True))
        teacher = out.rows(slice(0, None, rows))
        terms: dict[str, torch.Tensor] = {
            "fuse": self._reduce(segmentation_loss(F.softmax(teacher.logits.float(), 1), y)),
            "deep": self._reduce(deep_supervision_loss([d.float() for d in teacher.deep], y)),
        }
        loss = terms["fuse"] + terms["deep"]

        distance = None
        if self.enabled:
            l_pix, l_proto, distance = self._student_losses(out, rows, student_mods, mask, a, y)
            score = iteration_preference(distance, a, skip_degenerate=self.skip_degenerate)
            if self.batch_reducer is not None:
                score = self.batch_reducer(score)
            gate = task_gate(score).float()
            beta, omega = self.state.beta.to(device), self.state.omega.to(device)
            sep_w = gate * beta * omega
            loss = (
                loss
                + self.weight_sep * (sep_w * self._reduce(l_sep)).sum()
                + self.weight_pixel * (beta * omega * self._reduce(l_pix)).sum()
                + self.weight_proto * (gate * omega * self._reduce(l_proto)).sum()
            )
            per_mod.update(
                pixel=self._reduce(l_pix).detach(),
                proto=self._reduce(l_proto).detach(),
                preference_score=score.detach(),
                gate=gate.detach(),
                beta=beta.detach(),
                omega=omega.detach(),
            )
        else:
            loss = loss + self.weight_sep * self._reduce(l_sep).sum()
            if measure:
                with torch.no_grad():
                    distance = self._measure_distance(
                        backbone, feats, teacher.feature.detach(), mask, a, y
                    )
                gate = torch.zeros(m, device=device)

        if distance is not None:
            counted = af
            if self.exclude_single_modality:
                counted = counted * (mask.sum(1, keepdim=True) > 1).float()
            count = counted.sum(0)
            dist_sum = (distance * counted).sum(0)
            self.state.record(dist_sum, count, gate)
            per_mod["distance"] = (dist_sum / count.clamp_min(1)).detach()

        for key in ("sep", "pixel", "proto"):
            if key in per_mod:
                terms[key] = per_mod[key].sum()
        return StepResult(
            loss=loss,
            terms={k: float(v.detach()) for k, v in terms.items()},
            per_modality={k: v.detach().cpu() for k, v in per_mod.items()},
        )

    def _real_students(self, mask: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, M): modality m is a student of sample n whose terms count.

        A single-modality sample's student has the teacher's mask: it is the teacher, and
        it is left out unless ``keep_self_students``.
        """
        if self.keep_self_students:
            return a
        return a & ~((mask.sum(1, keepdim=True) == 1) & mask)

    def _student_modalities(self, mask: torch.Tensor, a: torch.Tensor) -> list[int]:
        """Modalities that are a counted student for some sample."""
        return [int(i) for i in torch.nonzero(self._real_students(mask, a).any(0)).flatten()]

    def _student_losses(
        self,
        out: FusionOut,
        rows: int,
        mods: list[int],
        mask: torch.Tensor,
        a: torch.Tensor,
        y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, M) pixel and prototype losses and distances D of every student."""
        b, m = mask.shape
        zeros = y.new_zeros(b, m)
        if not mods:
            return zeros, zeros.clone(), zeros.clone()
        s = len(mods)

        def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Student rows (B * S, ...) and teacher rows (B, ...) of a fused output."""
            t = t.float().view(b, rows, *t.shape[1:])
            return t[:, 1:].flatten(0, 1), t[:, 0]

        s_logits, t_logits = split(out.logits)
        deep = [split(d) for d in out.deep]
        s_feat, t_feat = split(out.feature)
        pix = pixel_distillation(
            s_logits, [d[0] for d in deep], t_logits, [d[1] for d in deep], self.temperature
        )
        proto, dist = prototype_distillation(s_feat, t_feat, y)
        weight = self._real_students(mask, a).float()
        l_pix, l_proto, distance = zeros, zeros.clone(), zeros.clone()
        # (autocast may hand back bf16 from the einsums; the records stay float32)
        l_pix[:, mods] = pix.view(b, s).float()
        l_proto[:, mods] = proto.view(b, s).float()
        distance[:, mods] = dist.view(b, s).float()
        return l_pix * weight, l_proto * weight, distance * weight

    def _measure_distance(
        self,
        backbone: Backbone,
        feats: list[torch.Tensor],
        teacher_feature: torch.Tensor,
        mask: torch.Tensor,
        a: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """Baseline only: D of every student, measured without gradient.

        Only the students are fused (the teacher's feature is the one the loss used), and
        a sample batch without a real student costs nothing.
        """
        b, m = mask.shape
        distance = y.new_zeros(b, m)
        mods = self._student_modalities(mask, a)
        if not mods:
            return distance
        out = backbone.fuse(feats, student_masks(mask, mods, teacher=False))
        dist = prototype_distillation(out.feature.float(), teacher_feature.float(), y)[1]
        distance[:, mods] = dist.view(b, len(mods)).float()
        return distance * self._real_students(mask, a).float()


def BaselineObjective(**kwargs) -> PassionObjective:  # noqa: N802 - reads as a class
    """The baseline: the same objective with PASSION off (spec D.4)."""
    return PassionObjective(enabled=False, **kwargs)
