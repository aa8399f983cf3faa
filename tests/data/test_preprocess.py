from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from passion_kit.data.prepared import (
    PreparationError,
    PreparedCase,
    atomic_write_text,
    list_cases,
    prepare_all,
    read_case,
    write_case,
)
from passion_kit.data.preprocess import crop_bounds, map_labels, uncrop, zscore


def _box(shape, lo, hi):
    v = np.zeros(shape, dtype=np.float32)
    v[tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))] = 1.0
    return v


def test_crop_bounds_follow_spec_a4_by_hand():
    # non-zero indices: x 40..199 (extent 159, not widened), y 100..149 (49 -> widened),
    # z 0..59 (59 -> widened and shifted to start at 0)
    vol = _box((240, 240, 155), (40, 100, 0), (199, 149, 59))
    (x0, x1), (y0, y1), (z0, z1) = crop_bounds(vol)
    assert (x0, x1) == (40, 199)  # [min:max): the last non-zero index is left out (G.15)
    ecart = int((128 - 49) / 2)  # 39
    assert (y0, y1) == (100 - ecart, 149 + ecart + 1)
    ecart = int((128 - 59) / 2)  # 34 -> min -34 -> shifted
    assert (z0, z1) == (0, 59 + ecart + 1 + 34)
    assert crop_bounds(vol, mode="inclusive")[0] == (40, 200)
    assert y1 - y0 >= 128 and z1 - z0 >= 128


def test_crop_bounds_use_the_max_over_modalities_and_clip():
    vol = np.stack([_box((150, 150, 150), (10, 10, 10), (20, 20, 20)),
                    _box((150, 150, 150), (100, 100, 140), (149, 149, 149))])  # fmt: skip
    assert crop_bounds(vol)[0] == (10, 149)
    # widened past the far end: clipped there, not shifted back (as the official slice)
    corner = _box((150, 150, 150), (100, 100, 100), (149, 149, 149))
    assert crop_bounds(corner) == ((61, 150),) * 3
    with pytest.raises(ValueError, match="empty"):
        crop_bounds(np.zeros((4, 8, 8, 8)))
    with pytest.raises(ValueError, match="crop mode"):
        crop_bounds(vol, mode="tight")


def test_zscore_uses_brain_voxels_and_keeps_background_constant():
    vol = np.zeros((2, 4, 4, 4), dtype=np.float32)
    vol[0, :2] = np.arange(32).reshape(2, 4, 4)  # brain = where the sum > 0
    vol[1, :2] = 5.0
    vol[1, 0, 0, 0] = 7.0
    out, stats = zscore(vol)
    brain = vol.sum(0) > 0
    for m in range(2):
        assert np.isclose(out[m][brain].mean(), 0, atol=1e-6)
        assert np.isclose(out[m][brain].std(), 1, atol=1e-5)
        assert np.allclose(out[m][~brain], stats["background"][m])
    assert np.isclose(stats["background"][0], -vol[0][brain].mean() / vol[0][brain].std())
    flat = vol.copy()
    flat[1, :2] = 5.0
    with pytest.raises(ValueError, match="modality 1: constant"):
        zscore(flat)
    with pytest.raises(ValueError, match="t1.nii: constant"):
        zscore(flat, ["flair.nii", "t1.nii"])


def test_map_labels():
    raw = np.array([0, 1, 2, 4, 4], dtype=np.float32)
    assert map_labels(raw, {0: 0, 1: 1, 2: 2, 4: 3}, "x").tolist() == [0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match=r"seg.nii: unexpected label values \[3\]"):
        map_labels(np.array([0, 3]), {0: 0, 1: 1, 2: 2, 4: 3}, "seg.nii")
    with pytest.raises(ValueError, match="non-integer"):
        map_labels(np.array([0, 1.5]), {0: 0, 1: 1}, "seg.nii")
    with pytest.raises(ValueError, match="NaN"):
        map_labels(np.array([0, np.nan]), {0: 0}, "seg.nii")


def test_uncrop_round_trip():
    meta = {"crop": {"start": [1, 2, 0], "stop": [4, 5, 2]}, "original_shape": [6, 7, 3]}
    small = np.arange(18).reshape(3, 3, 2)
    big = uncrop(small, meta, fill=-1)
    assert big.shape == (6, 7, 3) and np.array_equal(big[1:4, 2:5, 0:2], small)
    assert (big == -1).sum() == 6 * 7 * 3 - 18
    with pytest.raises(ValueError, match="no crop"):
        uncrop(small, {"case_id": "x", "crop": None})


def _case(cid: str) -> PreparedCase:
    return PreparedCase(cid, np.ones((2, 3, 3, 3), np.float32), np.zeros((3, 3, 3), np.uint8), {})


def _source_fn(cid: str) -> PreparedCase:
    if cid.startswith("bad"):
        raise ValueError(f"/raw/{cid}_t1.nii.gz: something is wrong")
    return _case(cid)


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_case(tmp_path, _case("a"))
        atomic_write_text(tmp_path / "x.txt", "hi\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "cases" / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644
    assert (tmp_path / "x.txt").read_text() == "hi\n"


def test_write_case_is_atomic_and_never_overwrites(tmp_path):
    write_case(tmp_path, _case("a"))
    image, label, meta = read_case(tmp_path, "a")
    assert image.shape == (2, 3, 3, 3) and label.dtype == np.uint8 and meta == {}
    with pytest.raises(FileExistsError):
        write_case(tmp_path, _case("a"))
    with pytest.raises(ValueError, match="float32"):
        write_case(
            tmp_path, PreparedCase("b", np.ones((3, 3, 3)), np.zeros((3, 3, 3), np.uint8), {})
        )
    assert list_cases(tmp_path) == ["a"]
    assert [p.name for p in (tmp_path / "cases").iterdir()] == ["a"]


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_all_collects_failures_and_resumes(tmp_path, workers):
    ids = ["a", "bad1", "c"]
    (tmp_path / "cases" / ".tmp-stale").mkdir(parents=True)  # leftover of a killed run
    with pytest.raises(PreparationError, match="bad1: /raw/bad1_t1.nii.gz: something"):
        prepare_all(ids, ids, _source_fn, tmp_path, workers=workers, progress=False)
    assert list_cases(tmp_path) == ["a", "c"]
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == ["a", "c"]
    mtime = (tmp_path / "cases" / "a" / "image.npy").stat().st_mtime_ns
    done = prepare_all(["a", "c", "d"], ["a", "c", "d"], _source_fn, tmp_path, progress=False)
    assert done == ["d"]
    assert (tmp_path / "cases" / "a" / "image.npy").stat().st_mtime_ns == mtime
