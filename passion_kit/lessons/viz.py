"""Figures of a run: slices with overlays, preference dynamics, Dice heatmaps, availability.

Every function returns a :class:`PlotFigure` (a matplotlib Figure built without
pyplot, so nothing piles up in a loop; Jupyter shows the returned figure) and saves it as
a PNG when given ``path``. Regions have one colour everywhere (:data:`REGION_COLORS`:
WT green, TC blue, ET vermillion, from the Okabe-Ito palette) and modalities keep one
colour per channel across plots. Everything is read from the run directory's files
(``engine/train.py`` lists them), so a run trained on a GPU elsewhere can be plotted on a laptop.

Usage::

    from passion_kit.lessons import viz
    viz.plot_preference({"baseline": "runs/base", "PASSION": "runs/passion"})
    viz.plot_dice_heatmap({"baseline": "runs/base", "PASSION": "runs/passion"})
    viz.plot_availability(load_split("data/phantom", "mr2468"))
    viz.save_run_figures("runs/phantom_rfnet_passion_idt_s1037")  # -> <run>/figures/*.png

    python -c "from passion_kit.lessons.viz import save_run_figures; save_run_figures('runs/x')"
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from passion_kit.data.splits import MissingRateSplit

__all__ = [
    "PLANES",
    "PlotFigure",
    "PREFERENCE_METRICS",
    "REGION_COLORS",
    "figure_png",
    "finish_figure",
    "modality_colors",
    "plane_slice",
    "plot_availability",
    "plot_case",
    "plot_dice_heatmap",
    "plot_preference",
    "read_history",
    "read_summary",
    "region_colors",
    "save_run_figures",
    "tumour_centre",
]

PLANES = ("axial", "coronal", "sagittal")
# Okabe-Ito colours (safe for colour-blind readers); ETPro is drawn like ET.
REGION_COLORS = {"WT": "#009E73", "TC": "#0072B2", "ET": "#D55E00", "ETPro": "#D55E00"}
_EXTRA_COLORS = ("#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
# Modalities avoid the region colours, so a modality line is never mistaken for a region.
_MODALITY_COLORS = ("#E69F00", "#56B4E9", "#CC79A7", "#6A3D9A", "#F0E442", "#000000")
PREFERENCE_METRICS = {
    "distance": "distance D to the teacher",
    "relative_preference": "relative preference",
    "beta": "beta",
    "gate_rate": "gate rate",
}
# A balancing objective (OGM-GE, PMR, RedCore) records its own per-modality coefficient
# (1: left alone, < 1: slowed, > 1: sped up) where PASSION records beta: one row shows both.
_ALIASES = {"beta": ("beta", "coefficient")}

RunLike = str | os.PathLike | pd.DataFrame


def region_colors(regions: Sequence[str]) -> dict[str, str]:
    """One colour per region: :data:`REGION_COLORS` for BraTS names, a fixed cycle otherwise."""
    extra = itertools.cycle(_EXTRA_COLORS)
    return {name: REGION_COLORS.get(name) or next(extra) for name in regions}


def modality_colors(modalities: Sequence[str]) -> dict[str, str]:
    """One colour per modality, by channel order (the same in every plot of a dataset)."""
    return {m: _MODALITY_COLORS[i % len(_MODALITY_COLORS)] for i, m in enumerate(modalities)}


class PlotFigure(Figure):
    """A Figure that Jupyter shows as a PNG without pyplot, so figures made in a loop are
    freed like any object instead of piling up in pyplot's registry."""

    def _repr_png_(self) -> bytes:
        return figure_png(self, dpi=100)


def finish_figure(fig: PlotFigure, path: str | os.PathLike | None, dpi: int = 110) -> PlotFigure:
    """Save ``fig`` to ``path`` (if given) and close it for the notebook; returns it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
        tmp.replace(path)  # atomic: never a half-written figure
    return fig


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes (for an ``ipywidgets.Image``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


# --- slices -------------------------------------------------------------------------------
def plane_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2-D slice of a (..., H, W, D) volume: axial fixes D, coronal W, sagittal H."""
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    axis = {"axial": -1, "coronal": -2, "sagittal": -3}[plane]
    size = volume.shape[axis]
    if not 0 <= index < size:
        raise ValueError(f"index must be in [0, {size - 1}] for the {plane} plane, got {index}")
    return np.take(volume, index, axis=axis)


def tumour_centre(label: np.ndarray) -> tuple[int, int, int]:
    """(h, w, d) of the slices with the most tumour voxels; the volume centre if none."""
    fg = np.asarray(label) > 0
    if not fg.any():
        return tuple(s // 2 for s in fg.shape)  # type: ignore[return-value]
    return tuple(int(fg.sum(axis=tuple(a for a in range(3) if a != k)).argmax()) for k in range(3))


def _overlay(ax, label2d: np.ndarray, regions: Mapping, colors: Mapping, alpha: float) -> None:
    """Colour each voxel by the smallest region holding it, so nested regions (ET in TC in
    WT) keep their pure colours instead of blending."""
    rgba = np.zeros((*label2d.T.shape, 4))
    order = sorted(regions, key=lambda r: -int(np.isin(label2d, regions[r]).sum()))
    for name in order:
        rgba[np.isin(label2d, regions[name]).T] = to_rgba(colors[name], alpha)
    ax.imshow(rgba, origin="lower", interpolation="nearest")


def plot_case(
    image: np.ndarray,
    label: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    *,
    modalities: Sequence[str],
    regions: Mapping[str, Sequence[int]],
    planes: Sequence[str] = PLANES,
    centre: Sequence[int] | None = None,
    available: Sequence[bool] | None = None,
    show_regions: Sequence[str] | None = None,
    background: int | None = None,
    title: str | None = None,
    alpha: float = 0.45,
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """Multi-planar view: one row per plane; every modality, then ground truth and prediction.

    Args:
        image: (M, H, W, D) intensities in channel order.
        label: (H, W, D) class ids of the ground truth (None: no ground-truth column).
        prediction: (H, W, D) predicted class ids (None: no prediction column).
        modalities: the M modality names.
        regions: region name -> class ids (from the dataset description).
        planes: which of :data:`PLANES` to show, one row each.
        centre: (h, w, d) slice indices; default :func:`tumour_centre` of ``label``.
        available: M booleans; missing modalities are drawn faded with "(missing)".
        show_regions: regions to overlay (default: all).
        background: channel drawn under the overlays (default: the first available).
        title: figure title.
        alpha: overlay opacity.
        path: save the PNG there.
    """
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[0] != len(modalities):
        raise ValueError(
            f"image must be (M={len(modalities)}, H, W, D), got shape {tuple(image.shape)}"
        )
    for name, vol in (("label", label), ("prediction", prediction)):
        if vol is not None and np.shape(vol) != image.shape[1:]:
            raise ValueError(f"{name} must have shape {image.shape[1:]}, got {np.shape(vol)}")
    if not planes or any(p not in PLANES for p in planes):
        raise ValueError(f"planes must be a non-empty subset of {PLANES}, got {planes!r}")
    available = [True] * len(modalities) if available is None else [bool(a) for a in available]
    if len(available) != len(modalities) or not any(available):
        raise ValueError(f"available must be {len(modalities)} booleans, one True; got {available}")
    if background is None:
        background = available.index(True)
    if not 0 <= background < len(modalities):
        raise ValueError(f"background must be a channel in [0, {len(modalities) - 1}]")
    shown = {r: regions[r] for r in (show_regions if show_regions is not None else regions)}
    colors = region_colors(list(regions))
    if centre is None:
        centre = tumour_centre(label if label is not None else np.zeros(image.shape[1:]))
    index = {"sagittal": centre[0], "coronal": centre[1], "axial": centre[2]}
    columns = [(m, i) for i, m in enumerate(modalities)]
    columns += [
        (c, v) for c, v in (("ground truth", label), ("prediction", prediction)) if v is not None
    ]
    fig = PlotFigure(figsize=(1.9 * len(columns), 2.0 * len(planes) + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(planes), len(columns), squeeze=False))
    # Per-channel grey windows: z-scored modalities still differ in range (T2's CSF).
    windows = [np.percentile(channel, [1, 99.5]) for channel in image]
    for row, plane in enumerate(planes):
        for col, (name, content) in enumerate(columns):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            channel = content if isinstance(content, int) else background
            faded = isinstance(content, int) and not available[channel]
            gray = plane_slice(image[channel], plane, index[plane]).T
            lo, hi = windows[channel]
            ax.imshow(
                gray, cmap="gray", origin="lower", vmin=lo, vmax=hi, alpha=0.25 if faded else 1
            )
            if not isinstance(content, int):
                content = plane_slice(np.asarray(content), plane, index[plane])
                _overlay(ax, content, shown, colors, alpha)
            if row == 0:
                ax.set_title(f"{name}\n(missing)" if faded else name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{plane} {index[plane]}", fontsize=9)
    fig.legend(
        handles=[Patch(color=colors[r], alpha=0.8, label=r) for r in shown],
        loc="outside lower center",
        ncol=max(len(shown), 1),
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    return finish_figure(fig, path)


# --- training dynamics --------------------------------------------------------------------
def _read_table(run: RunLike, inside: str, hint: str) -> pd.DataFrame:
    """A DataFrame as it is; a CSV path; or the file ``inside`` a run directory."""
    if isinstance(run, pd.DataFrame):
        return run
    path = Path(run) / inside if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {Path(inside).name} ({hint})")
    return pd.read_csv(path)


def read_history(run: RunLike) -> pd.DataFrame:
    """A run's ``history_modality.csv`` (a run directory or the CSV itself; DataFrames pass)."""
    table = _read_table(run, "history_modality.csv", "train the run first")
    missing = {"epoch", "modality"} - set(table.columns)
    if missing:
        raise ValueError(f"history needs columns epoch and modality, missing {sorted(missing)}")
    return table


def _labelled(runs, kind: str) -> dict[str, object]:
    """``runs`` as {label: run}: a mapping stays, one run or a list gets names."""
    if isinstance(runs, Mapping):
        items = dict(runs)
    else:
        single = isinstance(runs, str | os.PathLike | pd.DataFrame)
        seq = [runs] if single else list(runs)
        items = {
            (f"run {i + 1}" if isinstance(r, pd.DataFrame) else _run_name(Path(r))): r
            for i, r in enumerate(seq)
        }
    if not items:
        raise ValueError(f"{kind} must name at least one run")
    return items


def _run_name(path: Path) -> str:
    return path.name if path.is_dir() or not path.suffix else path.parent.name


def plot_preference(
    histories: RunLike | Sequence[RunLike] | Mapping[str, RunLike],
    *,
    metrics: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """Per-modality preference dynamics over epochs, one column per run (shared y per row).

    Runs of different objectives can share a figure: the ``beta`` row shows PASSION's beta
    and a balancing objective's ``coefficient`` (OGM-GE's k, PMR's 1 + b - g, RedCore's
    beta), and a panel whose run did not record the row's quantity says so.

    Args:
        histories: a run directory, a ``history_modality.csv`` or its DataFrame; a list of
            them; or ``{label: run}`` (e.g. ``{"baseline": ..., "PASSION": ...}``).
        metrics: columns to plot, one row each; default: those of D, relative preference,
            beta (or coefficient) and gate rate that at least one run recorded.
        path: save the PNG there.

    Raises:
        ValueError: a requested metric (or, by default, every one) recorded by no run.
    """
    runs = {label: read_history(r) for label, r in _labelled(histories, "histories").items()}

    def column(table: pd.DataFrame, metric: str) -> str | None:
        return next((c for c in _ALIASES.get(metric, (metric,)) if c in table.columns), None)

    requested = metrics is not None
    metrics = list(metrics) if requested else list(PREFERENCE_METRICS)
    recorded = [m for m in metrics if any(column(t, m) for t in runs.values())]
    if requested and len(recorded) < len(metrics):
        absent = [m for m in metrics if m not in recorded]
        raise ValueError(f"no run ({', '.join(map(repr, runs))}) has the column(s) {absent}")
    if not recorded:
        raise ValueError(f"no run ({', '.join(map(repr, runs))}) has any of {metrics}")
    metrics = recorded
    names = list(dict.fromkeys(m for t in runs.values() for m in t["modality"]))
    colors = modality_colors(names)
    fig = PlotFigure(figsize=(3.6 * len(runs), 2.1 * len(metrics) + 0.4), layout="constrained")
    axes = fig.subplots(len(metrics), len(runs), squeeze=False, sharex="col", sharey="row")
    for col, (label, table) in enumerate(runs.items()):
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            name_of = column(table, metric)
            if name_of is None:
                ax.text(
                    0.5,
                    0.5,
                    "not recorded",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    fontsize=8,
                    color="0.5",
                )
            else:
                for name, part in table.groupby("modality", sort=False):
                    part = part.sort_values("epoch")
                    ax.plot(
                        part["epoch"], part[name_of], "o-", ms=2.5, color=colors[name], label=name
                    )
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
            if row == 0:
                ax.set_title(label, fontsize=10)
            if col == 0:
                used = {column(t, metric) for t in runs.values()} - {None}
                text = PREFERENCE_METRICS.get(metric, metric)
                if metric == "beta" and "coefficient" in used:
                    text = "beta / coefficient" if "beta" in used else "coefficient"
                ax.set_ylabel(text, fontsize=9)
            if row == len(metrics) - 1:
                ax.set_xlabel("epoch")
    handles = [Patch(color=colors[n], label=n) for n in names]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(names), frameon=False)
    return finish_figure(fig, path)


# --- evaluation tables --------------------------------------------------------------------
def read_summary(run: RunLike, split: str = "test") -> pd.DataFrame:
    """An evaluation ``summary.csv``: a run directory (``eval/<split>/``), the CSV, or a frame."""
    table = _read_table(run, f"eval/{split}/summary.csv", "run `python -m passion_kit evaluate`")
    if "combination" not in table.columns or not any(c.startswith("dice_") for c in table):
        raise ValueError("a summary needs a combination column and dice_<region> columns")
    return table


def plot_dice_heatmap(
    summaries: RunLike | Sequence[RunLike] | Mapping[str, RunLike],
    *,
    regions: Sequence[str] | None = None,
    split: str = "test",
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """Dice per modality combination (rows, with the mean last) and region (columns).

    With two runs a third panel shows the second minus the first (e.g. PASSION - baseline),
    on a diverging scale centred at 0.

    Args:
        summaries: one or two runs (a run directory, a ``summary.csv`` or its DataFrame), as
            a list or ``{label: run}``.
        regions: regions to show (default: every ``dice_<region>`` column of the first run).
        split: evaluation split read from run directories.
        path: save the PNG there.
    """
    import seaborn as sns

    runs = {label: read_summary(r, split) for label, r in _labelled(summaries, "summaries").items()}
    if len(runs) > 2:
        raise ValueError(f"summaries must hold one or two runs, got {len(runs)}")
    first = next(iter(runs.values()))
    regions = list(regions) if regions else [c[5:] for c in first.columns if c.startswith("dice_")]
    tables = {}
    for label, table in runs.items():
        absent = [r for r in regions if f"dice_{r}" not in table.columns]
        if absent:
            raise ValueError(f"summary of {label!r} has no Dice for region(s) {absent}")
        tables[label] = table.set_index("combination")[[f"dice_{r}" for r in regions]]
        tables[label].columns = regions
    frames = list(tables.values())
    if len(frames) == 2:
        if list(frames[0].index) != list(frames[1].index):
            raise ValueError("the two summaries list different modality combinations")
        a, b = tables
        tables[f"{b} - {a}"] = frames[1] - frames[0]
    rows = len(first)
    fig = PlotFigure(
        figsize=(1.1 + 0.75 * len(regions) * len(tables) + 1.2 * len(tables), 0.3 * rows + 1.2),
        layout="constrained",
    )
    axes = fig.subplots(1, len(tables), squeeze=False, sharey=True)[0]
    for i, (ax, (label, table)) in enumerate(zip(axes, tables.items(), strict=True)):
        difference = i == 2
        limit = float(np.nanmax(np.abs(table.to_numpy()))) if difference else 1.0
        sns.heatmap(
            table,
            ax=ax,
            annot=True,
            fmt=".2f" if not difference else "+.2f",
            annot_kws={"fontsize": 7},
            cmap="RdBu" if difference else "viridis",
            vmin=-max(limit, 1e-6) if difference else 0.0,
            vmax=max(limit, 1e-6) if difference else 1.0,
            cbar_kws={"shrink": 0.6},
        )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("Dice")
        ax.set_ylabel("combination" if i == 0 else "")
        for tick, region in zip(ax.get_xticklabels(), regions, strict=True):
            tick.set_color(region_colors(regions)[region])
        if table.index[-1] == "mean":
            ax.axhline(rows - 1, color="white", lw=2)
    return finish_figure(fig, path)


def plot_availability(
    split: MissingRateSplit, *, title: str | None = None, path: str | os.PathLike | None = None
) -> PlotFigure:
    """Cases per modality (missing rate written on each bar) and modalities per case.

    Args:
        split: a missing-rate split (``load_split(root, "mr2468")``).
        title: figure title.
        path: save the PNG there.
    """
    if not isinstance(split, MissingRateSplit):
        raise ValueError(f"split must be a MissingRateSplit, got {type(split).__name__}")
    names = list(split.modalities.modalities)
    counts = split.availability_counts()
    rates = split.missing_rates()
    per_case = np.array(split.masks, dtype=bool).reshape(len(split), -1).sum(1)
    fig = PlotFigure(figsize=(8.5, 3.0), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[len(names), len(names) * 0.8])
    bars = left.bar(names, [counts[n] for n in names], color=list(modality_colors(names).values()))
    for bar, name in zip(bars, names, strict=True):
        left.annotate(
            f"{rates[name]:.0%} missing",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    left.axhline(len(split), color="gray", ls="--", lw=1)
    left.set_ylim(0, len(split) * 1.15)
    left.set_ylabel(f"cases with the modality (of {len(split)})")
    sizes = np.arange(1, len(names) + 1)
    right.bar(sizes, [(per_case == k).sum() for k in sizes], color="#999999")
    right.set_xticks(sizes)
    right.set_xlabel("modalities available in a case")
    right.set_ylabel("cases")
    fig.suptitle(title or f"availability of {len(split)} training cases", fontsize=10)
    return finish_figure(fig, path)


# --- everything of one run ----------------------------------------------------------------
def save_run_figures(
    run_dir: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    case: bool = True,
    device: str = "cpu",
) -> dict[str, Path]:
    """Write every figure that the run's files allow into ``<run_dir>/figures/``.

    - ``preference.png`` from ``history_modality.csv``;
    - ``dice_<split>.png`` for each ``eval/<split>/summary.csv``;
    - ``availability.png`` of the run's missing-rate split (when its dataset is present);
    - ``case_<id>.png``: the first test case predicted with every modality (``case=True``;
      this runs the model: seconds on CPU for a phantom, a minute for a BraTS volume).

    Args:
        run_dir: a run directory written by :func:`passion_kit.engine.train.fit`.
        data_root: the prepared dataset (default: the one in the run's config).
        case: also draw a predicted test case.
        device: where the model runs for the case figure.

    Returns:
        Figure name -> path, for the figures written (absent inputs are skipped).
    """
    from passion_kit.config import ExperimentConfig
    from passion_kit.data import PreparedDataset, load_description, load_split

    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run}: not a run directory (no config.json)")
    out, written = run / "figures", {}
    if (run / "history_modality.csv").is_file():
        written["preference"] = out / "preference.png"
        plot_preference({run.name: run}, path=written["preference"])
    for summary in sorted(run.glob("eval/*/summary.csv")):
        key = f"dice_{summary.parent.name}"
        written[key] = out / f"{key}.png"
        plot_dice_heatmap({f"{run.name} ({summary.parent.name})": summary}, path=written[key])
    cfg = ExperimentConfig.from_file(run / "config.json")
    root = Path(data_root) if data_root else cfg.dataset_root()
    if not (root / "dataset.json").is_file():
        return written
    try:
        split = load_split(root, cfg.data.missing_rates)
    except (FileNotFoundError, ValueError):
        split = None  # a pdt run or a dataset without this split: no availability figure
    if split is not None:
        written["availability"] = out / "availability.png"
        plot_availability(split, title=f"{cfg.data.missing_rates}", path=written["availability"])
    if case and (run / "checkpoint_last.pt").is_file():
        import torch

        from passion_kit.engine.evaluate import load_run, predict_case

        loaded = load_run(run, data_root=root, device=device)
        sample = PreparedDataset(root, cfg.data.test_split, setting="full")[0]
        ms = load_description(root).modalities
        everything = torch.ones(1, ms.num_modalities, dtype=torch.bool)
        labels = predict_case(
            loaded.backbone,
            sample["image"],
            everything,
            window=cfg.eval.window,
            overlap=cfg.eval.overlap,
            device=loaded.device,
            amp=loaded.amp,
        )
        key = f"case_{sample['case_id']}"
        written[key] = out / f"{key}.png"
        plot_case(
            sample["image"].numpy(),
            sample["label"].numpy(),
            labels[0].numpy(),
            modalities=ms.modalities,
            regions=loaded.description.regions,
            title=f"{run.name}: {sample['case_id']}, all modalities",
            path=written[key],
        )
    return written
