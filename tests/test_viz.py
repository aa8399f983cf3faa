"""Figures: what each plot draws (read back from the axes), files written, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from passion_kit.data import load_split
from passion_kit.data.modalities import BRATS
from passion_kit.engine.evaluate import evaluate_run
from passion_kit.lessons import viz
from tests.test_widgets import smoke_run

PNG = b"\x89PNG\r\n\x1a\n"
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
NAMES = BRATS.modalities


def _history(beta_moves: bool) -> pd.DataFrame:
    rows = []
    for epoch in range(3):
        for i, m in enumerate(NAMES):
            beta = 1.0 + (0.1 * epoch * (i - 1.5) if beta_moves else 0.0)
            rows.append(
                {"epoch": epoch, "modality": m, "distance": 0.1 * i + 0.01 * epoch}
                | {"relative_preference": 0.05 * (i - 1.5), "beta": beta, "gate_rate": 0.25 * i}
            )
    return pd.DataFrame(rows)


def _summary(offset: float) -> pd.DataFrame:
    table = pd.DataFrame({"mask_id": range(15), "combination": BRATS.names()})
    for j, region in enumerate(("WT", "TC", "ET")):
        table[f"dice_{region}"] = np.linspace(0.3, 0.9, 15) - 0.1 * j + offset
        table[f"hd95_{region}"] = 5.0
    mean = {"mask_id": "", "combination": "mean"} | table.filter(like="_").mean().to_dict()
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


def test_plane_slice_and_tumour_centre():
    volume = np.zeros((2, 4, 5, 6))
    volume[:, 1, 2, 3] = 7
    assert viz.plane_slice(volume, "axial", 3).shape == (2, 4, 5)
    assert viz.plane_slice(volume, "coronal", 2)[0, 1, 3] == 7
    assert viz.plane_slice(volume, "sagittal", 1)[1, 2, 3] == 7
    with pytest.raises(ValueError, match="plane must be"):
        viz.plane_slice(volume, "oblique", 0)
    with pytest.raises(ValueError, match=r"index must be in \[0, 5\]"):
        viz.plane_slice(volume, "axial", 6)
    label = np.zeros((8, 8, 8), int)
    label[5, 1:3, 6] = 2
    assert viz.tumour_centre(label) == (5, 1, 6)
    assert viz.tumour_centre(np.zeros((8, 6, 4))) == (4, 3, 2)


def test_case_view_colours_each_voxel_by_its_innermost_region(tmp_path):
    image = np.random.default_rng(0).normal(size=(4, 12, 12, 12))
    label = np.zeros((12, 12, 12), int)
    label[2:10, 2:10, 2:10] = 2  # edema: WT only
    label[4:8, 4:8, 4:8] = 1  # necrosis: WT and TC
    label[5, 5, 5:7] = 3  # enhancing: WT, TC and ET
    path = tmp_path / "figures" / "case.png"
    fig = viz.plot_case(
        image,
        label,
        np.zeros_like(label),
        modalities=NAMES,
        regions=REGIONS,
        available=[False, True, True, True],
        centre=(5, 5, 5),
        path=path,
    )
    assert path.read_bytes()[:8] == PNG
    assert len(fig.axes) == 3 * 6  # 3 planes x (4 modalities, ground truth, prediction)
    titles = [ax.get_title() for ax in fig.axes[:6]]
    assert titles == ["flair\n(missing)", "t1c", "t1", "t2", "ground truth", "prediction"]
    truth = fig.axes[4].get_images()[-1].get_array()  # the axial overlay
    expected = viz.plane_slice(label, "axial", 5).T
    for cls, region in ((2, "WT"), (1, "TC"), (3, "ET")):
        pixels = truth[expected == cls]
        assert len(pixels) and np.allclose(pixels, to_rgba(viz.REGION_COLORS[region], 0.45))
    assert not truth[expected == 0][:, 3].any()  # background stays transparent
    assert fig.axes[5].get_images()[-1].get_array()[:, :, 3].max() == 0  # empty prediction
    legend = {t.get_text(): h.get_facecolor() for t, h in zip(
        fig.legends[0].get_texts(), fig.legends[0].legend_handles, strict=True
    )}  # fmt: skip
    assert legend.keys() == REGIONS.keys()
    for region, colour in legend.items():
        assert colour[:3] == pytest.approx(to_rgba(viz.REGION_COLORS[region])[:3])
    only_et = viz.plot_case(
        image, label, modalities=NAMES, regions=REGIONS, centre=(5, 5, 5), show_regions=["ET"]
    )
    shown = only_et.axes[4].get_images()[-1].get_array()
    assert shown[:, :, 3].astype(bool).sum() == (expected == 3).sum()


def test_case_view_rejects_mismatched_input():
    image = np.zeros((4, 6, 6, 6))
    with pytest.raises(ValueError, match="image must be"):
        viz.plot_case(image[:3], modalities=NAMES, regions=REGIONS)
    with pytest.raises(ValueError, match="label must have shape"):
        viz.plot_case(image, np.zeros((6, 6, 5)), modalities=NAMES, regions=REGIONS)
    with pytest.raises(ValueError, match="available must be"):
        viz.plot_case(image, modalities=NAMES, regions=REGIONS, available=[False] * 4)
    with pytest.raises(ValueError, match="planes must be"):
        viz.plot_case(image, modalities=NAMES, regions=REGIONS, planes=["front"])


def test_preference_dynamics_side_by_side(tmp_path):
    baseline, passion = _history(False), _history(True)
    path = tmp_path / "preference.png"
    fig = viz.plot_preference({"baseline": baseline, "PASSION": passion}, path=path)
    assert path.read_bytes()[:8] == PNG
    axes = np.array(fig.axes[:8]).reshape(4, 2)
    assert [ax.get_title() for ax in axes[0]] == ["baseline", "PASSION"]
    beta_lines = axes[2, 1].get_lines()  # PASSION's beta, one line per modality
    assert [line.get_label() for line in beta_lines] == list(NAMES)
    for line, name in zip(beta_lines, NAMES, strict=True):
        expected = passion[passion["modality"] == name]["beta"].to_numpy()
        assert np.allclose(line.get_ydata(), expected)
        assert line.get_color() == viz.modality_colors(NAMES)[name]
    assert all(np.allclose(line.get_ydata(), 1.0) for line in axes[2, 0].get_lines())
    fig.canvas.draw()  # epochs are whole numbers: no tick at 0.5
    ticks = axes[-1, 0].get_xticks()
    assert len(ticks) > 1 and np.allclose(ticks, np.round(ticks))
    run = tmp_path / "run_a"
    run.mkdir()
    passion.to_csv(run / "history_modality.csv", index=False)
    one = viz.plot_preference(run, metrics=["beta"])
    assert one.axes[0].get_title() == "run_a" and len(one.axes[0].get_lines()) == 4
    with pytest.raises(ValueError, match=r"has the column\(s\) \['eta'\]"):
        viz.plot_preference(baseline, metrics=["eta"])
    with pytest.raises(FileNotFoundError, match="history_modality.csv"):
        viz.plot_preference(tmp_path / "nowhere")


def test_balancing_runs_share_the_figure_through_their_coefficient():
    passion = _history(True)
    ogm = passion[["epoch", "modality"]].assign(coefficient=np.linspace(0.5, 1.0, len(passion)))
    fig = viz.plot_preference({"PASSION": passion, "OGM-GE": ogm})
    axes = np.array(fig.axes[:8]).reshape(4, 2)
    assert axes[2, 0].get_ylabel() == "beta / coefficient"
    lines = axes[2, 1].get_lines()
    assert np.allclose(
        np.sort(np.concatenate([line.get_ydata() for line in lines])),
        np.sort(ogm["coefficient"].to_numpy()),
    )
    assert not axes[0, 1].get_lines() and axes[0, 1].texts[0].get_text() == "not recorded"
    alone = viz.plot_preference({"OGM-GE": ogm})  # default rows: only what was recorded
    assert len(alone.axes) == 1 and alone.axes[0].get_ylabel() == "coefficient"
    with pytest.raises(ValueError, match="has any of"):
        viz.plot_preference({"x": passion[["epoch", "modality"]]})


def test_dice_heatmap_of_two_runs_and_their_difference(tmp_path):
    a, b = _summary(0.0), _summary(0.05)
    path = tmp_path / "dice.png"
    fig = viz.plot_dice_heatmap({"baseline": a, "PASSION": b}, path=path)
    assert path.read_bytes()[:8] == PNG
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["baseline", "PASSION", "PASSION - baseline"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == BRATS.names() + ["mean"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["WT", "TC", "ET"]
    assert {t.get_text() for t in panels[2].texts} == {"+0.05"}  # B - A everywhere
    first = panels[0].texts[0].get_text()
    assert first == f"{a['dice_WT'][0]:.2f}"
    for tick in panels[1].get_xticklabels():
        assert tick.get_color() == viz.REGION_COLORS[tick.get_text()]
    single = viz.plot_dice_heatmap(a, regions=["ET"])
    assert len([ax for ax in single.axes if ax.get_title()]) == 1
    with pytest.raises(ValueError, match="one or two runs"):
        viz.plot_dice_heatmap([a, b, a])
    with pytest.raises(ValueError, match="different modality combinations"):
        viz.plot_dice_heatmap([a, b.iloc[::-1]])
    with pytest.raises(ValueError, match=r"region\(s\) \['XX'\]"):
        viz.plot_dice_heatmap(a, regions=["XX"])


def test_availability_of_a_split(phantom_root, tmp_path):
    split = load_split(phantom_root, "mr2468")
    fig = viz.plot_availability(split, path=tmp_path / "availability.png")
    assert (tmp_path / "availability.png").read_bytes()[:8] == PNG
    counts, sizes = fig.axes[0], fig.axes[1]
    assert [p.get_height() for p in counts.patches] == list(split.availability_counts().values())
    per_case = np.array(split.masks).sum(1)
    assert [p.get_height() for p in sizes.patches] == [(per_case == k).sum() for k in (1, 2, 3, 4)]
    assert sum(p.get_height() for p in sizes.patches) == len(split)
    rates = {t.get_text() for t in counts.texts}
    assert rates == {f"{r:.0%} missing" for r in split.missing_rates().values()}
    with pytest.raises(ValueError, match="MissingRateSplit"):
        viz.plot_availability("mr2468")


def test_save_run_figures_writes_every_figure_of_a_run(tmp_path_factory):
    run = smoke_run(tmp_path_factory)
    evaluate_run(run, device="cpu", max_cases=1, progress=False)
    written = viz.save_run_figures(run)
    case = [k for k in written if k.startswith("case_")]
    assert set(written) == {"preference", "dice_test", "availability", *case} and len(case) == 1
    for path in written.values():
        assert path.parent == run / "figures" and path.read_bytes()[:8] == PNG
    assert sorted(p.name for p in (run / "figures").iterdir()) == sorted(
        p.name for p in written.values()
    )  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        viz.save_run_figures(run.parent)
