"""Evaluation: metrics by hand and against MONAI, encoder reuse, tables, NIfTI export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import passion_kit as pk
from passion_kit.data.modalities import BRATS
from passion_kit.engine.evaluate import (
    MultiMaskPredictor,
    case_metrics,
    dice,
    evaluate_run,
    hd95,
    save_prediction_nifti,
    summarize,
)
from passion_kit.engine.train import fit
from tests.conftest import tiny_config
from tests.models.test_backbone_contract import SMALL  # CPU-sized settings per backbone


def test_dice_by_hand_and_against_monai():
    from monai.metrics import compute_dice

    pred = np.zeros((6, 6, 6), bool)
    target = np.zeros((6, 6, 6), bool)
    pred[1:4, 1:4, 1:4] = True  # 27 voxels
    target[2:5, 1:4, 1:4] = True  # 27 voxels, 18 shared
    assert dice(pred, target) == pytest.approx(36 / 54)
    monai = compute_dice(
        torch.from_numpy(pred[None, None].astype(float)),
        torch.from_numpy(target[None, None].astype(float)),
    )
    assert dice(pred, target) == pytest.approx(float(monai), rel=1e-6)
    empty = np.zeros_like(pred)
    assert dice(empty, empty) == 1.0  # both empty
    assert dice(pred, empty) == pytest.approx(0.0, abs=1e-9)


def test_hd95_by_hand_and_empty_set_conventions():
    pred = np.zeros((8, 8, 8), bool)
    target = np.zeros((8, 8, 8), bool)
    pred[1, 1, 1] = True
    target[4, 1, 1] = True
    assert hd95(pred, target) == pytest.approx(3.0)
    assert hd95(pred, target, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    empty = np.zeros_like(pred)
    assert hd95(empty, empty) == 0.0
    assert hd95(pred, empty) == 1.0 and hd95(empty, target) == 1.0  # official
    assert hd95(pred, empty, convention="brats") == 373.13
    assert hd95(empty, target, convention="monai") == 373.13
    with pytest.raises(ValueError, match="hd95 convention"):
        hd95(pred, target, convention="nan")


@pytest.mark.parametrize("spacing", [None, (1.0, 1.5, 2.0)])
def test_hd95_equals_monai_on_random_shapes(spacing):
    from monai.metrics import compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(3):
        a, b = (ndimage.gaussian_filter(rng.random((30, 30, 30)), 3) > 0.52 for _ in range(2))
        expected = compute_hausdorff_distance(
            torch.from_numpy(a[None, None].astype(np.float32)),
            torch.from_numpy(b[None, None].astype(np.float32)),
            include_background=True,
            percentile=95,
            spacing=list(spacing) if spacing else None,
        )
        assert hd95(a, b, spacing=spacing, convention="monai") == pytest.approx(
            float(expected), rel=1e-4
        )


def _pooled_hd95_by_brute_force(a, b, spacing):
    """medpy's definition written out: border voxels (a 6-neighbour outside the set or the
    volume), every border-to-border distance, the 95th percentile of both directions."""
    from scipy.spatial.distance import cdist

    def border(x):
        padded = np.pad(x, 1)
        inner = np.ones_like(x)
        for axis in range(3):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(x & ~inner) * np.asarray(spacing)

    pa, pb = border(a), border(b)
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate((d.min(1), d.min(0))), 95))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 2.0), (0.7, 3.0, 1.2)])
def test_official_hd95_pools_both_directions_as_medpy(spacing):
    from scipy import ndimage

    rng = np.random.default_rng(1)
    differs = 0
    for trial in range(6):
        a, b = (ndimage.gaussian_filter(rng.random((20, 22, 18)), 2.5) > 0.51 for _ in range(2))
        if trial % 2:  # shapes that touch the volume's faces
            a[0, :, 3:9] = True
            b[:, -1, :5] = True
        expected = _pooled_hd95_by_brute_force(a, b, spacing)
        for convention in ("official", "brats"):
            assert hd95(a, b, spacing=spacing, convention=convention) == pytest.approx(
                expected, abs=1e-6
            )
        differs += abs(hd95(a, b, spacing=spacing, convention="monai") - expected) > 1e-6
    assert differs  # the two definitions are not the same number


def test_pooled_and_directed_hd95_by_hand():
    # a: one voxel; b: a row of 20 voxels starting under it. d(a -> b) = 1 (one distance),
    # d(b -> a) = sqrt(1 + k^2) for k = 0..19: pooled P95 of 21 values vs directed max P95.
    a = np.zeros((3, 30, 3), bool)
    b = np.zeros_like(a)
    a[0, 0, 1] = True
    b[1, 0:20, 1] = True
    back = np.sqrt(1 + np.arange(20.0) ** 2)
    assert hd95(a, b) == pytest.approx(np.percentile(np.append(back, 1.0), 95))
    assert hd95(a, b, convention="monai") == pytest.approx(np.percentile(back, 95))


def test_regions_and_etpro():
    regions = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    target = np.zeros((10, 10, 10), np.int64)
    target[2:8, 2:8, 2:8] = 2
    target[4:6, 4:6, 4:6] = 3
    pred = target.copy()
    small = case_metrics(pred, target, regions)
    assert small["dice_WT"] == pytest.approx(1.0) and small["dice_ET"] == pytest.approx(1.0)
    assert small["dice_ETPro"] == pytest.approx(0.0, abs=1e-8)  # 8 predicted ET voxels < 500
    assert small["hd95_ETPro"] == 1.0
    assert case_metrics(pred, target, regions, etpro_threshold=8)["dice_ETPro"] == pytest.approx(
        1.0
    )
    no_et = np.where(target == 3, 2, target)
    assert case_metrics(no_et, no_et, regions)["dice_ETPro"] == 1.0  # both empty


@pytest.mark.parametrize("name", pk.available_backbones())
def test_encoder_reuse_equals_one_network_per_mask(name):
    """Every one of the 15 masks, every backbone: the kit's evaluation path (encoders once,
    masks batched and chunked) against the plain one (zeroed inputs, one network per mask)."""
    torch.manual_seed(0)
    net = pk.build_backbone(name, **SMALL[name]).eval()
    size = SMALL[name]["patch_size"]
    window = torch.randn(2, 4, size, size, size)
    masks = BRATS.mask_tensor()
    fast = MultiMaskPredictor(net, masks, chunk=4)(window).view(2, 15, 4, size, size, size)
    with torch.no_grad():
        for i, mask in enumerate(masks):
            zeroed = window * mask[None, :, None, None, None]  # IDT: absent channels are zeros
            slow = torch.softmax(net(zeroed, mask.expand(2, -1)), 1)
            torch.testing.assert_close(fast[:, i], slow, rtol=1e-4, atol=1e-5)


def test_the_cpu_row_budget_splits_the_masks_over_calls_with_the_same_output():
    torch.manual_seed(0)
    net = pk.build_backbone("rfnet", patch_size=16).eval()
    window = torch.randn(2, 4, 16, 16, 16)
    masks = BRATS.mask_tensor()
    whole = MultiMaskPredictor(net, masks)
    whole.CPU_ROW_VOXELS = 2**30
    split = MultiMaskPredictor(net, masks)
    split.CPU_ROW_VOXELS = 2 * 4 * 16**3  # 4 masks of this 2-window batch per call
    rows = []
    fuse = net.fuse
    net.fuse = lambda feats, mask: rows.append(mask.shape[0]) or fuse(feats, mask)
    expected, got = whole(window), split(window)
    assert rows == [30, 8, 8, 8, 6]  # all 15 at once, then 4 + 4 + 4 + 3
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def trained_run(phantom_root, tmp_path_factory):
    return fit(tiny_config(phantom_root, tmp_path_factory.mktemp("runs"), "train.epochs=1"))


def test_evaluate_run_writes_one_row_per_case_and_combination(trained_run):
    paths = evaluate_run(trained_run, device="cpu", progress=False)
    per_case = pd.read_csv(paths["per_case"])
    assert len(per_case) == 3 * 15  # 3 test cases x 15 combinations
    assert sorted(per_case["mask_id"].unique()) == list(range(15))
    assert set(per_case["combination"]) == set(BRATS.names())
    for col in ("dice_WT", "dice_TC", "dice_ET", "dice_ETPro"):
        assert per_case[col].between(0, 1).all()
    summary = pd.read_csv(paths["summary"])
    assert len(summary) == 16 and summary["combination"].iloc[-1] == "mean"
    assert summary["dice_WT"].iloc[-1] == pytest.approx(per_case["dice_WT"].mean())
    assert "| mean |" in paths["markdown"].read_text()


def test_summarize_means_per_combination():
    per_case = pd.DataFrame(
        {
            "case_id": ["a", "b", "a", "b"],
            "mask_id": [0, 0, 1, 1],
            "combination": ["x", "x", "y", "y"],
            "dice_WT": [0.2, 0.4, 1.0, 0.0],
        }
    )
    table = summarize(per_case)
    assert table["dice_WT"].tolist() == pytest.approx([0.3, 0.5, 0.4])


def test_prediction_back_in_the_original_nifti_space(trained_run, tmp_path):
    import nibabel as nib

    from passion_kit.data.brats import prepare_brats2020
    from tests.data.data_helpers import brats_arrays, save_nifti

    raw = tmp_path / "raw" / "BraTS20_Training_007"
    affine = np.array([[1.5, 0, 0, -10], [0, 1, 0, 4], [0, 0, 2, 7], [0, 0, 0, 1]])
    images, label = brats_arrays(7)
    for suffix, image in images.items():
        save_nifti(raw / f"BraTS20_Training_007_{suffix}.nii.gz", image, affine)
    save_nifti(raw / "BraTS20_Training_007_seg.nii.gz", label, affine)
    prepared = tmp_path / "brats"
    (case_id,) = prepare_brats2020(prepared, raw_root=raw.parent, progress=False)
    out = save_prediction_nifti(
        trained_run,
        case_id,
        tmp_path / "pred.nii.gz",
        modalities=["flair", "t2"],
        data_root=prepared,
        device="cpu",
    )
    pred = nib.load(str(out))
    assert pred.shape == label.shape
    assert np.allclose(pred.affine, affine)
    assert set(np.unique(np.asanyarray(pred.dataobj))) <= {0, 1, 2, 4}  # BraTS label values
    with pytest.raises(ValueError, match="unknown modality"):
        save_prediction_nifti(
            trained_run,
            case_id,
            tmp_path / "x.nii.gz",
            modalities=["pd"],
            data_root=prepared,
            device="cpu",
        )
