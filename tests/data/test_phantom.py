from __future__ import annotations

import numpy as np
import pytest

from passion_kit.data import phantom
from passion_kit.data.description import PHANTOM, load_description
from passion_kit.data.prepared import list_cases, read_case
from passion_kit.data.splits import read_split


def test_best_threshold_dice_by_hand():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    assert phantom.best_threshold_dice(x, np.array([0, 0, 1, 1])) == 1.0
    assert phantom.best_threshold_dice(x, np.array([1, 1, 0, 0])) == 1.0  # "below" works
    # target {0, 2}: all 2*2/(4+2); {2, 3} 2/4; {0} 2/3; {0, 1, 2} 2*2/(3+2) = 0.8 (best)
    assert np.isclose(phantom.best_threshold_dice(x, np.array([1, 0, 1, 0])), 0.8)
    # ties cannot be split: the values are all equal
    assert np.isclose(phantom.best_threshold_dice(np.zeros(4), np.array([1, 0, 0, 0])), 0.4)
    assert phantom.best_threshold_dice(x, np.zeros(4)) == 1.0  # empty target: empty prediction


def test_generate_case_format_and_determinism():
    img, lab = phantom.generate_case(3, size=32, seed=1)
    assert img.shape == (4, 32, 32, 32) and img.dtype == np.float32
    assert lab.shape == (32, 32, 32) and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    img2, lab2 = phantom.generate_case(3, size=32, seed=1)
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    img3, _ = phantom.generate_case(4, size=32, seed=1)
    assert not np.array_equal(img, img3)
    # z-scored on brain voxels: background is each channel's constant minimum
    brain = np.abs(img - img.min(axis=(1, 2, 3), keepdims=True)).sum(0) > 0
    for m in range(4):
        assert abs(img[m][brain].mean()) < 0.05 and abs(img[m][brain].std() - 1) < 0.05
    with pytest.raises(ValueError, match="size"):
        phantom.generate_case(0, size=8)


@pytest.fixture(scope="module")
def design_table():
    cases = (phantom.generate_case(i, size=64, seed=0) for i in range(12))
    return phantom.informativeness(cases)


def test_phantom_meets_its_design_targets(design_table):
    assert phantom.design_target_failures(design_table) == []
    t = design_table
    assert (
        max(t, key=lambda m: t[m]["WT"]) in ("flair", "t2")
        and max(v["WT"] for v in t.values()) >= 0.7
    )
    assert max(t, key=lambda m: t[m]["ET"]) == "t1c" and t["t1c"]["ET"] >= 0.7
    assert t["t1c"]["TC"] - max(t[m]["TC"] for m in ("flair", "t1", "t2")) >= 0.15
    assert all(v < 0.5 for v in t["t1"].values())
    assert not any(all(v >= 0.7 for v in row.values()) for row in t.values())


def test_design_check_can_fail(design_table):
    bad = {m: dict(row) for m, row in design_table.items()}
    bad["t1"]["WT"] = 0.99  # T1 becomes the best WT modality and too informative
    bad["flair"]["ET"] = 0.99  # FLAIR beats T1c on ET and solves every region
    bad["flair"]["TC"] = 0.99
    fails = phantom.design_target_failures(bad)
    assert any(f.startswith("WT") for f in fails) and any(f.startswith("ET") for f in fails)
    assert any(f.startswith("TC") for f in fails) and any(f.startswith("T1") for f in fails)
    assert any("all three" in f or "WT, TC and ET" in f for f in fails)
    assert "*" in phantom.format_informativeness(design_table)


def test_make_phantom_writes_the_prepared_format(phantom_root):
    desc = load_description(phantom_root)
    assert desc.name == "phantom"
    assert desc.extra == {"size": 32, "seed": 3, "design": phantom.DESIGN, "num_cases": 10}
    assert desc.regions == PHANTOM.regions
    ids = list_cases(phantom_root)
    assert ids == [phantom.phantom_case_id(i) for i in range(10)]
    image, label, meta = read_case(phantom_root, ids[0])
    assert image.shape == (4, 32, 32, 32) and image.dtype == np.float32 and label.dtype == np.uint8
    expected, _ = phantom.generate_case(0, size=32, seed=3)
    assert np.array_equal(image, expected)
    assert np.allclose(meta["normalization"]["background"], image.min(axis=(1, 2, 3)))
    parts = {
        n: (phantom_root / "splits" / f"{n}.txt").read_text().split()
        for n in ("train", "val", "test")
    }
    assert [len(p) for p in parts.values()] == [6, 1, 3]
    assert sorted(sum(parts.values(), [])) == ids
    for name in phantom.PHANTOM_RATE_SPLITS:
        split = read_split(
            phantom_root / "splits" / "missing_rates" / f"{name}.csv", desc.modalities
        )
        assert list(split.case_ids) == parts["train"]


def test_make_phantom_resumes_and_refuses_other_recipes(tmp_path):
    root = tmp_path / "ph"
    assert len(phantom.make_phantom(root, num_cases=3, size=16, progress=False)) == 3
    mtime = (root / "cases" / "phantom_0000" / "image.npy").stat().st_mtime_ns
    assert phantom.make_phantom(root, num_cases=4, size=16, progress=False) == ["phantom_0003"]
    assert (root / "cases" / "phantom_0000" / "image.npy").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="seed"):
        phantom.make_phantom(root, num_cases=4, size=16, seed=5, progress=False)
    with pytest.raises(ValueError, match="num_cases"):
        phantom.make_phantom(tmp_path / "x", num_cases=2)


def test_the_cpu_preset_phantom_meets_the_design_targets_too():
    """The cpu preset trains on 32^3 cases: the targets hold at that size too."""
    from passion_kit.config import ExperimentConfig

    size = ExperimentConfig.preset("cpu").data.phantom_size
    cases = [phantom.generate_case(i, size=size, seed=0) for i in range(16)]
    assert phantom.design_target_failures(phantom.informativeness(cases)) == []
    for _, label in cases:  # every case has an enhancing rim of some size to learn
        assert (label == 3).sum() >= 40
