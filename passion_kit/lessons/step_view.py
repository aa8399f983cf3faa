"""One PASSION step on one case, piece by piece: the inputs and pictures of notebook 04.

:func:`step_pieces` runs the teacher and the students of one batch as the objective does;
the numbers drawn are computed by the functions that train (:mod:`passion_kit.method.losses`:
``kl_map``, ``class_prototypes``, ``similarity_maps``, ``prototype_distillation``;
:mod:`passion_kit.method.preference`: ``sample_relative_preference``), and the plots here
draw them (docs/method.md C.4, C.5, D.2-D.3).

Usage (CPU, seconds)::

    from passion_kit.lessons import step_view as sv
    from passion_kit.method import losses
    loaded, history = sv.passion_run("outputs/reproduce/runs", "data")  # or the shipped one
    batch = sv.case_batch(loaded.root, 0, "flair+t1c+t1")
    step = sv.step_pieces(loaded.backbone, batch)
    kl = losses.kl_map(step.student.logits, step.teacher.logits, 4.0)  # (S, H, W, D)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from passion_kit.config import ExperimentConfig
from passion_kit.data import PreparedDataset
from passion_kit.engine.evaluate import LoadedRun, load_run
from passion_kit.lessons.viz import PlotFigure, finish_figure, modality_colors, tumour_centre
from passion_kit.method.losses import PROTO_EPS
from passion_kit.method.students import student_masks
from passion_kit.models import Backbone
from passion_kit.models.base import FusionOut

__all__ = [
    "CLASS_COLORS",
    "StepPieces",
    "case_batch",
    "cosine_matrix",
    "passion_run",
    "plot_maps",
    "plot_predictions",
    "plot_prototypes",
    "plot_step_preference",
    "step_pieces",
]

# Classes 1..K-1 (background is not drawn): NCR/NET blue, edema green, enhancing vermillion,
# the colours of the regions they first belong to (TC, WT, ET) in the kit's other figures.
CLASS_COLORS = ("#0072B2", "#009E73", "#D55E00", "#CC79A7", "#E69F00", "#56B4E9")


# --- the trained network and the case ------------------------------------------------------
def passion_run(
    run_dir: str | os.PathLike, data_root: str | os.PathLike, *, device: str = "cpu"
) -> tuple[LoadedRun, Path]:
    """A trained PASSION network: the main job's run when it is complete, else the shipped one.

    The main job's PASSION run of seed 0 is ``<run_dir>/phantom_rfnet_passion_mr2468_s0``;
    without it, the checkpoint shipped inside the package (the explorer's: the same
    preset, objective and seed) is loaded where it lies, nothing is written. The cases come
    from ``<data_root>/<dataset>``, where the phantom is generated if absent.

    Returns:
        ``(loaded, source)``: the loaded run (backbone in eval mode) and the folder that
        holds its ``history_modality.csv``.
    """
    from passion_kit.engine.grid import point_name
    from passion_kit.engine.runs import RunFiles, ensure_data, load_checkpoint
    from passion_kit.lessons.explorer import SHIPPED_EXPLORER

    files = RunFiles(Path(run_dir) / point_name("passion", preset="cpu", dataset="phantom"))
    if files.complete():
        source, checkpoint = files.root, files.last
    else:
        source, checkpoint = SHIPPED_EXPLORER, SHIPPED_EXPLORER / "checkpoint.pt"
    cfg = ExperimentConfig.from_dict(load_checkpoint(checkpoint)["config"], source=str(checkpoint))
    root = Path(data_root) / cfg.data.dataset
    ensure_data(cfg, root)
    return load_run(source, checkpoint=checkpoint, data_root=root, device=device), source


def _tumour_window(label: torch.Tensor, size: int) -> tuple[slice, ...]:
    """A cube of edge ``size`` centred on the tumour, moved inside the volume."""
    centre = tumour_centre(label.numpy())
    window = []
    for c, n in zip(centre, label.shape, strict=True):
        start = min(max(c - size // 2, 0), max(n - size, 0))
        window.append(slice(start, start + size))
    return tuple(window)


def case_batch(
    root: str | os.PathLike,
    index: int,
    combination: str,
    *,
    split: str = "test",
    size: int | None = None,
) -> dict:
    """A batch of one case with the availability ``combination``, as IDT feeds it.

    The channels of the absent modalities are zeroed (docs/method.md A.2), so the encoders see what
    an IDT sample with this mask would show them.

    Args:
        root: the prepared dataset folder.
        index: the case's position in ``splits/<split>.txt``.
        combination: a combination name of the dataset (e.g. ``"flair+t1c+t1"``, ``"all"``).
        split: the case list.
        size: crop a cube of this edge centred on the tumour (None: the whole case).

    Returns:
        ``image`` (1, M, *sp) float32, ``label`` (1, *sp) int64, ``mask`` (1, M) bool and
        ``case_id`` (a list of one str).

    Raises:
        ValueError: an index outside the split or an unknown combination.
    """
    dataset = PreparedDataset(root, split, setting="full")
    if not 0 <= index < len(dataset):
        raise ValueError(
            f"index must be in [0, {len(dataset) - 1}] for split {split!r}, got {index}"
        )
    modalities = dataset.description.modalities
    mask = torch.tensor(modalities.mask(modalities.id_from_name(combination)))
    sample = dataset[index]
    image, label = sample["image"] * mask[:, None, None, None], sample["label"]
    if size is not None:
        window = _tumour_window(label, size)
        image, label = image[(slice(None), *window)], label[window]
    return {
        "image": image[None].contiguous(),
        "label": label[None].contiguous(),
        "mask": mask[None],
        "case_id": [sample["case_id"]],
    }


# --- the fused passes ----------------------------------------------------------------------
@dataclass
class StepPieces:
    """The teacher and student passes of one step (docs/method.md D.1).

    Attributes:
        mask: (B, M) the samples' availability: the teachers' masks.
        students: the modalities that have a student, in the order of the student rows.
        teacher: the teacher's fused output, B rows.
        student: the students' fused output, B * S rows (row r: sample r // S, modality
            ``students[r % S]``).
    """

    mask: torch.Tensor
    students: list[int]
    teacher: FusionOut
    student: FusionOut


@torch.no_grad()
def step_pieces(backbone: Backbone, batch: dict) -> StepPieces:
    """Encode once, then fuse the teacher and one student per available modality in one call.

    A student is the same network under a one-modality mask ``e_m``, reusing the encoder
    features. As in :class:`~passion_kit.method.passion.PassionObjective`, a modality
    has a student where some sample holds it with another modality (alone, its student
    would be its teacher).
    """
    device = next(backbone.parameters()).device
    mask = batch["mask"].cpu()
    alone = (mask.sum(1, keepdim=True) == 1) & mask
    students = [int(i) for i in torch.nonzero((mask & ~alone).any(0)).flatten()]
    rows = student_masks(mask, students, teacher=True).to(device)
    out = backbone.fuse(backbone.encode(batch["image"].to(device)), rows)
    logits, feature = out.logits.float().cpu(), out.feature.float().cpu()
    out = FusionOut(logits, [d.float().cpu() for d in out.deep], feature)
    first = torch.arange(out.logits.shape[0]) % (1 + len(students)) == 0
    return StepPieces(mask, students, out.rows(first), out.rows(~first))


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """(K, C) vectors -> (K, K) pairwise cosine similarities (norms clamped at 1e-5)."""
    unit = vectors.float() / vectors.float().norm(dim=-1, keepdim=True).clamp_min(PROTO_EPS)
    return unit @ unit.T


# --- pictures ------------------------------------------------------------------------------
def _class_overlay(ax, classes: np.ndarray, num_classes: int, alpha: float) -> None:
    colors = [(0, 0, 0, 0)] + [CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(num_classes - 1)]
    cmap = ListedColormap(colors)
    shown = np.ma.masked_equal(np.asarray(classes).T, 0)
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=num_classes - 1, alpha=alpha, origin="lower")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_predictions(
    background: np.ndarray,
    label: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    *,
    class_names: Sequence[str],
    title: str | None = None,
    alpha: float = 0.6,
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """The label and each prediction on one 2-D slice, side by side, over a grey image.

    Args:
        background: (H, W) grey slice (e.g. one available modality).
        label: (H, W) class ids.
        predictions: panel title -> (H, W) predicted class ids.
        class_names: the K class names (class 0, the background, is not drawn).
        title: figure title.
        alpha: overlay opacity.
        path: save the PNG there.
    """
    panels = {"label": label} | dict(predictions)
    shapes = {k: np.shape(v) for k, v in panels.items() if np.shape(v) != np.shape(background)}
    if shapes:
        raise ValueError(
            f"every slice must have the background's shape {np.shape(background)}: {shapes}"
        )
    fig = PlotFigure(figsize=(2.1 * len(panels), 2.7), layout="constrained")
    lo, hi = np.percentile(background, [1, 99.5])
    for ax, (name, classes) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels.items(), strict=True
    ):
        ax.imshow(np.asarray(background).T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        _class_overlay(ax, classes, len(class_names), alpha)
        ax.set_title(name, fontsize=9)
    handles = [
        Patch(color=CLASS_COLORS[(k - 1) % len(CLASS_COLORS)], label=class_names[k])
        for k in range(1, len(class_names))
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return finish_figure(fig, path)


def plot_maps(
    maps: Mapping[str, np.ndarray],
    *,
    title: str,
    cmap: str = "magma",
    vmin: float | None = None,
    vmax: float | None = None,
    outline: np.ndarray | None = None,
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """One heat map per entry on a shared colour scale, with an optional outline.

    Args:
        maps: panel title -> (H, W) values.
        title: figure title (also the colour bar's label).
        cmap: colour map.
        vmin, vmax: the scale (default: the smallest and largest value of all maps).
        outline: (H, W) bool drawn as a white contour (e.g. the tumour).
        path: save the PNG there.
    """
    if not maps:
        raise ValueError("maps must hold at least one map")
    values = {k: np.asarray(v, dtype=float) for k, v in maps.items()}
    vmin = min(v.min() for v in values.values()) if vmin is None else vmin
    vmax = max(v.max() for v in values.values()) if vmax is None else vmax
    fig = PlotFigure(figsize=(2.1 * len(values) + 0.6, 2.6), layout="constrained")
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    for ax, (name, value) in zip(axes, values.items(), strict=True):
        image = ax.imshow(value.T, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
        if outline is not None and np.asarray(outline).any():
            edge = np.asarray(outline, dtype=float).T
            ax.contour(edge, levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes), shrink=0.85)
    fig.suptitle(title, fontsize=10)
    return finish_figure(fig, path)


def plot_prototypes(
    prototypes: Mapping[str, torch.Tensor],
    *,
    class_names: Sequence[str],
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """Each set of class prototypes: its vectors (K x C) above their pairwise cosines (K x K).

    Args:
        prototypes: panel title -> (K, C) prototypes (e.g. the teacher's and a student's).
        class_names: the K class names.
        path: save the PNG there.
    """
    fig = PlotFigure(figsize=(3.0 * len(prototypes), 5.2), layout="constrained")
    axes = fig.subplots(2, len(prototypes), squeeze=False)
    for col, (name, vectors) in enumerate(prototypes.items()):
        vectors = torch.as_tensor(vectors).float()
        if vectors.shape[0] != len(class_names):
            raise ValueError(
                f"{name}: {vectors.shape[0]} prototypes for {len(class_names)} classes"
            )
        top, bottom = axes[0, col], axes[1, col]
        image = top.imshow(vectors.numpy(), cmap="coolwarm", aspect="auto")
        top.set_title(f"{name}: prototypes", fontsize=9)
        top.set_xlabel("feature channel c", fontsize=8)
        fig.colorbar(image, ax=top, shrink=0.8)
        cosine = cosine_matrix(vectors).numpy()
        bottom.imshow(cosine, cmap="coolwarm", vmin=-1, vmax=1)
        for (i, j), value in np.ndenumerate(cosine):
            bottom.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        bottom.set_title(f"{name}: cos(mu_i, mu_j)", fontsize=9)
        bottom.set_xticks(range(len(class_names)), class_names, rotation=45, fontsize=7)
        for ax in (top, bottom):
            ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    return finish_figure(fig, path)


def plot_step_preference(
    distance: Sequence[float],
    relative_preference: Sequence[float],
    gate: Sequence[bool],
    *,
    modalities: Sequence[str],
    available: Sequence[bool],
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """One sample's D per modality (dashed: their mean Dbar) and its RP, with the gate.

    Absent modalities have no bar. A bar of RP drawn hatched and marked "gate on" is a
    lagging modality (RP < 0) whose prototype and unimodal losses this step switches on.

    Args:
        distance: (M,) D of each student.
        relative_preference: (M,) ``1 - D / Dbar``.
        gate: (M,) the task-wise gate.
        modalities: the M names.
        available: (M,) the sample's availability.
        path: save the PNG there.
    """
    d, rp, on, have = (
        np.asarray(v, dtype=float) for v in (distance, relative_preference, gate, available)
    )
    if any(v.shape != (len(modalities),) for v in (d, rp, on, have)):
        raise ValueError(
            f"distance, RP, gate and available must each hold {len(modalities)} values"
        )
    have, on = have.astype(bool), on.astype(bool)
    x, colors = np.flatnonzero(have), np.array(list(modality_colors(modalities).values()))[have]
    fig = PlotFigure(figsize=(8.0, 2.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.bar(x, d[have], color=colors)
    left.axhline(d[have].mean(), color="black", linestyle="--", linewidth=1, label="Dbar")
    left.set_title("distance D to the teacher", fontsize=9)
    left.legend(fontsize=7, frameon=False)
    bars = right.bar(x, rp[have], color=colors)
    for bar, gate_on in zip(bars, on[have], strict=True):
        if gate_on:
            bar.set_hatch("//")
            y = bar.get_height()
            where = (bar.get_x() + bar.get_width() / 2, y)
            right.annotate("gate on", where, ha="center", va="top" if y < 0 else "bottom")
    right.margins(y=0.15)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_title("relative preference RP = 1 - D / Dbar", fontsize=9)
    names = [m if h else f"{m}\n(absent)" for m, h in zip(modalities, have, strict=True)]
    for ax in (left, right):
        ax.set_xticks(range(len(modalities)), names, fontsize=8)
    return finish_figure(fig, path)
