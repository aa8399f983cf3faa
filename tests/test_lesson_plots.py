"""The lessons' re-computations agree with the code they explain, and the figures draw them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from passion_kit.config import ExperimentConfig
from passion_kit.engine.evaluate import border_distances, hd95
from passion_kit.engine.train import eta_scale
from passion_kit.lessons.plots import (
    plot_hd95_conventions,
    plot_learning_curve,
    replay_beta,
    scheduled_eta,
)
from passion_kit.method.preference import PreferenceState

NAMES = ("flair", "t1c", "t1", "t2")


def _walk(cfg: ExperimentConfig, distances: np.ndarray | None = None) -> pd.DataFrame:
    """The history_modality rows PreferenceState writes for ``cfg``'s schedule."""
    o = cfg.objective
    state = PreferenceState(
        4,
        eta=o.eta,
        eta_factor=o.eta_factor,
        eta_every=o.eta_every,
        warmup_epochs=o.warmup_epochs,
        eta_scale=eta_scale(cfg),
    )
    rng = np.random.default_rng(0)
    rows = []
    for epoch in range(cfg.train.epochs):
        d = distances[epoch] if distances is not None else rng.uniform(0.01, 0.2, 4)
        state.record(torch.tensor(d), torch.ones(4), torch.zeros(4))
        record = state.end_epoch()
        for i, name in enumerate(NAMES):
            rows.append({"epoch": epoch, "modality": name} | {k: v[i] for k, v in record.items()})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "items",
    [
        ["train.epochs=14", "objective.eta_epochs=300"],  # the cpu preset's walk
        ["train.epochs=250"],  # the paper's per-epoch schedule, across two step-ups
        ["train.epochs=9", "objective.eta_epochs=300", "objective.warmup_epochs=2"],
        ["train.epochs=30", "objective.eta_every=7", "objective.eta_factor=2.0"],
    ],
)
def test_scheduled_eta_is_the_step_the_state_takes(items):
    cfg = ExperimentConfig.preset("cpu").override(items)
    walked = _walk(cfg).groupby("epoch")["eta"].first().to_numpy()
    np.testing.assert_allclose(scheduled_eta(cfg), walked, rtol=1e-12)


def test_scheduled_eta_by_hand():
    cfg = ExperimentConfig.preset("cpu").override(["train.epochs=14"])
    eta = scheduled_eta(cfg)
    scale = 300 / 14  # schedule epochs [0, 21.4) in the first training epoch
    assert eta[0] == pytest.approx(scale * 0.015)
    assert eta[4] == pytest.approx(scale * 0.0225)  # covers schedule epoch 100
    assert eta[13] == pytest.approx(scale * 0.03375)
    paper = ExperimentConfig.preset("cpu").override(["train.epochs=3", "objective.eta_epochs=0"])
    assert scheduled_eta(paper) == pytest.approx([0.015] * 3)
    warm = paper.override(["objective.warmup_epochs=1"])
    assert scheduled_eta(warm) == pytest.approx([0.0, 0.01, 0.01])  # the epoch-0 step-up skipped


def test_replay_beta_reproduces_the_state_and_catches_a_changed_row():
    cfg = ExperimentConfig.preset("cpu").override(["train.epochs=6"])
    history = _walk(cfg)
    replayed = replay_beta(history)
    assert len(replayed) == len(history)
    np.testing.assert_allclose(replayed["replayed"], replayed["beta"], atol=1e-6)
    norms = replayed.groupby("epoch")["replayed"].apply(lambda b: float((b**2).sum() ** 0.5))
    np.testing.assert_allclose(norms, 2.0, atol=1e-6)
    tampered = history.copy()
    tampered.loc[
        (tampered["epoch"] == 2) & (tampered["modality"] == "t1"), "relative_preference"
    ] += 0.5
    off = replay_beta(tampered)
    assert (off["replayed"] - off["beta"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="eta"):
        replay_beta(history.drop(columns="eta"))


def test_replay_beta_lagging_modality_grows_most():
    cfg = ExperimentConfig.preset("cpu").override(["train.epochs=1"])
    history = _walk(cfg, distances=np.array([[0.1, 0.1, 0.1, 0.3]]))  # t2 lags
    last = replay_beta(history).set_index("modality")["replayed"]
    assert last.idxmax() == "t2" and last["t2"] > 1.0 > last["flair"]


def _cube(lo: int, hi: int, size: int = 16) -> np.ndarray:
    mask = np.zeros((size,) * 3, bool)
    mask[lo:hi, lo:hi, lo:hi] = True
    return mask


def test_border_distances_of_nested_cubes_by_hand():
    target, pred = _cube(2, 12), _cube(4, 10)  # pred 2 voxels inside target on every face
    to_target, to_pred = border_distances(pred, target)
    assert to_target.min() == pytest.approx(2.0) and to_pred.min() == pytest.approx(2.0)
    assert len(to_target) == 6**3 - 4**3 and len(to_pred) == 10**3 - 8**3  # border voxels
    to_target_mm, _ = border_distances(pred, target, spacing=(2.0, 2.0, 2.0))
    np.testing.assert_allclose(to_target_mm, 2 * to_target)
    pooled = np.percentile(np.concatenate([to_target, to_pred]), 95)
    directed = max(np.percentile(to_target, 95), np.percentile(to_pred, 95))
    assert hd95(pred, target, convention="official") == pytest.approx(pooled)
    assert hd95(pred, target, convention="monai") == pytest.approx(directed)
    assert directed > pooled  # the target's corners are far from the small cube
    with pytest.raises(ValueError, match="non-empty"):
        border_distances(np.zeros_like(pred), target)


def test_plot_hd95_conventions_marks_each_value(tmp_path):
    target, pred = _cube(2, 12), _cube(3, 12)
    fig = plot_hd95_conventions(pred, target, title="cubes", path=tmp_path / "hd95.png")
    marked = [line.get_xdata()[0] for line in fig.axes[0].get_lines()]
    expected = [hd95(pred, target, convention=c) for c in ("official", "monai")]
    assert marked == pytest.approx(expected)
    assert (tmp_path / "hd95.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_learning_curve_draws_each_recorded_term(tmp_path):
    epochs = np.arange(4)
    terms = {"loss": 3 - 0.2 * epochs, "fuse": 1 - 0.1 * epochs, "deep": 0.8 - 0.1 * epochs}
    pd.DataFrame({"epoch": epochs, "lr": 0.02 - 0.004 * epochs} | terms).to_csv(
        tmp_path / "history_epoch.csv", index=False
    )
    fig = plot_learning_curve(tmp_path)
    left, right = fig.axes[:2]
    assert len(left.get_lines()) == 3 and len(fig.axes) == 2  # no eta recorded: no twin axis
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), terms["loss"])
    rows = [{"epoch": e, "modality": m, "eta": 0.3 + 0.1 * e} for e in epochs for m in NAMES]
    pd.DataFrame(rows).to_csv(tmp_path / "history_modality.csv", index=False)
    fig = plot_learning_curve(tmp_path, path=tmp_path / "curve.png")
    assert len(fig.axes) == 3
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), 0.3 + 0.1 * epochs)
    assert (tmp_path / "curve.png").exists()
    # OGM-GE and PMR record a coefficient but no beta, so no eta: no twin axis either
    rows = [{"epoch": e, "modality": m, "coefficient": 1.0} for e in epochs for m in NAMES]
    pd.DataFrame(rows).to_csv(tmp_path / "history_modality.csv", index=False)
    assert len(plot_learning_curve(tmp_path).axes) == 2
