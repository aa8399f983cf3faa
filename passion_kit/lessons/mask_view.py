"""What an availability mask does: in a training split, and inside each backbone's fusion.

Two questions, each answered on real tensors (notebooks 02 and 03):

- **Which modalities does a training case have?** A missing-rate split gives every case
  a fixed mask. :func:`pattern_probabilities` is the probability of each combination
  under independent missing rates, :func:`plot_split_weights` draws the split (case x
  modality) next to each modality's availability and its inverse-availability weight
  ``omega_m = N / n_m``.
- **Where does an absent modality vanish inside a backbone?** Each function reads the
  backbone's own intermediate tensors with forward hooks while ``fuse`` runs, so what is
  shown is what the network computed:

  - RFNet (:func:`rfnet_fusion_weights`): the per-region modality weights ``w_ik`` of the
    region-aware fusion, and the region maps ``p_i`` that gate it;
  - mmFormer (:func:`mmformer_inter_attention`): the inter-modal attention over the
    M * N modality tokens, whose absent-modality tokens are zeroed (only the positional
    embedding is left) but still attended to;
  - M2FTrans (:func:`m2ftrans_fusion_attention`): the first layer's attention of the
    fusion tokens, a masked softmax that gives absent modalities exactly 0.

Usage (CPU, seconds)::

    from passion_kit import build_backbone
    from passion_kit.lessons.mask_view import m2ftrans_fusion_attention
    net = build_backbone("m2ftrans", patch_size=32).eval()
    feats = net.encode(torch.randn(1, 4, 32, 32, 32))
    share = m2ftrans_fusion_attention(net, feats, torch.tensor([[False, True, True, True]]))
    share[0, 0]  # tensor(0.): the absent FLAIR gets no attention
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from passion_kit.data.modalities import ModalitySet
from passion_kit.data.splits import MissingRateSplit
from passion_kit.lessons.viz import PlotFigure, finish_figure, modality_colors
from passion_kit.models.base import Backbone, FusionOut

__all__ = [
    "attention_by_modality",
    "feature_sensitivity",
    "m2ftrans_fusion_attention",
    "mask_names",
    "mask_tables",
    "mmformer_inter_attention",
    "pattern_probabilities",
    "plot_region_maps",
    "plot_split_weights",
    "plot_weight_tables",
    "rfnet_fusion_weights",
    "trained_run",
]


def pattern_probabilities(rates: Mapping[str, float], modalities: ModalitySet) -> pd.Series:
    """Probability of every combination when each modality is missing independently.

    ``P(c) = prod_m (1 - p_m)^{c_m} p_m^{1 - c_m}``: the share of cases the split
    generator gives combination c (it allots ``max(1, floor(N P(c)))`` cases to each).

    Args:
        rates: modality name -> missing rate p_m (``rates_from_name("mr2468")``).
        modalities: the dataset's modalities and combination table.

    Returns:
        A Series indexed by ``mask_id``; it sums to
        ``1 - prod_m p_m`` (the rest is the all-missing pattern, which is redrawn).
    """
    missing = sorted(set(modalities.modalities) ^ set(rates))
    if missing:
        raise ValueError(
            f"rates must name each of {list(modalities.modalities)}, got {sorted(rates)}"
        )
    probs = {}
    for i in range(modalities.num_combinations):
        mask = modalities.mask(i)
        pairs = zip(modalities.modalities, mask, strict=True)
        probs[i] = math.prod((1 - rates[m]) if present else rates[m] for m, present in pairs)
    return pd.Series(probs, name="P(c)").rename_axis("mask_id")


def plot_split_weights(
    split: MissingRateSplit,
    omega: Sequence[float],
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """A split as a case x modality matrix, next to each modality's availability and omega.

    Args:
        split: a missing-rate split.
        omega: (M,) the inverse-availability weights written on the bars.
        title: figure title.
        path: save the PNG there.
    """
    names = list(split.modalities.modalities)
    omega = [float(w) for w in omega]
    if len(omega) != len(names):
        raise ValueError(f"omega must have {len(names)} entries ({names}), got {len(omega)}")
    masks = np.array(split.masks, dtype=float).reshape(len(split), len(names))
    fig = PlotFigure(figsize=(8.5, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.3])
    left.imshow(masks, aspect="auto", cmap="Greys", vmin=0, vmax=1.4, interpolation="nearest")
    left.set_xticks(range(len(names)), names)
    left.set_ylabel(f"training case (n = 0..{len(split) - 1})")
    left.set_title("availability c[n, m] (dark: present)", fontsize=9)
    share = masks.mean(0)
    bars = right.bar(names, share, color=list(modality_colors(names).values()))
    for bar, w in zip(bars, omega, strict=True):
        x = bar.get_x() + bar.get_width() / 2
        right.annotate(f"omega = {w:.2f}", (x, bar.get_height()), ha="center", va="bottom")
    right.axhline(1.0, color="gray", ls="--", lw=1)
    right.set_ylim(0, 1.2)
    right.set_ylabel("n_m / N (share of cases with m)")
    right.set_title("availability and omega_m = N / n_m", fontsize=9)
    fig.suptitle(title or f"{len(split)} training cases", fontsize=10)
    return finish_figure(fig, path)


def _collect(module: torch.nn.Module, store: list, *, inputs: bool = False):
    """Register a hook that appends the module's output (or first input) to ``store``."""
    if inputs:
        return module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach()))
    return module.register_forward_hook(lambda _m, _a, out: store.append(out))


def _check_kind(net: Backbone, name: str) -> None:
    if getattr(net, "name", None) != name:
        raise ValueError(f"expected a {name} backbone, got {getattr(net, 'name', type(net))!r}")


@torch.no_grad()
def rfnet_fusion_weights(
    net: Backbone, feats: list[torch.Tensor], mask: torch.Tensor, level: int = 0
) -> tuple[torch.Tensor, FusionOut]:
    """RFNet's region-aware fusion weights ``w_ik`` at one decoder level, as ``fuse`` used them.

    The weights are the sigmoid of each region's MLP output (read with hooks while
    ``net.fuse(feats, mask)`` runs) times the mask, which is how
    :class:`~passion_kit.models.rfnet.RegionAwareFusion` applies them.

    Args:
        net: an RFNet backbone.
        feats: ``net.encode(image)``.
        mask: (B * S, M) bool mask rows.
        level: decoder level, 0 = full resolution.

    Returns:
        ``(weights, out)``: weights (B * S, K, M) (region i, modality k) and the fusion output.
    """
    _check_kind(net, "rfnet")
    rfm = net.decoder.rfm[level]
    logits: list[torch.Tensor] = []
    hooks = [_collect(mlp, logits) for mlp in rfm.weight_mlps]
    try:
        out = net.fuse(feats, mask)
    finally:
        for h in hooks:
            h.remove()
    weights = torch.sigmoid(torch.stack(logits, dim=2))  # (B, S, K, M)
    weights = weights.flatten(0, 1) * mask.to(weights.dtype)[:, None, :]
    return weights, out


@torch.no_grad()
def mmformer_inter_attention(
    net: Backbone, feats: list[torch.Tensor], mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """mmFormer's inter-modal attention weights and the tokens it attends over.

    The tokens entering ``net.inter`` are read with a hook while ``fuse`` runs; the
    weights are ``softmax(q k^T * scale)`` of that layer's own projections (its
    :meth:`~passion_kit.models.transformer.TransformerLayer.attend`, without dropout).

    Returns:
        ``(attn, tokens)``: attn (B * S, heads, M * N, M * N), rows = queries; tokens
        (B * S, M * N, D), modality-major (tokens ``k * N .. k * N + N - 1`` are modality k).
    """
    _check_kind(net, "mmformer")
    seen: list[torch.Tensor] = []
    hook = _collect(net.inter, seen, inputs=True)
    try:
        net.fuse(feats, mask)
    finally:
        hook.remove()
    tokens = seen[0]
    q, k, _ = net.inter.heads(tokens)
    attn = torch.softmax((q @ k.transpose(-2, -1)) * net.inter.scale, dim=-1)
    return attn, tokens


@torch.no_grad()
def m2ftrans_fusion_attention(
    net: Backbone, feats: list[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """Share of M2FTrans's fusion-token attention (first layer) that goes to each modality.

    Read from the bottleneck's own output while ``fuse`` runs: the attention of the
    fusion queries summed per modality block (what its weight attention uses), divided
    by heads x queries, so a row sums to 1 minus the share the fusion tokens keep for
    themselves.

    Returns:
        (B * S, M) shares in [0, 1]; exactly 0 for absent modalities (masked softmax).
    """
    _check_kind(net, "m2ftrans")
    outs: list = []
    hook = _collect(net.bottleneck, outs)
    try:
        net.fuse(feats, mask)
    finally:
        hook.remove()
    weights = outs[0][2]  # (B * S, M, *grid): summed over heads and queries
    per_key = weights.flatten(2).sum(-1)
    heads = net.bottleneck.layers[0].num_heads
    return per_key / (heads * math.prod(weights.shape[2:]))


def attention_by_modality(attn: torch.Tensor, num_modalities: int) -> torch.Tensor:
    """Attention mass between modality blocks: (R, heads, M N, M N) -> (R, M, M).

    Entry ``[r, q, k]`` is the share of a modality-q query's attention that lands on the
    tokens of modality k (mean over heads and over the N queries of block q, sum over
    the N keys of block k); each row sums to 1.
    """
    r, h, t, t2 = attn.shape
    if t != t2 or t % num_modalities:
        raise ValueError(
            f"attn must be (R, heads, M*N, M*N) with M={num_modalities}, got {tuple(attn.shape)}"
        )
    n = t // num_modalities
    blocks = attn.reshape(r, h, num_modalities, n, num_modalities, n)
    return blocks.sum(-1).mean(dim=(1, 3))


def mask_names(masks: torch.Tensor, modalities: ModalitySet) -> list[str]:
    """The combination name of every mask row (``"all"``, ``"t1c+t1+t2"``, ...)."""
    return [modalities.name(modalities.mask_id(row)) for row in masks.tolist()]


def mask_tables(
    values: torch.Tensor, masks: torch.Tensor, modalities: ModalitySet, index: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """One table per mask row, named by its combination, for :func:`plot_weight_tables`.

    Args:
        values: (S, R, M) one (R, M) matrix per mask row, columns = modalities.
        masks: (S, M) the mask rows.
        modalities: names the columns and the rows of ``masks``.
        index: the R row labels (e.g. the classes, or the modalities).
    """
    if values.dim() != 3 or values.shape[0] != masks.shape[0]:
        raise ValueError(f"values must be (S={masks.shape[0]}, R, M), got {tuple(values.shape)}")
    names = mask_names(masks, modalities)
    columns = list(modalities.modalities)
    return {
        name: pd.DataFrame(v.detach().cpu().numpy(), index=list(index), columns=columns)
        for name, v in zip(names, values, strict=True)
    }


@torch.no_grad()
def feature_sensitivity(
    net: Backbone,
    feats: list[torch.Tensor],
    masks: torch.Tensor,
    modality: int,
    *,
    scale: float = 10.0,
    seed: int = 0,
) -> torch.Tensor:
    """How much the fused logits move when one modality's features are replaced by noise.

    Every feature level (and, for mmFormer, the intra-modal tokens) of ``modality`` is
    replaced by ``scale`` x standard-normal noise; the other modalities are left as they are.

    Returns:
        (S,) the largest absolute change of the logits, one value per mask row: 0 (up
        to rounding) wherever ``modality`` is absent from the row.
    """
    generator = torch.Generator().manual_seed(seed)
    changed = [f.clone() for f in feats]
    for f in changed:
        noise = torch.randn(f[:, modality].shape, generator=generator)
        f[:, modality] = scale * noise.to(f.device, f.dtype)
    before = net.fuse(feats, masks).logits
    after = net.fuse(changed, masks).logits
    return (after - before).abs().flatten(1).amax(1)


def plot_weight_tables(
    tables: Mapping[str, pd.DataFrame],
    *,
    title: str | None = None,
    vmax: float | None = None,
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """One annotated heatmap per table (e.g. one per mask), side by side, one colour scale.

    Args:
        tables: panel title -> DataFrame (rows and columns are labelled on the axes).
        title: figure title.
        vmax: top of the colour scale (default: the largest value).
        path: save the PNG there.
    """
    if not tables:
        raise ValueError("tables is empty")
    top = vmax if vmax is not None else max(float(t.to_numpy().max()) for t in tables.values())
    first = next(iter(tables.values()))
    fig = PlotFigure(
        figsize=(2.2 + 1.0 * first.shape[1] * len(tables), 0.8 + 0.5 * first.shape[0]),
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(1, len(tables), sharey=True))
    for ax, (name, table) in zip(axes, tables.items(), strict=True):
        values = table.to_numpy(dtype=float)
        image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=top or 1.0, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            color = "white" if v < 0.6 * (top or 1.0) else "black"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color=color)
        ax.set_xticks(range(values.shape[1]), [str(c) for c in table.columns])
        ax.set_yticks(range(values.shape[0]), [str(i) for i in table.index])
        ax.set_title(name, fontsize=9)
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return finish_figure(fig, path)


def plot_region_maps(
    maps: Mapping[str, np.ndarray],
    classes: Sequence[str],
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> PlotFigure:
    """Region probability maps p_i on one slice: one row per mask, one column per class.

    Args:
        maps: row title -> (K, H, W) probabilities.
        classes: the K class names.
        title: figure title.
        path: save the PNG there.
    """
    rows = list(maps.items())
    if not rows or any(m.ndim != 3 or m.shape[0] != len(classes) for _, m in rows):
        raise ValueError(f"maps must hold (K={len(classes)}, H, W) arrays, one per row")
    fig = PlotFigure(figsize=(1.9 * len(classes), 1.9 * len(rows) + 0.4), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), len(classes), squeeze=False))
    for r, (name, probs) in enumerate(rows):
        for i, cls in enumerate(classes):
            ax = axes[r, i]
            image = ax.imshow(probs[i].T, cmap="magma", vmin=0, vmax=1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"p_{i} {cls}" if r == 0 else "", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return finish_figure(fig, path)


def trained_run(
    main_job: str | os.PathLike,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    name: str = "phantom_rfnet_passion_mr2468_s0",
) -> Path:
    """The main job's finished run ``name`` if there is one, else the shipped explorer run.

    The shipped run (:func:`passion_kit.lessons.explorer.explorer_run`, the same configuration as
    the main job's PASSION RFNet run of seed 0) is unpacked under ``run_dir``, and its
    phantom generated under ``data_root`` where absent; nothing is trained.
    """
    from passion_kit.engine.runs import RunFiles
    from passion_kit.lessons.explorer import explorer_run

    run = Path(main_job) / "runs" / name
    return run if RunFiles(run).complete() else explorer_run(data_root, run_dir)
