"""Figures and small re-computations for the lessons of notebooks 05-07.

Each function either draws what a run already recorded (its history tables, one
prediction) or recomputes a recorded quantity another way, so a notebook can show an
equation and ``assert`` that the run obeyed it:

- :func:`plot_learning_curve`: every loss term per epoch, the learning rate and the beta
  step size eta actually used (notebook 05).
- :func:`compare_learning_curves`: the loss terms of two or more runs side by side, one
  panel per term (notebook 05's comparisons).
- :func:`scheduled_eta`: the eta each epoch should use, in closed form from the config
  (the trainer walks the schedule step by step; the two must agree).
- :func:`replay_beta`: beta re-computed epoch by epoch with
  :func:`~passion_kit.method.preference.update_beta` from the recorded relative preference and
  eta (notebook 06).
- :func:`plot_hd95_conventions`: the border-to-border distances behind HD95
  (:func:`~passion_kit.engine.evaluate.border_distances`) and where the official, brats and
  monai conventions read their value (notebook 07).

Usage::

    from passion_kit.lessons.plots import plot_learning_curve, replay_beta
    plot_learning_curve("runs/phantom_rfnet_passion_idt_s0")
    replay_beta(read_history("runs/phantom_rfnet_passion_idt_s0"))
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator

from passion_kit.config import ExperimentConfig
from passion_kit.engine.evaluate import border_distances, hd95
from passion_kit.lessons.viz import PlotFigure, finish_figure
from passion_kit.method.preference import update_beta

__all__ = [
    "LOSS_TERMS",
    "compare_learning_curves",
    "plot_hd95_conventions",
    "plot_learning_curve",
    "replay_beta",
    "scheduled_eta",
]

# history_epoch.csv columns drawn by plot_learning_curve, with their legend text
LOSS_TERMS = {
    "loss": r"total $L$",
    "fuse": r"$L_{fuse}$ (teacher)",
    "deep": r"$L_{ds}$ (deep supervision)",
    "sep": r"$\sum_m L_{sep}^m$",
    "pixel": r"$\sum_m L_{pix}^m$",
    "proto": r"$\sum_m L_{proto}^m$",
}


def scheduled_eta(cfg: ExperimentConfig) -> list[float]:
    """The beta step size PASSION uses at the end of each training epoch, in closed form.

    Training epoch e stands for the schedule epochs ``[e s, (e + 1) s)`` with
    ``s = objective.eta_epochs / train.epochs`` (1 when ``eta_epochs`` is 0). eta starts at
    ``objective.eta`` and is multiplied by ``eta_factor`` at schedule epochs 0, ``eta_every``,
    ``2 eta_every``, ... once warm-up is over (a step-up during warm-up is skipped, as in the
    official code); the step used is ``s`` times the current eta, 0 during warm-up.

    Returns:
        ``train.epochs`` values, epoch 0 first.
    """
    o, epochs = cfg.objective, cfg.train.epochs
    scale = o.eta_epochs / epochs if o.eta_epochs else 1.0

    def step_ups(schedule_epoch: float) -> int:  # multiplications before this schedule epoch
        return math.ceil(round(schedule_epoch / o.eta_every, 9))

    first = step_ups(o.warmup_epochs * scale)
    return [
        0.0
        if e < o.warmup_epochs
        else scale * o.eta * o.eta_factor ** (step_ups((e + 1) * scale) - first)
        for e in range(epochs)
    ]


def replay_beta(history: pd.DataFrame, *, beta_range: Sequence[float] = (0.1, 4.0)) -> pd.DataFrame:
    """Beta re-computed from a run's recorded relative preference and eta.

    Starting from ``beta = 1`` for every modality, each epoch applies
    ``update_beta(beta, RP_e, eta_e)`` with the epoch's recorded ``relative_preference``
    and ``eta`` columns (an ``eta`` of 0, e.g. during warm-up, leaves beta unchanged).

    Args:
        history: a ``history_modality.csv`` table of a PASSION run (columns epoch,
            modality, relative_preference, eta, beta).
        beta_range: the clamp of the run (``objective.beta_range``).

    Returns:
        One row per (epoch, modality) with ``beta`` (recorded) and ``replayed``.

    Raises:
        ValueError: a needed column is missing (e.g. the run is not a PASSION run).
    """
    needed = {"epoch", "modality", "relative_preference", "eta", "beta"}
    if not needed <= set(history.columns):
        raise ValueError(f"history lacks the columns {sorted(needed - set(history.columns))}")
    wide = history.pivot(index="epoch", columns="modality", values=["relative_preference", "eta"])
    order = list(dict.fromkeys(history["modality"]))
    beta = torch.ones(len(order))
    rows = []
    for epoch in wide.index:
        rp = torch.tensor(
            wide.loc[epoch, "relative_preference"][order].to_numpy(), dtype=beta.dtype
        )
        eta = float(wide.loc[epoch, "eta"][order].iloc[0])
        beta = update_beta(beta, rp, eta, low=beta_range[0], high=beta_range[1])
        rows += [
            {"epoch": epoch, "modality": m, "replayed": float(b)}
            for m, b in zip(order, beta, strict=True)
        ]
    replayed = pd.DataFrame(rows)
    return history[["epoch", "modality", "beta"]].merge(replayed, on=["epoch", "modality"])


def plot_learning_curve(
    run: str | os.PathLike, *, path: str | os.PathLike | None = None
) -> PlotFigure:
    """A run's loss terms per epoch (left) and its learning rate and beta step eta (right).

    Reads ``history_epoch.csv`` (every term the objective reported, averaged over the
    epoch's iterations; the PASSION terms are unweighted sums over modalities) and, when
    present with a non-zero ``eta``, ``history_modality.csv``.

    Args:
        run: the run directory.
        path: save the PNG there.
    """
    run = Path(run)
    history = pd.read_csv(run / "history_epoch.csv")
    fig = PlotFigure(figsize=(9.5, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for column, text in LOSS_TERMS.items():
        if column in history and history[column].notna().any():
            style = {"color": "black", "lw": 2.2} if column == "loss" else {"lw": 1.2}
            left.plot(history["epoch"], history[column], "o-", ms=3, label=text, **style)
    left.set_yscale("log")
    left.set_ylabel("mean over the epoch's steps")
    left.legend(fontsize=7)
    left.set_title("loss terms", fontsize=10)
    lines = right.plot(history["epoch"], history["lr"], "o-", ms=3, color="0.3", label="lr")
    right.set_ylabel("learning rate")
    right.set_title("optimiser and beta step sizes", fontsize=10)
    modality = run / "history_modality.csv"
    per_modality = pd.read_csv(modality) if modality.is_file() else pd.DataFrame()
    # OGM-GE and PMR have no beta, so no eta column
    eta = per_modality.groupby("epoch")["eta"].first() if "eta" in per_modality else None
    if eta is not None and (eta > 0).any():
        twin = right.twinx()
        lines += twin.plot(
            eta.index, eta.to_numpy(), "s--", ms=3, color="#D55E00", label=r"$\eta$ (beta step)"
        )
        twin.set_ylabel(r"$\eta$ used at the epoch's end", color="#D55E00")
    right.legend(handles=lines, fontsize=7, loc="center right")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    return finish_figure(fig, path)


def compare_learning_curves(
    runs: Mapping[str, str | os.PathLike], *, path: str | os.PathLike | None = None
) -> PlotFigure:
    """Two or more runs' loss terms per epoch: one panel per term, one line per run.

    Reads each run's ``history_epoch.csv``. A term a run does not have (the baseline has no
    ``pixel`` or ``proto``) has no line in that panel; a term no run has gets no panel.

    Args:
        runs: legend name -> run directory.
        path: save the PNG there.

    Raises:
        ValueError: ``runs`` is empty.
    """
    if not runs:
        raise ValueError("runs is empty: give at least one run directory")
    histories = {name: pd.read_csv(Path(run) / "history_epoch.csv") for name, run in runs.items()}

    def has(history: pd.DataFrame, column: str) -> bool:
        return column in history and bool(history[column].notna().any())

    terms = [c for c in LOSS_TERMS if any(has(h, c) for h in histories.values())]
    fig = PlotFigure(figsize=(2.6 * len(terms) + 0.6, 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(terms)))
    for ax, column in zip(axes, terms, strict=True):
        for name, history in histories.items():
            if has(history, column):
                ax.plot(history["epoch"], history[column], "o-", ms=3, lw=1.2, label=name)
        ax.set_yscale("log")
        ax.set_title(LOSS_TERMS[column], fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("mean over the epoch's steps")
    axes[0].legend(fontsize=7)
    return finish_figure(fig, path)


def plot_hd95_conventions(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    title: str = "",
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """Histograms of the two directions' border distances, with each HD95 convention marked.

    ``official`` and ``brats`` read the 95th percentile of both directions pooled (the same
    value when neither set is empty); ``monai`` the larger of the two directions' own 95th
    percentiles. The legend gives each value as
    :func:`~passion_kit.engine.evaluate.hd95` returns it.

    Raises:
        ValueError: either set is empty (see :func:`border_distances`).
    """
    to_target, to_pred = border_distances(pred, target, spacing=spacing)
    fig = PlotFigure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, max(to_target.max(), to_pred.max()) + 0.5, 30)
    ax.hist(to_target, bins, histtype="step", lw=1.5, color="#0072B2", label="prediction -> target")
    ax.hist(to_pred, bins, histtype="step", lw=1.5, color="#009E73", label="target -> prediction")
    for convention, style in (("official", "-"), ("monai", "--")):
        value = hd95(pred, target, spacing=spacing, convention=convention)
        name = (
            "official = brats (pooled P95)"
            if convention == "official"
            else "monai (max of directed P95)"
        )
        ax.axvline(value, color="black", ls=style, label=f"{name}: {value:.2f} mm")
    ax.set_xlabel("distance to the other set's border (mm)")
    ax.set_ylabel("border voxels")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return finish_figure(fig, path)
