"""The PASSION objective (docs/method.md D) over any backbone: the baseline plus
self-distillation and preference-aware regularization.

One training step (after warm-up):

1. ``encode`` every modality once; the unimodal decoder gives ``L_sep^m``.
2. ``fuse`` the teacher (the sample's own mask) and one student per available modality
   (a one-modality mask) in a single call: the students reuse the encoder features.
3. Teacher: ``L_fuse`` (weighted CE + Dice) and deep supervision ``L_ds``.
4. Students: pixel-wise self-distillation ``L_pix`` (temperature KL to the teacher's
   output, held constant: final and deep levels) and semantic-wise ``L_proto`` (prototype
   similarity maps), with the distance D of each student to the teacher.
5. Task-wise gate ``tau`` from the per-iteration relative preference; gradient-wise
   ``beta`` from the per-epoch one (:mod:`passion_kit.method.preference`).

``L = L_fuse + L_ds + sum_m tau_m beta_m omega_m L_sep^m + 0.5 sum_m beta_m omega_m L_pix^m
+ 0.1 sum_m tau_m omega_m L_proto^m`` (docs/method.md D.3), each term reduced over the
batch. Teacher and students share every weight; only the teacher's *output* is detached
in the distillation terms. The official-code switches are
:class:`~passion_kit.method.baseline.Deviations`.
"""

from __future__ import annotations

import torch

from passion_kit.method.base import StepResult, teacher_terms
from passion_kit.method.baseline import BaselineObjective, Deviations, Step
from passion_kit.method.losses import pixel_distillation, prototype_distillation
from passion_kit.method.preference import iteration_preference, task_gate
from passion_kit.method.students import student_masks
from passion_kit.models.base import Backbone, FusionOut

__all__ = ["PassionObjective", "Deviations"]


class PassionObjective(BaselineObjective):
    """PASSION as a plug-in objective: :class:`BaselineObjective` plus distillation.

    Args:
        temperature: KD temperature T (4).
        weight_pixel, weight_proto: weights of ``L_pix`` and ``L_proto`` (0.5, 0.1).
        **baseline: the :class:`~passion_kit.method.baseline.BaselineObjective` arguments
            (``num_modalities``, ``num_classes``, ``weight_sep``, ``deviations``, the beta
            schedule, ``omega``); ``track_distance`` is not one (PASSION always measures D).

    Example::

        objective = PassionObjective(num_modalities=4, num_classes=4)
        result = objective(batch, backbone)
        result.loss.backward()
        objective.end_epoch()  # beta update from the epoch's relative preference
    """

    name = "passion"

    def __init__(
        self,
        *,
        temperature: float = 4.0,
        weight_pixel: float = 0.5,
        weight_proto: float = 0.1,
        **baseline,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if baseline.get("track_distance"):
            raise ValueError("track_distance is for the baseline: PASSION always measures D")
        super().__init__(**baseline)
        self.temperature = temperature
        self.weight_pixel = weight_pixel
        self.weight_proto = weight_proto

    def end_epoch(self) -> dict[str, list[float]]:
        """Close the epoch: beta moves against the epoch's relative preference."""
        return self.state.end_epoch(update_beta=True)

    def _warmup_weights(self) -> torch.Tensor:
        return self.state.beta * self.state.omega

    def _fusion_step(self, step: Step, backbone: Backbone) -> StepResult:
        """The baseline's terms plus the students' distillation, gated and weighted."""
        device = step.y.device
        mods = self._student_modalities(step)
        rows = 1 + len(mods)
        out = backbone.fuse(step.feats, student_masks(step.mask, mods, teacher=True))
        teacher = out.rows(slice(0, None, rows))
        terms = teacher_terms(teacher, step.y, self.deviations.reduction, self.upsample)
        loss = terms["fuse"] + terms["deep"]

        l_pix, l_proto, distance = self._student_losses(out, rows, mods, step)
        score = iteration_preference(
            distance, step.students, skip_degenerate=self.deviations.skip_degenerate
        )
        if self.batch_reducer is not None:
            score = self.batch_reducer(score)
        gate = task_gate(score).float()
        beta, omega = self.state.beta.to(device), self.state.omega.to(device)
        sep, pix, proto = self._reduce(step.sep), self._reduce(l_pix), self._reduce(l_proto)
        loss = (
            loss
            + self.weight_sep * (gate * beta * omega * sep).sum()
            + self.weight_pixel * (beta * omega * pix).sum()
            + self.weight_proto * (gate * omega * proto).sum()
        )
        per_mod = {
            "sep": sep.detach(),
            "pixel": pix.detach(),
            "proto": proto.detach(),
            "preference_score": score.detach(),
            "gate": gate.detach(),
            "beta": beta.detach(),
            "omega": omega.detach(),
        }
        per_mod["distance"] = self._record_distance(step, distance, gate)
        for key in ("sep", "pixel", "proto"):
            terms[key] = per_mod[key].sum()
        return self._result(loss, terms, per_mod)

    def _student_losses(
        self, out: FusionOut, rows: int, mods: list[int], step: Step
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, M) pixel and prototype losses and distances D of every student."""
        b, m = step.mask.shape
        zeros = step.y.new_zeros(b, m)
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
            s_logits,
            [d[0] for d in deep],
            t_logits,
            [d[1] for d in deep],
            self.temperature,
            up=self.upsample,
        )
        proto, dist = prototype_distillation(s_feat, t_feat, step.y)
        weight = self._real_students(step).float()
        l_pix, l_proto, distance = zeros, zeros.clone(), zeros.clone()
        # (autocast may hand back bf16 from the einsums; the records stay float32)
        l_pix[:, mods] = pix.view(b, s).float()
        l_proto[:, mods] = proto.view(b, s).float()
        distance[:, mods] = dist.view(b, s).float()
        return l_pix * weight, l_proto * weight, distance * weight
