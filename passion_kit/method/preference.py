"""Relative preference, the task-wise gate and the gradient-wise beta update
(docs/method.md D.2-D.3).

Pure functions plus :class:`PreferenceState`, the small per-run state that
checkpoints save and the trainer calls :meth:`PreferenceState.end_epoch` on.

Sign convention (the paper's): ``RP_m > 0`` means modality m is *closer* to the
multi-modal teacher than average (dominant, "preferred"); ``RP_m < 0`` means it lags.

- Task-wise regularization, per iteration: the prototype (and unimodal) losses are
  switched on only for lagging modalities, ``gate_m = [sum_n a_nm (D_nm / mean_n D - 1) > 0]``.
- Gradient-wise regularization, per epoch: ``beta_m <- clamp(beta_m - eta * RP_m, 0.1, 4)``
  then renormalised to ``||beta||_2 = sqrt(M)``; a dominant modality's distillation
  weight shrinks ("slow down"), a lagging one's grows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "sample_relative_preference",
    "iteration_preference",
    "task_gate",
    "epoch_relative_preference",
    "eta_for_epoch",
    "update_beta",
    "availability_weights",
    "PreferenceState",
]


def sample_relative_preference(
    distance: torch.Tensor, available: torch.Tensor, *, skip_degenerate: bool = True
) -> torch.Tensor:
    """``RP_nm = 1 - D_nm / Dbar_n``, each student's preference within its sample.

    ``Dbar_n = sum_m a_nm D_nm / sum_m a_nm`` is the sample's mean distance over its
    students. RP > 0: modality m is closer to the teacher than the sample's average
    (preferred); RP < 0: it lags. 0 where m is not a student.

    Args:
        distance: (B, M) distances D (0 where not a student).
        available: (B, M) bool, the students of each sample.
        skip_degenerate: 0 for samples with fewer than two students or ``Dbar_n = 0``.
            With one student the student *is* the teacher, D = 0 and the official code
            divides 0 by 0: one such sample turns the whole batch's score into NaN and
            switches the gate off for every modality (docs/method.md G.2). ``False``
            reproduces that.

    Returns:
        (B, M) relative preferences.
    """
    a = available.to(distance.dtype)
    n_students = a.sum(1, keepdim=True)
    mean_d = (distance * a).sum(1, keepdim=True) / n_students
    rp = 1.0 - distance / mean_d
    if skip_degenerate:
        keep = (n_students > 1) & (mean_d > 0)
        rp = torch.where(keep, rp, torch.zeros_like(rp))
    return a * rp


def iteration_preference(
    distance: torch.Tensor, available: torch.Tensor, *, skip_degenerate: bool = True
) -> torch.Tensor:
    """Per-iteration lag score ``-sum_n a_nm RP_nm`` = ``sum_n a_nm (D_nm / Dbar_n - 1)``
    (:func:`sample_relative_preference`). Positive means the modality lags behind the
    others in this batch.

    Returns:
        (M,) score; ``> 0`` opens the task-wise gate.
    """
    rp = sample_relative_preference(distance, available, skip_degenerate=skip_degenerate)
    return -rp.sum(0)


def task_gate(score: torch.Tensor) -> torch.Tensor:
    """Task-wise gate: on (True) for modalities whose lag score is > 0 (NaN -> off)."""
    return score > 0


def epoch_relative_preference(
    mean_distance: torch.Tensor, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """``RP_m = (Dbar - D_m) / Dbar`` with ``Dbar`` the plain mean over modalities.

    Returns zeros when every distance is 0 (nothing to compare). With ``seen`` ((M,) bool),
    modalities not seen this epoch neither set the mean nor move: their RP is 0 whatever
    their value (which may be NaN).
    """
    if seen is not None:
        rp = torch.zeros_like(mean_distance)
        if bool(seen.any()):
            rp[seen] = epoch_relative_preference(mean_distance[seen])
        return rp
    dbar = mean_distance.mean()
    if float(dbar) == 0.0:
        return torch.zeros_like(mean_distance)
    return (dbar - mean_distance) / dbar


def eta_for_epoch(epoch: int, eta0: float = 0.01, factor: float = 1.5, every: int = 100) -> float:
    """The beta step size used at the end of ``epoch`` (0-based).

    The official schedule multiplies eta by 1.5 at epochs 0, 100, 200, ... before using
    it: 0.015 for epochs 0-99, 0.0225 for 100-199, 0.03375 for 200-299.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return eta0 * factor ** (epoch // every + 1)


def update_beta(
    beta: torch.Tensor,
    relative_preference: torch.Tensor,
    eta: float,
    *,
    low: float = 0.1,
    high: float = 4.0,
) -> torch.Tensor:
    """Gradient-wise regularization: ``beta <- sqrt(M) b / ||b||``, ``b = clamp(beta - eta RP)``.

    Args:
        beta: (M,) current coefficients.
        relative_preference: (M,) epoch relative preference (> 0: dominant).
        eta: step size (see :func:`eta_for_epoch`).
        low, high: the clamp (0.1, 4.0 in the paper's code).

    Returns:
        (M,) new coefficients with ``||beta||_2 = sqrt(M)`` (= ``||1_M||_2``; 2 for M = 4).
    """
    if beta.shape != relative_preference.shape or beta.dim() != 1:
        raise ValueError(
            f"beta and relative_preference must both be (M,), got {tuple(beta.shape)} "
            f"and {tuple(relative_preference.shape)}"
        )
    b = (beta - eta * relative_preference).clamp(low, high)
    return math.sqrt(b.numel()) * b / b.norm()


def availability_weights(masks: torch.Tensor) -> torch.Tensor:
    """Inverse-availability weights ``omega_m = N / n_m`` of a training split (IDT).

    Args:
        masks: (N, M) bool availability of every training case.

    Returns:
        (M,) weights; a modality never available gets weight 0 (it never has a loss).
        For the mr2468 BraTS split: [2.43, 1.62, 1.19, 5.09].
    """
    if masks.dim() != 2 or masks.shape[0] == 0:
        raise ValueError(f"masks must be (N, M) with N >= 1, got {tuple(masks.shape)}")
    counts = masks.to(torch.float64).sum(0)
    n = float(masks.shape[0])
    safe = counts.clamp_min(1.0)
    return torch.where(counts > 0, n / safe, torch.zeros_like(counts)).float()


_update_beta = update_beta  # the method's flag of the same name shadows it


@dataclass
class PreferenceState:
    """Per-run PASSION state: beta, eta and the running epoch statistics.

    Attributes:
        beta: (M,) gradient-wise coefficients (all ones at epoch 0).
        omega: (M,) inverse-availability weights (ones in PDT).
        eta: current step size (multiplied by ``eta_factor`` at epochs 0, ``eta_every``, ...).
        epoch: the epoch in progress (0-based).
        warmup_epochs: epochs during which only the unimodal losses train and beta is frozen.
        eta_scale: schedule epochs that one training epoch stands for (1: the paper's
            per-epoch schedule). A short run with ``eta_scale = 300 / epochs`` walks the
            paper's 300-epoch schedule: each epoch's step is ``eta_scale`` times the
            schedule's eta, and eta steps up when the schedule epochs it covers reach 0,
            ``eta_every``, ``2 eta_every``, ..., so beta can move as far as in 300 epochs.
        distance_mean: how the epoch's D per modality is averaged: ``"modality"`` (over the
            samples where the modality was a student; the kit's default, and the official
            statistic in IDT, where it divides by each modality's count in the split) or
            ``"iteration"`` (the summed D over the number of iterations: the official
            statistic in PDT and IDT-drop, where a modality drawn more often gets a larger
            D and so looks like a laggard).
    """

    num_modalities: int
    eta: float = 0.01
    eta_factor: float = 1.5
    eta_every: int = 100
    beta_low: float = 0.1
    beta_high: float = 4.0
    warmup_epochs: int = 0
    eta_scale: float = 1.0
    distance_mean: str = "modality"
    epoch: int = 0
    beta: torch.Tensor = field(default=None)  # type: ignore[assignment]
    omega: torch.Tensor = field(default=None)  # type: ignore[assignment]
    distance_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    distance_count: torch.Tensor = field(default=None)  # type: ignore[assignment]
    gate_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    iterations: int = 0

    def __post_init__(self) -> None:
        if self.distance_mean not in ("modality", "iteration"):
            raise ValueError(
                f"distance_mean must be 'modality' or 'iteration', got {self.distance_mean!r}"
            )
        m = self.num_modalities
        if self.beta is None:
            self.beta = torch.ones(m)
        if self.omega is None:
            self.omega = torch.ones(m)
        self.reset_epoch_stats()

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    def reset_epoch_stats(self) -> None:
        m = self.num_modalities
        self.distance_sum = torch.zeros(m, dtype=torch.float64)
        self.distance_count = torch.zeros(m, dtype=torch.float64)
        self.gate_sum = torch.zeros(m, dtype=torch.float64)
        self.iterations = 0

    def record(self, distance_sum: torch.Tensor, count: torch.Tensor, gate: torch.Tensor) -> None:
        """Add one iteration's per-modality distance sums, student counts and gate."""
        self.distance_sum += distance_sum.detach().double().cpu()
        self.distance_count += count.detach().double().cpu()
        self.gate_sum += gate.detach().double().cpu()
        self.iterations += 1

    def synchronize(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the epoch's distance statistics by their sum over processes (DDP).

        ``reduce`` sums a tensor over ranks and returns the sum; every rank calls this
        once at the end of an epoch, so all of them update beta alike.
        """
        total = reduce(torch.stack([self.distance_sum, self.distance_count]))
        self.distance_sum, self.distance_count = (t.double().cpu() for t in total)

    def mean_distance(self) -> torch.Tensor:
        """Epoch mean distance per modality (see ``distance_mean``)."""
        if self.distance_mean == "iteration":
            return (self.distance_sum / max(self.iterations, 1)).float()
        return (self.distance_sum / self.distance_count.clamp_min(1.0)).float()

    def end_epoch(self, *, update_beta: bool = True) -> dict[str, list[float]]:
        """Close the epoch: update beta (after warm-up), reset statistics, advance the epoch.

        Args:
            update_beta: False keeps beta and eta as they are (e.g. for the baseline,
                which only measures distances).

        Returns:
            The epoch's per-modality record: ``distance`` (mean D), ``relative_preference``,
            ``beta`` (after the update), ``gate_rate`` (fraction of iterations with the
            gate on) and ``eta`` (the step size used, 0 during warm-up).
        """
        mean_d = self.mean_distance()
        # Modalities with no student this epoch neither set the mean nor move.
        rp = epoch_relative_preference(mean_d, seen=self.distance_count > 0)
        eta_used = 0.0
        if update_beta and not self.in_warmup:
            # Step-ups of the schedule (at its epochs 0, every, 2 every, ...) that fall in
            # the schedule epochs [start, stop) this epoch covers: one per 'every' at scale 1.
            start, stop = self.epoch * self.eta_scale, (self.epoch + 1) * self.eta_scale
            ups = math.ceil(round(stop / self.eta_every, 9)) - math.ceil(
                round(start / self.eta_every, 9)
            )
            self.eta *= self.eta_factor**ups
            eta_used = self.eta * self.eta_scale
            self.beta = _update_beta(
                self.beta, rp, eta_used, low=self.beta_low, high=self.beta_high
            )
        record = {
            "distance": mean_d.tolist(),
            "relative_preference": rp.tolist(),
            "beta": self.beta.tolist(),
            "gate_rate": (self.gate_sum / max(self.iterations, 1)).tolist(),
            "eta": [eta_used] * self.num_modalities,
        }
        self.reset_epoch_stats()
        self.epoch += 1
        return record

    def state_dict(self) -> dict:
        return {
            key: (value.clone() if isinstance(value, torch.Tensor) else value)
            for key, value in self.__dict__.items()
        }

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - set(self.__dict__)
        if unknown:
            raise ValueError(f"unknown PreferenceState keys: {sorted(unknown)}")
        for key, value in state.items():
            setattr(self, key, value.clone() if isinstance(value, torch.Tensor) else value)
