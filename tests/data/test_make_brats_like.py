from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from data_helpers import load_script

SIZE = "48,48,31"
SHAPE = (48, 48, 31)


@pytest.fixture(scope="module")
def make():
    return load_script("make_brats_like")


def _load(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def test_brats2020_layout_files_dtypes_labels_and_affine(make, tmp_path, capsys):
    out = tmp_path / "raw"
    assert make.main(["--cases", "2", "--out", str(out), "--size", SIZE, "--seed", "3"]) == 0
    assert (
        "wrote 2 synthetic case(s) of 48x48x31 in the brats2020 layout" in capsys.readouterr().out
    )
    assert sorted(p.name for p in out.iterdir()) == ["BraTS20_Training_001", "BraTS20_Training_002"]
    folder = out / "BraTS20_Training_001"
    assert sorted(p.name for p in folder.iterdir()) == [
        f"BraTS20_Training_001_{s}.nii.gz" for s in ("flair", "seg", "t1", "t1ce", "t2")
    ]
    images = {}
    for suffix in ("flair", "t1ce", "t1", "t2"):
        data, img = _load(folder / f"BraTS20_Training_001_{suffix}.nii.gz")
        assert data.dtype == np.int16 and data.shape == SHAPE
        assert np.array_equal(img.affine, make.brats_affine(SHAPE))
        images[suffix] = data
    brain = images["flair"] > 0
    assert 0.05 < brain.mean() < 0.5
    for data in images.values():  # one brain mask, background exactly 0, >= 1 inside
        assert np.array_equal(data > 0, brain) and data.min() == 0
    seg, img = _load(folder / "BraTS20_Training_001_seg.nii.gz")
    assert seg.shape == SHAPE and set(np.unique(seg)) == {0, 1, 2, 4}
    assert not seg[~brain].any()
    assert np.array_equal(make.brats_affine(), np.array(
        [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], float
    ))  # fmt: skip


def test_brats2023_layout_holds_the_same_voxels_with_its_names_and_labels(make, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make.make_brats_like(a, cases=2, size=SHAPE, seed=1)
    make.make_brats_like(b, cases=2, size=SHAPE, seed=1, layout="brats2023")
    assert sorted(p.name for p in b.iterdir()) == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    new, old = b / "BraTS-GLI-00001-000", a / "BraTS20_Training_002"
    pairs = {"t2f": "flair", "t1c": "t1ce", "t1n": "t1", "t2w": "t2"}
    for new_suffix, old_suffix in pairs.items():
        data, _ = _load(new / f"BraTS-GLI-00001-000-{new_suffix}.nii.gz")
        assert np.array_equal(data, _load(old / f"BraTS20_Training_002_{old_suffix}.nii.gz")[0])
    seg23, _ = _load(new / "BraTS-GLI-00001-000-seg.nii.gz")
    seg20, _ = _load(old / "BraTS20_Training_002_seg.nii.gz")
    assert set(np.unique(seg23)) == {0, 1, 2, 3}
    assert np.array_equal(np.where(seg20 == 4, 3, seg20), seg23)


def test_cases_are_deterministic_and_differ_between_cases(make):
    image, label = make.brats_like_case(5, size=SHAPE, seed=2)
    again, label_again = make.brats_like_case(5, size=SHAPE, seed=2)
    other, _ = make.brats_like_case(6, size=SHAPE, seed=2)
    assert np.array_equal(image, again) and np.array_equal(label, label_again)
    assert not np.array_equal(image, other)
    assert image.dtype == np.int16 and label.dtype == np.uint8


def test_a_non_empty_out_and_bad_arguments_are_refused_in_one_line(make, tmp_path, capsys):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert make.main(["--cases", "1", "--out", str(out), "--size", SIZE]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not an empty folder" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert make.main(["--cases", "1", "--out", str(tmp_path / "n"), "--size", "48,48"]) == 1
    assert "--size must be three integers >= 16" in capsys.readouterr().err
    assert make.main(["--cases", "0", "--out", str(tmp_path / "n")]) == 1
    assert "--cases must be >= 1" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine
    assert make.main(["--cases", "1", "--out", str(empty), "--size", SIZE]) == 0
    assert [p.name for p in empty.iterdir()] == ["BraTS20_Training_001"]


@pytest.mark.slow
def test_a_full_size_case_has_the_brats_grid_and_a_brain_sized_brain(make):
    image, label = make.brats_like_case(1)
    assert image.shape == (4, 240, 240, 155) and label.shape == (240, 240, 155)
    brain = image[0] > 0
    extent = [int(np.ptp(np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != k)))[0]))
              for k in range(3)]  # fmt: skip
    assert all(100 < e < 200 for e in extent) and extent[2] < 155, extent
    assert 0.05 < np.isin(label, (1, 2, 3)).sum() / brain.sum() < 0.5
