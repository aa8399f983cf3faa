from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from data_helpers import (
    BRATS_SHAPE,
    brats_arrays,
    load_script,
    save_nifti,
    tree_state,
    write_brats_case,
)

from passion_kit.data.brats import (
    BRATS2023,
    brats2020_case_id,
    find_brats_cases,
    prepare_brats2020,
)
from passion_kit.data.description import BRATS2020, load_description
from passion_kit.data.prepared import PreparationError, list_cases, read_case
from passion_kit.data.preprocess import uncrop, zscore
from passion_kit.data.splits import read_split


def test_case_ids_follow_the_rfnet_naming():
    assert brats2020_case_id("BraTS20_Training_001") == "HG_BraTS20_Training_001"
    assert brats2020_case_id("BraTS20_Training_259") == "HG_BraTS20_Training_259"
    assert brats2020_case_id("BraTS20_Training_260") == "LG_BraTS20_Training_260"
    assert brats2020_case_id("BraTS20_Training_335") == "LG_BraTS20_Training_335"
    assert brats2020_case_id("BraTS20_Training_336") == "HG_BraTS20_Training_336"
    assert brats2020_case_id("other_case") == "other_case"


def test_official_layout_end_to_end(make_brats_official, tmp_path):
    raw = make_brats_official((1, 2, 300))
    out = tmp_path / "prepared"
    done = prepare_brats2020(out, raw_root=raw, progress=False)
    assert done == ["HG_BraTS20_Training_001", "HG_BraTS20_Training_002", "LG_BraTS20_Training_300"]
    assert load_description(out) == BRATS2020
    image, label, meta = read_case(out, "HG_BraTS20_Training_001")
    images, raw_label = brats_arrays(1)
    # channel order [FLAIR, T1c, T1, T2]; tiny volumes are widened past their size -> whole
    assert meta["crop"] == {"start": [0, 0, 0], "stop": list(BRATS_SHAPE)}
    stack = np.stack([images[s] for s in ("flair", "t1ce", "t1", "t2")])
    expected, stats = zscore(stack)
    assert np.allclose(image, expected) and np.allclose(
        meta["normalization"]["mean"], stats["mean"]
    )
    assert np.array_equal(label, np.where(raw_label == 4, 3, raw_label))
    assert meta["original_shape"] == list(BRATS_SHAPE) and np.allclose(
        meta["original_affine"], np.eye(4)
    )
    assert meta["source_files"]["t1c"].endswith("BraTS20_Training_001_t1ce.nii.gz")
    assert np.array_equal(uncrop(label, meta), np.where(raw_label == 4, 3, raw_label))
    # official case lists and missing-rate splits are written next to the cases
    assert len((out / "splits" / "train.txt").read_text().split()) == 219
    split = read_split(out / "splits" / "missing_rates" / "mr2468.csv", BRATS2020.modalities)
    assert split.availability_counts() == {"flair": 90, "t1c": 135, "t1": 184, "t2": 43}


def test_kaggle_layout_with_uncompressed_files_and_misnamed_label(tmp_path):
    root = tmp_path / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    write_brats_case(root, 1, ext=".nii")
    write_brats_case(root, 355, ext=".nii", seg_name="W39_1998.09.19_Segm.nii")
    (root / "survival_info.csv").write_text("Brats20ID\n")
    val = tmp_path / "BraTS2020_ValidationData" / "MICCAI_BraTS2020_ValidationData"
    images, _ = brats_arrays(0)
    save_nifti(val / "BraTS20_Validation_001" / "BraTS20_Validation_001_flair.nii", images["flair"])
    sources = find_brats_cases(tmp_path)  # the unlabelled validation set is skipped
    assert [s.case_id for s in sources] == ["HG_BraTS20_Training_001", "HG_BraTS20_Training_355"]
    assert sources[1].files["label"].endswith("W39_1998.09.19_Segm.nii")
    out = tmp_path / "prepared"
    prepare_brats2020(out, raw_root=tmp_path, progress=False)
    _, label, _ = read_case(out, "HG_BraTS20_Training_355")
    assert set(np.unique(label)) == {0, 1, 2, 3}


def _break_missing_modality(folder):
    (folder / f"{folder.name}_t2.nii.gz").unlink()
    return "missing modality file for t2"


def _break_shape(folder):
    save_nifti(folder / f"{folder.name}_t1.nii.gz", np.ones((20, 18, 13), np.float32))
    return r"t1.nii.gz: shape \(20, 18, 13\) differs from .*flair.nii.gz"


def _break_affine(folder):
    images, _ = brats_arrays(0)
    save_nifti(folder / f"{folder.name}_t1ce.nii.gz", images["t1ce"], np.diag([2.0, 1, 1, 1]))
    return "t1ce.nii.gz: affine differs"


def _break_label_values(folder):
    _, label = brats_arrays(0)
    label[0, 0, 0] = 3
    save_nifti(folder / f"{folder.name}_seg.nii.gz", label)
    return r"seg.nii.gz: unexpected label values \[3\]"


def _break_nan(folder):
    images, _ = brats_arrays(0)
    images["flair"][5, 5, 5] = np.nan
    save_nifti(folder / f"{folder.name}_flair.nii.gz", images["flair"])
    return "flair.nii.gz: image contains NaN"


def _break_empty(folder):
    save_nifti(folder / f"{folder.name}_t2.nii.gz", np.zeros(BRATS_SHAPE, np.float32))
    return r"t2.nii.gz: image is empty"


def _break_missing_label(folder):
    (folder / f"{folder.name}_seg.nii.gz").unlink()
    return "missing label file"


def _break_complex(folder):
    images, _ = brats_arrays(0)
    save_nifti(folder / f"{folder.name}_t1.nii.gz", images["t1"].astype(np.complex64) * 1j)
    return r"t1.nii.gz: complex values \(complex64\); a real-valued image expected"


def _break_short_label(folder):
    _, label = brats_arrays(0)
    save_nifti(folder / f"{folder.name}_seg.nii.gz", label[:, :, :-1])
    return r"seg.nii.gz: shape .* differs from"


def _break_huge_header(folder):
    """A header that claims 10000^3 voxels over a small file's bytes."""
    import gzip

    path = folder / f"{folder.name}_t2.nii.gz"
    img = nib.load(str(path))
    header = img.header.copy()
    header.set_data_shape((10000, 10000, 10000))
    data = np.asanyarray(img.dataobj).astype(header.get_data_dtype()).tobytes()
    pad = int(header["vox_offset"]) - len(header.binaryblock)
    with gzip.open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\0" * pad + data)
    return r"t2.nii.gz: its header claims 10000x10000x10000 voxels of \w+ \(\d+ GiB\), more"


@pytest.mark.parametrize(
    "breaker",
    [
        _break_missing_modality,
        _break_shape,
        _break_affine,
        _break_label_values,
        _break_nan,
        _break_empty,
        _break_missing_label,
        _break_complex,
        _break_short_label,
        _break_huge_header,
    ],  # fmt: skip
)
def test_bad_inputs_fail_clearly_and_leave_nothing_half_written(
    make_brats_official, tmp_path, breaker
):
    raw = make_brats_official((1, 2))
    out = tmp_path / "prepared"
    prepare_brats2020(out, raw_root=raw, progress=False)  # case 1 and 2 prepared
    before = tree_state(out / "cases")
    bad = write_brats_case(raw, 7)
    pattern = breaker(bad)
    write_brats_case(raw, 8)
    with pytest.raises(PreparationError, match=pattern) as err:
        prepare_brats2020(out, raw_root=raw, progress=False)
    assert "HG_BraTS20_Training_007" in str(err.value)
    # the good new case is prepared, the bad one left nothing, old cases untouched
    assert list_cases(out) == [
        "HG_BraTS20_Training_001", "HG_BraTS20_Training_002", "HG_BraTS20_Training_008",
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "cases").iterdir()) == list_cases(out)
    after = tree_state(out / "cases")
    assert {k: v for k, v in after.items() if k in before} == before


def test_rerun_is_resumable_and_touches_nothing(make_brats_official, tmp_path):
    raw = make_brats_official((1, 2))
    out = tmp_path / "prepared"
    prepare_brats2020(out, raw_root=raw, progress=False, workers=2)
    before = tree_state(out / "cases")
    assert prepare_brats2020(out, raw_root=raw, progress=False) == []
    assert tree_state(out / "cases") == before


def test_missing_raw_folder_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        find_brats_cases(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no BraTS case folder"):
        find_brats_cases(tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        prepare_brats2020(tmp_path / "o")


def test_rfnet_npy_layout_is_imported(tmp_path):
    src = tmp_path / "BRATS2020_Training_none_npy"
    (src / "vol").mkdir(parents=True)
    (src / "seg").mkdir()
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((10, 9, 8, 4)).astype(np.float32)
    seg = rng.integers(0, 4, (10, 9, 8)).astype(np.uint8)
    np.save(src / "vol" / "HG_BraTS20_Training_001_vol.npy", vol)
    np.save(src / "seg" / "HG_BraTS20_Training_001_seg.npy", seg)
    np.save(src / "vol" / "HG_BraTS20_Training_002_vol.npy", vol[..., :3])  # wrong channels
    out = tmp_path / "prepared"
    with pytest.raises(PreparationError, match=r"002_vol.npy: expected \(H, W, D, 4\)"):
        prepare_brats2020(out, rfnet_root=src, progress=False)
    image, label, meta = read_case(out, "HG_BraTS20_Training_001")
    assert np.array_equal(image, np.moveaxis(vol, -1, 0)) and np.array_equal(label, seg)
    assert meta["crop"] is None and len(meta["normalization"]["background"]) == 4
    seg_bad = seg.copy()
    seg_bad[0, 0, 0] = 4  # RFNet npy labels are already 0..3
    np.save(src / "vol" / "HG_BraTS20_Training_002_vol.npy", vol)
    np.save(src / "seg" / "HG_BraTS20_Training_002_seg.npy", seg_bad)
    with pytest.raises(PreparationError, match=r"unexpected label values \[4\]"):
        prepare_brats2020(out, rfnet_root=src, progress=False)
    assert json.loads((out / "dataset.json").read_text())["name"] == "brats2020"


def test_a_constant_rfnet_volume_is_refused_naming_the_file_and_channel(tmp_path):
    src = tmp_path / "npy"
    (src / "vol").mkdir(parents=True)
    (src / "seg").mkdir()
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 4, (10, 9, 8)).astype(np.uint8)
    np.save(src / "seg" / "HG_BraTS20_Training_001_seg.npy", seg)
    for volume, words in [
        (np.zeros((10, 9, 8, 4), np.float32), "image is empty"),
        (
            np.concatenate([rng.standard_normal((10, 9, 8, 3)), np.full((10, 9, 8, 1), 2.0)], -1),
            None,
        ),
    ]:
        vol = np.asarray(volume, np.float32)
        np.save(src / "vol" / "HG_BraTS20_Training_001_vol.npy", vol)
        match = words or r"001_vol.npy: channel t2 is constant \(2.0\), not an MRI volume"
        with pytest.raises(PreparationError, match=match):
            prepare_brats2020(tmp_path / "out", rfnet_root=src, progress=False)


def test_a_brain_mask_is_not_taken_for_the_missing_label(tmp_path):
    root = tmp_path / "raw"
    folder = write_brats_case(root, 7)
    (folder / f"{folder.name}_seg.nii.gz").rename(folder / f"{folder.name}_brainmask.nii.gz")
    sources = find_brats_cases(root)
    assert sources[0].files["label"] is None
    with pytest.raises(PreparationError, match=r"missing label file"):
        prepare_brats2020(tmp_path / "out", raw_root=root, progress=False)


# --- BraTS 2023 layout, on files of data_scripts/make_brats_like.py ---------------------

SMALL = (48, 48, 31)


@pytest.fixture(scope="module")
def make_brats_like():
    return load_script("make_brats_like").make_brats_like


def test_brats2023_layout_end_to_end(make_brats_like, tmp_path):
    raw = tmp_path / "BraTS2023-GLI-Training"
    make_brats_like(raw, cases=2, layout="brats2023", size=SMALL)
    sources = find_brats_cases(tmp_path)  # auto: found under any parent
    assert [s.case_id for s in sources] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert sources[0].files["t1"].endswith("BraTS-GLI-00000-000-t1n.nii.gz")
    assert sources[0].files["flair"].endswith("BraTS-GLI-00000-000-t2f.nii.gz")
    assert sources[0].files["label"].endswith("BraTS-GLI-00000-000-seg.nii.gz")
    out = tmp_path / "prepared"
    assert prepare_brats2020(out, raw_root=raw, progress=False) == [s.case_id for s in sources]
    assert load_description(out) == BRATS2023
    assert BRATS2023.label_mapping == {0: 0, 1: 1, 2: 2, 3: 3}  # 3 -> enhancing, back to 3
    assert not (out / "splits").exists()  # the RFNet split lists 2020 cases
    image, label, meta = read_case(out, "BraTS-GLI-00001-000")
    assert image.shape == (4, *SMALL) and set(np.unique(label)) == {0, 1, 2, 3}
    assert meta["dataset"] == "brats2023" and meta["original_shape"] == list(SMALL)
    assert prepare_brats2020(out, raw_root=raw, progress=False, layout="brats2023") == []


def test_prepared_2020_and_2023_versions_of_a_case_are_identical(make_brats_like, tmp_path):
    make_brats_like(tmp_path / "r20", cases=2, size=SMALL, seed=4)
    make_brats_like(tmp_path / "r23", cases=2, size=SMALL, seed=4, layout="brats2023")
    prepare_brats2020(tmp_path / "p20", raw_root=tmp_path / "r20", progress=False)
    prepare_brats2020(tmp_path / "p23", raw_root=tmp_path / "r23", progress=False)
    for old, new in [
        ("HG_BraTS20_Training_001", "BraTS-GLI-00000-000"),
        ("HG_BraTS20_Training_002", "BraTS-GLI-00001-000"),
    ]:
        image20, label20, meta20 = read_case(tmp_path / "p20", old)
        image23, label23, meta23 = read_case(tmp_path / "p23", new)
        assert np.array_equal(image20, image23) and np.array_equal(label20, label23)
        assert set(np.unique(label20)) == {0, 1, 2, 3}
        for key in ("crop", "normalization", "original_shape", "original_affine"):
            assert meta20[key] == meta23[key]


def test_layout_detection_refuses_a_mix_and_follows_an_explicit_layout(make_brats_like, tmp_path):
    make_brats_like(tmp_path / "r20", cases=1, size=SMALL)
    make_brats_like(tmp_path / "r23", cases=2, size=SMALL, layout="brats2023")
    with pytest.raises(ValueError, match=r"holds both BraTS 2020 \(BraTS20_Training_001\) and "):
        find_brats_cases(tmp_path)
    assert len(find_brats_cases(tmp_path, layout="brats2020")) == 1
    assert len(find_brats_cases(tmp_path, layout="brats2023")) == 2
    with pytest.raises(ValueError, match="layout must be one of"):
        find_brats_cases(tmp_path, layout="brats2021")
    with pytest.raises(FileNotFoundError, match="BraTS-GLI-00000-000-t2f.nii.gz"):
        find_brats_cases(tmp_path / "r20", layout="brats2023")
    with pytest.raises(ValueError, match="RFNet npy layout holds BraTS2020"):
        prepare_brats2020(tmp_path / "o", rfnet_root=tmp_path, layout="brats2023")


def test_bad_brats2023_cases_fail_naming_the_file(make_brats_like, tmp_path):
    raw = tmp_path / "raw"
    make_brats_like(raw, cases=2, layout="brats2023", size=SMALL)
    (raw / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t1n.nii.gz").unlink()
    seg_path = raw / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz"
    seg = np.asanyarray(nib.load(str(seg_path)).dataobj).copy()
    seg[seg == 3] = 4  # a 2020 label value in a 2023 file
    save_nifti(seg_path, seg, nib.load(str(seg_path)).affine)
    with pytest.raises(PreparationError) as err:
        prepare_brats2020(tmp_path / "out", raw_root=raw, progress=False)
    assert r"missing modality file for t1 (*-t1n.nii or .nii.gz)" in str(err.value)
    assert "BraTS-GLI-00001-000-seg.nii.gz: unexpected label values [4]" in str(err.value)


def test_a_folder_holding_another_dataset_is_refused(make_brats_like, tmp_path):
    make_brats_like(tmp_path / "r20", cases=1, size=SMALL)
    make_brats_like(tmp_path / "r23", cases=1, size=SMALL, layout="brats2023")
    out = tmp_path / "prepared"
    prepare_brats2020(out, raw_root=tmp_path / "r20", progress=False)
    with pytest.raises(ValueError, match=r"dataset.json: holds brats2020, not brats2023"):
        prepare_brats2020(out, raw_root=tmp_path / "r23", progress=False)
    assert list_cases(out) == ["HG_BraTS20_Training_001"]


def test_linked_case_folders_are_followed_once_and_two_files_for_one_image_refused(
    make_brats_like, tmp_path
):
    raw = tmp_path / "raw"
    make_brats_like(raw, cases=2, size=SMALL)
    moved = tmp_path / "elsewhere" / "BraTS20_Training_002"
    moved.parent.mkdir()
    (raw / "BraTS20_Training_002").rename(moved)
    (raw / "BraTS20_Training_002").symlink_to(moved, target_is_directory=True)
    (raw / "BraTS20_Training_001" / "up").symlink_to(raw, target_is_directory=True)  # a loop
    ids = [s.case_id for s in find_brats_cases(raw)]
    assert ids == ["HG_BraTS20_Training_001", "HG_BraTS20_Training_002"]
    folder = raw / "BraTS20_Training_001"
    img = nib.load(str(folder / "BraTS20_Training_001_flair.nii.gz"))
    nib.save(img, str(folder / "BraTS20_Training_001_flair.nii"))
    with pytest.raises(ValueError, match=r"_flair.nii.gz and BraTS20_Training_001_flair.nii: two"):
        find_brats_cases(raw)


def test_a_prepared_label_that_does_not_fit_its_image_is_refused(make_brats_like, tmp_path):
    from passion_kit.data import PreparedDataset

    raw, out = tmp_path / "raw", tmp_path / "prepared"
    make_brats_like(raw, cases=1, size=SMALL)
    prepare_brats2020(out, raw_root=raw, progress=False)
    (case,) = list_cases(out)
    label_path = out / "cases" / case / "label.npy"
    np.save(label_path, np.load(label_path)[:, :, :-1])
    with pytest.raises(ValueError, match=r"image.npy .* and label.npy .* do not fit"):
        read_case(out, case)
    (out / "splits").mkdir(exist_ok=True)
    (out / "splits" / "one.txt").write_text(case + "\n")
    with pytest.raises(ValueError, match=r"do not fit"):
        PreparedDataset(out, "one", setting="pdt")[0]
