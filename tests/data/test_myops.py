from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import save_nifti, tree_state

from passion_kit.data.description import MYOPS2020, load_description
from passion_kit.data.myops import find_myops_cases, prepare_myops2020
from passion_kit.data.prepared import PreparationError, list_cases, read_case, read_case_ids
from passion_kit.data.splits import patient_of, read_split

SHAPE = (262, 259, 3)  # in-plane just above the 256 crop, 3 short-axis slices
AFFINE = np.diag([0.73, 0.73, 14.0, 1.0])


def _arrays(seed: int):
    rng = np.random.default_rng(seed)
    images = {
        s: rng.uniform(1, 100, SHAPE).astype(np.float32) * (i + 1)
        for i, s in enumerate(("C0", "DE", "T2"))
    }
    gd = np.zeros(SHAPE, dtype=np.int16)
    c = (SHAPE[0] // 2, SHAPE[1] // 2)
    gd[c[0] - 20 : c[0] + 20, c[1] - 20 : c[1] + 20] = 200  # myocardium
    gd[c[0] - 10 : c[0] + 10, c[1] - 10 : c[1] + 10] = 500  # LV blood pool
    gd[c[0] - 20 : c[0] - 15, c[1] + 25 : c[1] + 35] = 600  # RV blood pool
    gd[c[0] + 15 : c[0] + 18, c[1] - 5 : c[1]] = 1220  # edema
    gd[c[0] + 18 : c[0] + 20, c[1] - 5 : c[1]] = 2221  # scar
    return images, gd


def _write_official(root: Path, patients=(101, 102)) -> Path:
    """The official release: train25/ and train25_myops_gd/."""
    for p in patients:
        images, gd = _arrays(p)
        for s, img in images.items():
            save_nifti(root / "train25" / f"myops_training_{p}_{s}.nii.gz", img, AFFINE)
        save_nifti(root / "train25_myops_gd" / f"myops_training_{p}_gd.nii.gz", gd, AFFINE)
    save_nifti(root / "test20" / "myops_test_201_C0.nii.gz", images["C0"], AFFINE)  # ignored
    return root


def test_official_layout_end_to_end(tmp_path):
    raw = _write_official(tmp_path / "raw")
    out = tmp_path / "prepared"
    done = prepare_myops2020(out, raw_root=raw, progress=False)
    assert done == [f"myops_training_{p}_slice_{z}" for p in (101, 102) for z in range(3)]
    assert load_description(out) == MYOPS2020
    image, label, meta = read_case(out, "myops_training_101_slice_1")
    assert image.shape == (3, 256, 256, 1) and label.shape == (256, 256, 1)
    x0, y0 = (SHAPE[0] - 256) // 2, (SHAPE[1] - 256) // 2
    assert meta["crop"] == {"start": [x0, y0, 1], "stop": [x0 + 256, y0 + 256, 2]}
    assert np.allclose(meta["spacing"], [0.73, 0.73, 14.0])
    images, gd = _arrays(101)
    # z-scored over the whole 3D patient stack, channel order [C0, DE, T2]
    for c, s in enumerate(("C0", "DE", "T2")):
        vol = images[s]
        expected = (vol[x0 : x0 + 256, y0 : y0 + 256, 1:2] - vol.mean()) / vol.std()
        assert np.allclose(image[c], expected, atol=1e-4)
    table = {0: 0, 200: 1, 500: 2, 600: 3, 1220: 4, 2221: 5}
    expected_label = np.vectorize(table.get)(gd[x0 : x0 + 256, y0 : y0 + 256, 1:2])
    assert np.array_equal(label, expected_label)
    assert set(np.unique(label)) == set(range(6))
    # the authors' lists and six splits, slices of a patient sharing one row
    assert len(read_case_ids(out / "splits" / "train.txt")) == 80
    assert len(read_case_ids(out / "splits" / "test.txt")) == 22
    assert read_case_ids(out / "splits" / "val.txt") == []
    for digits in ("357", "375", "537", "573", "735", "753"):
        s = read_split(out / "splits" / "missing_rates" / f"mr{digits}.csv", MYOPS2020.modalities)
        rows = {}
        for cid, mask in zip(s.case_ids, s.masks, strict=True):
            rows.setdefault(patient_of(cid), set()).add(mask)
        assert len(rows) == 20 and all(len(v) == 1 for v in rows.values())


def test_per_case_folder_layout_and_resume(tmp_path):
    raw = tmp_path / "MyoPS2020_Training_Data"
    images, gd = _arrays(103)
    folder = raw / "myops_training_103"
    for s, img in images.items():
        save_nifti(folder / f"myops_training_103_{s}.nii.gz", img, AFFINE)
    save_nifti(folder / "myops_training_103_gd.nii.gz", gd, AFFINE)
    assert [s.case_id for s in find_myops_cases(raw)] == [
        f"myops_training_103_slice_{z}" for z in range(3)
    ]
    out = tmp_path / "prepared"
    prepare_myops2020(out, raw_root=raw, progress=False, workers=2)
    before = tree_state(out / "cases")
    assert prepare_myops2020(out, raw_root=raw, progress=False) == []
    assert tree_state(out / "cases") == before


def test_bad_myops_inputs(tmp_path):
    raw = _write_official(tmp_path / "raw", patients=(101, 104, 105))
    (raw / "train25" / "myops_training_104_DE.nii.gz").unlink()
    _, gd = _arrays(105)
    gd[0, 0, 0] = 300
    save_nifti(raw / "train25_myops_gd" / "myops_training_105_gd.nii.gz", gd, AFFINE)
    out = tmp_path / "prepared"
    with pytest.raises(PreparationError) as err:
        prepare_myops2020(out, raw_root=raw, progress=False)
    msg = str(err.value)
    assert "myops_training_104: missing modality file myops_training_104_DE.nii.gz" in msg
    assert "myops_training_105_gd.nii.gz: unexpected label values [300]" in msg
    assert list_cases(out) == [f"myops_training_101_slice_{z}" for z in range(3)]
    with pytest.raises(FileNotFoundError, match="no MyoPS training file"):
        find_myops_cases(tmp_path / "raw" / "test20")
    small = tmp_path / "small"
    img = np.random.default_rng(0).uniform(1, 2, (200, 200, 2)).astype(np.float32)
    for s in ("C0", "DE", "T2", "gd"):
        save_nifti(
            small / f"myops_training_110_{s}.nii.gz", img if s != "gd" else np.zeros_like(img)
        )
    with pytest.raises(PreparationError, match="smaller than the 256 crop"):
        prepare_myops2020(tmp_path / "o2", raw_root=small, progress=False)


def test_prepare_myops_script_counts_slice_cases(tmp_path, capsys):
    from data_helpers import load_script

    raw = _write_official(tmp_path / "raw", patients=(101,))
    main = load_script("prepare_myops2020").main
    assert main(["--raw", str(raw), "--out", str(tmp_path / "p"), "--quiet", "--workers", "1"]) == 0
    assert f"{tmp_path / 'p'}: prepared 3 new slice case(s)" in capsys.readouterr().out
