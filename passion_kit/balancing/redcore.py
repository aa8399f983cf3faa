"""A RedCore-style (Sun et al., AAAI 2024) relative-advantage weighting of the unimodal losses.

RedCore weights each modality's loss by a coefficient beta_m that follows the modality's
*relative advantage*: a modality whose loss is below the average (advantaged) has its
weight lowered, a lagging one has it raised (official ``redcore_mmin_model.py``):

``ra_m = (mean_j L_j - L_m) / mean_j L_j``,
``beta <- b / ||b||`` with ``b = max(beta - eta ra, 0.1)``, and eta grown by 1.5 over time.

PASSION's gradient-wise beta update was taken from this code (docs/method.md F), so here RedCore
drives the same machinery (:func:`~passion_kit.method.preference.update_beta`) with RedCore's
signal instead of PASSION's distance:

``L = L_fuse + L_ds + sum_m beta_m L_sep^m``.

Adaptation to 3-D segmentation with missing modalities (each a decision of this kit):

- **Which loss.** RedCore weights (and measures the advantage on) each modality's own
  loss term, its cross-modal reconstruction loss. Here that is the modality's unimodal
  segmentation loss ``L_sep^m`` from the shared sep decoder, the only per-modality
  supervised term of the baseline.
- **Missing modalities.** ``L_m`` is the mean over the samples where m is available
  (RedCore divides each modality's loss by its count of present samples). A modality
  never seen in an epoch neither sets the mean nor moves (its ra is 0).
- **When.** RedCore updates every 3 iterations on an exponential moving average (0.7)
  of the losses and grows eta every 500 iterations. With batch size 1 and 3-D patches a
  per-iteration loss is mostly noise, so, as PASSION does with its beta, the update runs
  once per epoch on the epoch mean, and eta follows PASSION's schedule (0.01, times 1.5
  at epochs 0, 100, 200, ...). RedCore's own eta0 is 0.1, for thousands of updates.
- **Several processes (DDP).** The epoch's loss sums are summed over ranks before the
  update, so every rank moves beta alike.
- **Scale.** beta is clamped to [0.1, 4] and renormalised to ``||beta||_2 = sqrt(M)``
  (PASSION's choice, so that all ones is the unweighted baseline); RedCore renormalises
  to 1 and has no upper clamp.

Per-modality record: ``coefficient`` (beta), ``loss`` (epoch mean L_sep over available
samples), ``relative_advantage`` and ``eta``; per step ``coefficient`` and ``sep``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from passion_kit.balancing.common import BalanceState, BalancingObjective
from passion_kit.method.base import StepResult
from passion_kit.method.preference import epoch_relative_preference, eta_for_epoch, update_beta
from passion_kit.models.base import Backbone

__all__ = ["RedCoreObjective", "RedCoreState", "relative_advantage"]


def relative_advantage(mean_loss: torch.Tensor) -> torch.Tensor:
    """``ra_m = (mean_j L_j - L_m) / mean_j L_j`` over the modalities seen (not NaN).

    Args:
        mean_loss: (M,) epoch mean unimodal losses; NaN for a modality never seen.

    Returns:
        (M,) relative advantage, > 0 for a modality with a below-average loss
        (advantaged, to be slowed down); 0 for unseen modalities.
    """
    return epoch_relative_preference(mean_loss, seen=~torch.isnan(mean_loss))


@dataclass
class RedCoreState(BalanceState):
    """:class:`~passion_kit.balancing.common.BalanceState` plus the weights beta."""

    coefficient: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.coefficient is None:
            self.coefficient = torch.ones(self.num_modalities)


class RedCoreObjective(BalancingObjective):
    """Baseline loss with the unimodal losses weighted by RedCore's beta, updated per epoch.

    Args:
        num_modalities, num_classes, weight_sep, students, reduction: as the baseline
            (:class:`~passion_kit.balancing.common.BalancingObjective`).
        eta, eta_factor, eta_every: step size schedule (0.01, x1.5 at epochs 0, 100, ...).
        beta_range: the clamp of beta before renormalisation ((0.1, 4.0)).
    """

    name = "redcore"
    record_keys = ("loss",)

    def __init__(
        self,
        *,
        num_modalities: int,
        num_classes: int,
        eta: float = 0.01,
        eta_factor: float = 1.5,
        eta_every: int = 100,
        beta_range: tuple[float, float] = (0.1, 4.0),
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
        )
        if eta < 0 or eta_factor <= 0 or eta_every < 1:
            raise ValueError(
                f"need eta >= 0, eta_factor > 0 and eta_every >= 1, got {eta}, "
                f"{eta_factor} and {eta_every}"
            )
        low, high = beta_range
        if not 0 < low <= high or low > 1 or high < 1:
            raise ValueError(
                f"beta_range must be (low, high) with 0 < low <= 1 <= high, got {beta_range!r}"
            )
        self.eta = eta
        self.eta_factor = eta_factor
        self.eta_every = eta_every
        self.beta_range = (float(low), float(high))
        self.state = RedCoreState(num_modalities, keys=self.record_keys)

    def __call__(self, batch: dict, backbone: Backbone) -> StepResult:
        step = self._begin(batch, backbone)
        beta = self.state.coefficient
        teacher = backbone.fuse(step.feats, step.mask)
        loss, terms, sep = self._baseline_loss(teacher, step, sep_weights=beta)
        counts = step.available.sum(0).float()
        self.state.add("loss", step.sep_loss.sum(0) / counts.clamp_min(1), counts)
        return self._result(loss, terms, {"sep": sep, "coefficient": beta})

    def end_epoch(self) -> dict[str, list[float]]:
        """Update beta from the epoch's relative advantage; returns the epoch's record."""
        m = self.num_modalities
        mean_loss = self.state.means()["loss"]
        ra = relative_advantage(mean_loss)
        eta = eta_for_epoch(self.state.epoch, self.eta, self.eta_factor, self.eta_every)
        low, high = self.beta_range
        self.state.coefficient = update_beta(self.state.coefficient, ra, eta, low=low, high=high)
        record = self.state.close_epoch()
        record.update(
            relative_advantage=ra.tolist(),
            coefficient=self.state.coefficient.tolist(),
            eta=[eta] * m,
        )
        return record
