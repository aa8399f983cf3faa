from __future__ import annotations

import numpy as np
import pytest

from passion_kit.data.description import BRATS2020, MYOPS2020
from passion_kit.data.transforms import TrainAugment, augment_for, patch_tuple

NO_JITTER = dict(intensity_scale=0.0, intensity_shift=0.0)


def _pair(shape=(4, 20, 18, 16), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal(shape).astype(np.float32)
    label = rng.integers(0, 4, shape[1:]).astype(np.uint8)
    return image, label


def test_patch_tuple():
    assert patch_tuple(80) == (80, 80, 80)
    assert patch_tuple((64, 48, 1)) == (64, 48, 1)
    for bad in (0, (8, 8), (8, -1, 8)):
        with pytest.raises(ValueError, match="patch_size"):
            patch_tuple(bad)


def test_output_format_and_crop():
    image, label = _pair()
    aug = TrainAugment(patch_size=(12, 10, 8))
    out_img, out_lab = aug(image, label, np.random.default_rng(1), background=[-1.0] * 4)
    assert out_img.shape == (4, 12, 10, 8) and out_img.dtype == np.float32
    assert out_lab.shape == (12, 10, 8) and out_lab.dtype == np.int64
    assert out_img.flags.c_contiguous and out_lab.flags.c_contiguous
    assert set(np.unique(out_lab)) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="larger than the volume"):
        TrainAugment(patch_size=32)(image, label, np.random.default_rng(0), [0.0] * 4)


def test_image_and_label_stay_aligned_through_rotation_and_flips():
    image, label = _pair()
    image[0] = label  # channel 0 is a copy of the label
    aug = TrainAugment(patch_size=(14, 12, 10), **NO_JITTER)
    for seed in range(20):
        img, lab = aug(image, label, np.random.default_rng(seed), background=[0.0] * 4)
        assert np.array_equal(img[0], lab)


def test_rotation_fills_background_per_channel_and_label_zero():
    image = np.zeros((2, 16, 16, 16), dtype=np.float32)
    image[0] += 5.0  # a volume full of "brain": rotated-in corners must show the fill
    image[1] += 7.0
    label = np.full((16, 16, 16), 2, dtype=np.uint8)
    aug = TrainAugment(patch_size=16, rotation_planes=((1, 0),), flip_axes=(), **NO_JITTER)
    seen = False
    for seed in range(10):
        img, lab = aug(image, label, np.random.default_rng(seed), background=[-3.0, -4.0])
        if (lab == 0).any():  # a non-zero angle was drawn
            seen = True
            assert set(np.unique(img[0])) == {-3.0, 5.0} and set(np.unique(img[1])) == {-4.0, 7.0}
            assert set(np.unique(lab)) == {0, 2}
            assert np.array_equal(img[0] == -3.0, lab == 0)
    assert seen
    official = TrainAugment(patch_size=16, image_fill=-1.0, flip_axes=(), **NO_JITTER)
    for seed in range(10):
        img, lab = official(image, label, np.random.default_rng(seed))
        assert set(np.unique(img)) <= {-1.0, 5.0, 7.0} and set(np.unique(lab)) <= {0, 2}
    with pytest.raises(ValueError, match="background values"):
        aug(image, label, np.random.default_rng(3))


def test_angles_and_planes_follow_the_official_draw(monkeypatch):
    from passion_kit.data import transforms

    calls = []

    def spy(arr, angle, plane, fill):
        calls.append((angle, plane))
        return arr

    monkeypatch.setattr(transforms, "_rotate", spy)
    image, label = _pair((1, 9, 9, 9))
    aug = TrainAugment(patch_size=9, rotation_degrees=10)
    for seed in range(400):
        aug(image, label, np.random.default_rng(seed), [0.0])
    angles = {a for a, _ in calls}
    assert all(isinstance(a, int) for a in angles)
    assert min(angles) == -10 and max(angles) == 9 and 0 not in angles  # 0 skips rotating
    assert {p for _, p in calls} == {(1, 0), (2, 1), (2, 0)}


@pytest.mark.parametrize("mode", ["official", "channel"])
def test_intensity_jitter_modes(mode):
    image = np.ones((3, 10, 10, 10), dtype=np.float32)
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    aug = TrainAugment(patch_size=10, rotation_degrees=0, flip_axes=(), jitter=mode)
    img, _ = aug(image, label, np.random.default_rng(0))
    for c in range(3):
        per_first_axis = np.unique(img[c].reshape(10, -1), axis=1)
        assert per_first_axis.shape[1] == 1  # constant along the other two axes
        n_values = len(np.unique(img[c]))
        assert n_values == (10 if mode == "official" else 1)
        assert np.all(np.abs(img[c] - 1.0) <= 0.1 + 0.1 + 1e-6)
    assert len({float(img[c, 0, 0, 0]) for c in range(3)}) == 3  # per channel
    with pytest.raises(ValueError, match="jitter"):
        TrainAugment(jitter="voxel")


def test_same_rng_same_result_and_flip_probability():
    image, label = _pair()
    aug = TrainAugment(patch_size=12)
    a = aug(image, label, np.random.default_rng(5), [0.0] * 4)
    b = aug(image, label, np.random.default_rng(5), [0.0] * 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], aug(image, label, np.random.default_rng(6), [0.0] * 4)[0])


def test_augment_for_slices_stays_in_plane():
    aug = augment_for(MYOPS2020, (256, 256, 1))
    assert aug.rotation_planes == ((1, 0),) and aug.flip_axes == (0, 1)
    image = np.random.default_rng(0).standard_normal((3, 32, 32, 1)).astype(np.float32)
    label = np.zeros((32, 32, 1), np.uint8)
    img, lab = augment_for(MYOPS2020, (32, 32, 1))(
        image, label, np.random.default_rng(0), [0.0] * 3
    )
    assert img.shape == (3, 32, 32, 1) and lab.shape == (32, 32, 1)
    assert augment_for(BRATS2020, 80, jitter="channel").rotation_planes == ((1, 0), (2, 1), (2, 0))
