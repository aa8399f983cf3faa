from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import REPO, save_nifti

from passion_kit.data import msd
from passion_kit.data.description import MSD_TASK01, load_description
from passion_kit.data.prepared import PreparationError, list_cases, read_case, read_case_ids
from passion_kit.data.splits import read_split, shipped

SHAPE = (16, 14, 12)
# Each MSD channel gets its bright spot at its own place, to check the reorder.
SPOT = {0: (3, 3, 3), 1: (5, 5, 5), 2: (7, 7, 7), 3: (9, 9, 9)}


def _write_task(root: Path, n: int = 3) -> Path:
    task = root / msd.MSD_TASK
    training = []
    for i in range(1, n + 1):
        rng = np.random.default_rng(i)
        img = np.zeros((*SHAPE, 4), dtype=np.float32)
        img[2:-2, 2:-2, 2:-2] = rng.uniform(10, 20, (SHAPE[0] - 4, SHAPE[1] - 4, SHAPE[2] - 4, 4))
        for c, p in SPOT.items():
            img[(*p, c)] = 1000.0
        lab = np.zeros(SHAPE, dtype=np.uint8)
        lab[4:8, 4:8, 4:8] = 1  # MSD edema: 64 voxels
        lab[5:7, 5:7, 5:7] = 2  # MSD non-enhancing: 8 voxels
        lab[6, 6, 6] = 3  # MSD enhancing: 1 voxel
        name = f"BRATS_{i:03d}.nii.gz"
        save_nifti(task / "imagesTr" / name, img)
        save_nifti(task / "labelsTr" / name, lab)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {  # the keys of the real Task01_BrainTumour/dataset.json
        "name": "BRATS",
        "description": "Gliomas segmentation tumour and oedema in on brain images",
        "reference": "https://www.med.upenn.edu/sbia/brats2017.html",
        "licence": "CC-BY-SA 4.0",
        "release": "2.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {
            "0": "background",
            "1": "edema",
            "2": "non-enhancing tumor",
            "3": "enhancing tumour",
        },
        "numTraining": n,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_tables_are_consistent_with_the_description():
    assert {a: c for a, _, c, _ in msd.MSD_LABEL_TABLE} == MSD_TASK01.label_mapping
    for _, _, kit_c, kit_name in msd.MSD_CHANNEL_TABLE:
        assert MSD_TASK01.modalities.modalities[kit_c] == kit_name
    for _, _, kit_c, kit_name in msd.MSD_LABEL_TABLE:
        assert MSD_TASK01.classes[kit_c] == kit_name


def test_docs_show_the_same_mapping_table():
    assert msd.mapping_tables_markdown() in (REPO / "docs" / "data.md").read_text()


def test_shipped_case_split_is_what_the_function_produces():
    ids = [f"BRATS_{i:03d}" for i in range(1, 485)]
    parts = msd.msd_case_split(ids)
    for name, part in parts.items():
        assert read_case_ids(shipped(f"msd_task01/{name}.txt")) == part
    assert [len(p) for p in parts.values()] == [291, 48, 145]
    assert sorted(sum(parts.values(), [])) == ids


def test_prepare_msd_reorders_channels_and_maps_labels(tmp_path):
    _write_task(tmp_path / "raw")
    out = tmp_path / "prepared"
    done = msd.prepare_msd(out, root=tmp_path / "raw", download=False, progress=False)
    assert done == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert load_description(out) == MSD_TASK01
    image, label, meta = read_case(out, "BRATS_002")
    start = meta["crop"]["start"]
    for msd_c, _, kit_c, _ in msd.MSD_CHANNEL_TABLE:
        spot = np.unravel_index(np.argmax(image[kit_c]), image.shape[1:])
        assert tuple(int(s) + o for s, o in zip(spot, start, strict=True)) == SPOT[msd_c]
    # MSD 1 edema -> 2, MSD 2 non-enhancing -> 1 (NCR/NET), MSD 3 enhancing -> 3
    assert [(label == k).sum() for k in (1, 2, 3)] == [8 - 1, 64 - 8, 1]
    # fewer cases than the full task: a seeded split of what is there
    parts = {n: read_case_ids(out / "splits" / f"{n}.txt") for n in ("train", "val", "test")}
    assert parts == msd.msd_case_split(done)
    split = read_split(out / "splits" / "missing_rates" / "mr2468.csv", MSD_TASK01.modalities)
    assert list(split.case_ids) == parts["train"]


def test_bad_msd_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        msd.find_msd_cases(tmp_path / "none", download=False)
    task = _write_task(tmp_path / "raw")
    bad = np.ones((*SHAPE, 3), dtype=np.float32)  # a channel short
    save_nifti(task / "imagesTr" / "BRATS_002.nii.gz", bad)
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[0, 0, 0] = 4
    save_nifti(task / "labelsTr" / "BRATS_003.nii.gz", lab)
    out = tmp_path / "prepared"
    with pytest.raises(PreparationError) as err:
        msd.prepare_msd(out, root=tmp_path / "raw", progress=False)
    msg = str(err.value)
    assert "BRATS_002.nii.gz: expected a 4D image (H, W, D, 4)" in msg
    assert "labelsTr/BRATS_003.nii.gz: unexpected label values [4]" in msg
    assert list_cases(out) == ["BRATS_001"]
    meta = json.loads((task / "dataset.json").read_text())
    meta["modality"] = {"0": "T1w", "1": "FLAIR", "2": "t1gd", "3": "T2w"}
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'modality'"):
        msd.find_msd_cases(tmp_path / "raw")


def test_download_goes_through_monai_with_the_md5(tmp_path, monkeypatch):
    import monai.apps

    calls = []

    def fake_download(url, filepath, output_dir, hash_val, hash_type, progress):
        calls.append((url, Path(filepath).name, hash_val, hash_type))
        _write_task(Path(output_dir), n=1)

    monkeypatch.setattr(monai.apps, "download_and_extract", fake_download)
    sources = msd.find_msd_cases(tmp_path, download=True)
    assert [s.case_id for s in sources] == ["BRATS_001"]
    url, name, md5, kind = calls[0]
    assert url.endswith("Task01_BrainTumour.tar") and name == "Task01_BrainTumour.tar"
    assert (md5, kind) == ("240a19d752f0d9e9101544901065d872", "md5")


def test_prepare_msd_script_prepares_a_downloaded_task(tmp_path, capsys):
    from data_helpers import load_script

    _write_task(tmp_path / "raw")
    main = load_script("prepare_msd").main
    args = ["--root", str(tmp_path / "raw"), "--out", str(tmp_path / "p"), "--quiet"]
    assert main(args) == 0
    assert f"{tmp_path / 'p'}: prepared 3 new case(s)" in capsys.readouterr().out
    assert main(args) == 0  # resumable: nothing left to do
    assert "prepared 0 new case(s)" in capsys.readouterr().out
