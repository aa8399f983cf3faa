"""What the modality-balancing objectives (OGM-GE, PMR, RedCore) share.

Every balancing objective trains the baseline's terms (docs/method.md D.4: fused segmentation,
deep supervision, unimodal "sep" losses) and adds its own balancing on top. This module
holds the parts they have in common:

- :class:`BalancingObjective`: the trainer-facing surface (``name``, ``state``,
  ``__call__``, ``after_backward``, ``end_epoch``) and the baseline's terms.
- :func:`separate_outputs`: unimodal losses and confidences from the shared sep decoder.
- :func:`true_class_confidence`: the segmentation analogue of "softmax probability of the
  label" that OGM-GE and PMR compare between modalities.
- :func:`relative_confidence`: each modality's confidence relative to the other modalities
  *of the same samples* (so case difficulty cancels out under imbalanced missing rates).
- :func:`modality_parameters`: the parameters that belong to one modality only.
- :class:`BalanceState`: per-epoch running means plus the epoch counter, checkpointable.

Convention shared by all three: a per-modality ``coefficient`` of 1 means "left alone",
below 1 "slowed down" (dominant) and above 1 "sped up" (lagging), like PASSION's beta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from passion_kit.method.base import StepResult, check_batch, one_hot, reduce_batch, teacher_terms
from passion_kit.method.students import separate_outputs
from passion_kit.models.base import Backbone, FusionOut
from passion_kit.models.blocks import Upsample

__all__ = [
    "BalanceState",
    "BalancingObjective",
    "StepInputs",
    "comparable",
    "modality_parameters",
    "relative_confidence",
]


def comparable(available: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: modality m is available in sample n *and* n has another modality.

    Balancing compares modalities inside one fusion; a single-modality sample has
    nothing to compare (its fused prediction is already unimodal), so it is left out.
    """
    return available & (available.sum(1, keepdim=True) >= 2)


def relative_confidence(
    confidence: torch.Tensor,
    compared: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each modality's confidence relative to the other modalities of the same samples.

    ``rho_m = sum_n s_nm / sum_n mean_{j != m} s_nj`` over the samples n where m is
    compared (``compared[n, m]``), the mean running over the other compared modalities
    of sample n. With two modalities always present this is OGM-GE's and PMR's
    ``rho = sum s_a / sum s_v``; with missing modalities it compares a modality only with
    what was fused alongside it, so an easy case seen by one modality cannot make it
    look dominant.

    Args:
        confidence: (B, M) per-sample confidences (values where not compared are ignored).
        compared: (B, M) bool, see :func:`comparable`.
        reduce: sums a tensor over processes (DDP), so that the ratio is that of the
            global batch and identical on every rank; None for one process.

    Returns:
        ``(ratio, valid)``, each (M,): ``ratio > 1`` means more confident than the
        others (dominant); ``valid`` is False (and ratio 1) where m was never compared.
    """
    if confidence.shape != compared.shape or confidence.dim() != 2:
        raise ValueError(
            f"confidence and compared must both be (B, M), got {tuple(confidence.shape)} "
            f"and {tuple(compared.shape)}"
        )
    c = compared.to(confidence.dtype)
    s = confidence * c
    others = (s.sum(1, keepdim=True) - s) / (c.sum(1, keepdim=True) - 1).clamp_min(1.0)
    num, den, count = s.sum(0), (others * c).sum(0), c.sum(0)
    if reduce is not None:
        num, den, count = reduce(torch.stack([num, den, count]))
    valid = (count > 0) & (den > 0)
    ratio = torch.where(valid, num / den.clamp_min(1e-12), torch.ones_like(num))
    return ratio, valid


def modality_parameters(backbone: nn.Module, modality: int) -> Iterator[nn.Parameter]:
    """The parameters that only modality ``modality`` uses.

    ``backbone.modality_parameters(m)`` (every :class:`~passion_kit.models.base.Backbone`
    has it: the encoder by default, more where a modality owns more, e.g. mmFormer's
    per-modality transformer); for a plain module, its ``encoders[m]``.

    Raises:
        TypeError: when the module offers neither.
    """
    if hasattr(backbone, "modality_parameters"):
        return iter(backbone.modality_parameters(modality))
    encoders = getattr(backbone, "encoders", None)
    if isinstance(encoders, nn.ModuleList):
        return encoders[modality].parameters()
    raise TypeError(
        f"{type(backbone).__name__} has neither modality_parameters(m) nor an `encoders` "
        "ModuleList: gradient modulation cannot find each modality's parameters"
    )


@dataclass
class BalanceState:
    """Epoch counter and per-epoch running means of per-modality values.

    ``add(key, values, weights)`` accumulates weighted sums; ``close_epoch`` returns the
    weighted mean of every key in ``keys`` (NaN for a modality with zero weight, i.e. not
    observed this epoch, so a plot shows a gap), resets them and advances the epoch.
    Every epoch's record has the same keys, so it can be one row per (epoch, modality).
    """

    num_modalities: int
    keys: tuple[str, ...] = ()
    epoch: int = 0
    steps: int = 0  # training steps so far (seeds per-step randomness, e.g. OGM-GE's noise)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, key: str, values: torch.Tensor, weights: torch.Tensor) -> None:
        assert key in self.keys, f"{key!r} is not one of the recorded keys {self.keys}"
        zero = torch.zeros(self.num_modalities, dtype=torch.float64)
        w = weights.detach().double().cpu()
        self.sums[key] = self.sums.get(key, zero) + values.detach().double().cpu() * w
        self.weights[key] = self.weights.get(key, zero) + w

    def synchronize(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the epoch's sums and weights by their sums over processes (DDP).

        Every key is reduced, in the order of ``keys`` and with zeros where this rank
        recorded nothing, so that all ranks make the same collective calls.
        """
        zero = torch.zeros(self.num_modalities, dtype=torch.float64)
        for key in self.keys:
            pair = torch.stack([self.sums.get(key, zero), self.weights.get(key, zero)])
            total = reduce(pair).double().cpu()
            self.sums[key], self.weights[key] = total[0], total[1]

    def means(self) -> dict[str, torch.Tensor]:
        out = {}
        for key in self.keys:
            w = self.weights.get(key, torch.zeros(self.num_modalities, dtype=torch.float64))
            total = self.sums.get(key, torch.zeros_like(w))
            out[key] = torch.where(w > 0, total / w.clamp_min(1e-12), torch.nan).float()
        return out

    def close_epoch(self) -> dict[str, list[float]]:
        record = {k: v.tolist() for k, v in self.means().items()}
        self.sums, self.weights = {}, {}
        self.epoch += 1
        return record

    def state_dict(self) -> dict:
        def copy(v):
            if isinstance(v, dict):
                return {k: t.clone() for k, t in v.items()}
            return v.clone() if isinstance(v, torch.Tensor) else v

        return {key: copy(value) for key, value in self.__dict__.items()}

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - set(self.__dict__)
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} keys: {sorted(unknown)}")
        for key, value in state.items():
            if isinstance(value, dict):
                value = {k: t.clone() for k, t in value.items()}
            elif isinstance(value, torch.Tensor):
                value = value.clone()
            setattr(self, key, value)


@dataclass
class StepInputs:
    """What every balancing step computes first (see :meth:`BalancingObjective._begin`)."""

    feats: list[torch.Tensor]  # per level (B, M, C_l, *sp)
    y: torch.Tensor  # (B, K, *sp) one-hot
    mask: torch.Tensor  # (B, M) the fusion masks
    available: torch.Tensor  # (B, M) modalities with a unimodal loss
    sep_loss: torch.Tensor  # (B, M), with gradient
    sep_confidence: torch.Tensor  # (B, M), detached


class BalancingObjective:
    """Base of the balancing objectives: the baseline's terms and the trainer surface.

    Args:
        num_modalities: M.
        num_classes: K.
        weight_sep: weight of the unimodal losses (1, as the baseline).
        students: modalities with a unimodal loss: ``"available"`` (the sample's mask) or
            ``"all"`` (official HEAD in PDT), as the baseline.
        reduction: ``"mean"`` (default) or ``"sum"`` (official) over the batch.
        modulation_start, modulation_end: epochs (inclusive) in which the method balances
            (:attr:`modulating`); ``modulation_end=None``: until the end.
    """

    name = "balancing"
    record_keys: tuple[str, ...] = ("coefficient",)  # per-modality keys of the epoch record

    def __init__(
        self,
        *,
        num_modalities: int,
        num_classes: int,
        weight_sep: float = 1.0,
        students: Literal["available", "all"] = "available",
        reduction: Literal["mean", "sum"] = "mean",
        modulation_start: int = 0,
        modulation_end: int | None = None,
    ) -> None:
        if not isinstance(num_modalities, int) or num_modalities < 2:
            raise ValueError(f"num_modalities must be an int >= 2, got {num_modalities!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if students not in ("available", "all"):
            raise ValueError(f"students must be 'available' or 'all', got {students!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if weight_sep < 0:
            raise ValueError(f"weight_sep must be >= 0, got {weight_sep}")
        if modulation_start < 0 or (modulation_end is not None and modulation_end < 0):
            raise ValueError(
                f"modulation_start and modulation_end must be >= 0 (or end None), got "
                f"{modulation_start} and {modulation_end}"
            )
        self.modulation_start = modulation_start
        self.modulation_end = modulation_end
        self.num_modalities = num_modalities
        self.num_classes = num_classes
        self.weight_sep = weight_sep
        self.students = students
        self.reduction = reduction
        self.state = BalanceState(num_modalities, keys=self.record_keys)
        self.upsample = Upsample()  # Up of the deep-level losses (fast.speed_up may swap it)
        # Set by the trainer under DDP: sums a tensor over ranks, so that per-step balance
        # statistics are those of the global batch (and identical on every rank).
        self.batch_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, batch: dict, backbone: Backbone) -> StepResult:  # pragma: no cover
        raise NotImplementedError

    @property
    def modulating(self) -> bool:
        """Whether the current epoch is inside the modulation window."""
        e, end = self.state.epoch, self.modulation_end
        return e >= self.modulation_start and (end is None or e <= end)

    def after_backward(self, backbone: Backbone) -> None:
        """Hook between ``loss.backward()`` and ``optimizer.step()``; nothing by default."""

    def end_epoch(self) -> dict[str, list[float]]:
        """Close the epoch; returns its per-modality record (means over the epoch)."""
        return self.state.close_epoch()

    def _begin(self, batch: dict, backbone: Backbone) -> StepInputs:
        """Check the batch, encode every modality once, run the unimodal decoder."""
        self.state.steps += 1
        image, label, mask = check_batch(batch, self.num_modalities)
        device = image.device
        y = one_hot(label.to(device), self.num_classes, torch.float32)
        mask = mask.to(device)
        feats = backbone.encode(image)
        available = mask if self.students == "available" else torch.ones_like(mask)
        sep_loss, sep_conf = separate_outputs(backbone, feats, available, y)
        return StepInputs(feats, y, mask, available, sep_loss, sep_conf)

    def _balances(self, compared: torch.Tensor) -> bool:
        """Whether this step measures the modalities' balance: inside the window, with a
        sample to compare here, or always under DDP (the ratio is a collective every rank
        must join, even with nothing local)."""
        return self.modulating and (self.batch_reducer is not None or bool(compared.any()))

    def _ratio(
        self, confidence: torch.Tensor, compared: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """rho of the (global) batch from (B, M) confidences; records it and the mean
        confidence per modality.

        Returns:
            ``(ratio, valid, mean_confidence)``, each (M,).
        """
        ratio, valid = relative_confidence(confidence, compared, self.batch_reducer)
        counts = compared.sum(0).float()
        mean_conf = confidence.sum(0) / counts.clamp_min(1)
        self.state.add("confidence", mean_conf, counts)
        self.state.add("ratio", ratio, valid.float())
        return ratio, valid, mean_conf

    def _baseline_loss(
        self, teacher: FusionOut, step: StepInputs, sep_weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The baseline's loss ``L_fuse + L_ds + weight_sep sum_m w_m L_sep^m`` (w = 1 unless
        ``sep_weights`` (M,) is given).

        Returns:
            ``(loss, terms, sep)``: ``terms`` holds fuse, deep and the unweighted sep sum;
            ``sep`` is the (M,) per-modality unimodal loss, reduced over the batch.
        """
        terms = teacher_terms(teacher, step.y, self.reduction, self.upsample)
        sep = reduce_batch(step.sep_loss, self.reduction)
        terms["sep"] = sep.sum()
        weighted = terms["sep"] if sep_weights is None else (sep_weights.to(sep.device) * sep).sum()
        return terms["fuse"] + terms["deep"] + self.weight_sep * weighted, terms, sep

    @staticmethod
    def _result(
        loss: torch.Tensor, terms: dict[str, torch.Tensor], per_modality: dict[str, torch.Tensor]
    ) -> StepResult:
        return StepResult(
            loss=loss,
            terms={k: float(v.detach()) for k, v in terms.items()},
            per_modality={k: v.detach().float().cpu() for k, v in per_modality.items()},
        )
