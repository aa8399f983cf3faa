"""Training augmentation (docs/method.md A.5), with explicit fill values
(docs/method.md G.10, G.11).

Order as in the official pipeline: random crop to the patch, rotation by a small integer
angle in one random plane (nearest neighbour, so labels stay labels), intensity jitter
(image only), random flip of each axis. Image and label share every random choice.

Differences from the official code, each a documented option:

- The rotation fills the image with each channel's background value (the constant
  ``-mean/std`` of the prepared case) instead of the official -1, which is not
  background. The label is filled with 0, as in effect in the official code: it asks
  for -1, which scipy clamps to 0 for its uint8 labels. ``image_fill=-1.0``
  (``data.image_fill=-1``) restores the official image fill.
- ``jitter="official"`` draws scale and shift per channel *and per index of the first
  spatial axis* (an RFNet quirk); ``jitter="channel"`` draws one scalar per channel.

MONAI's rotations pad with zeros, the border or a reflection, not with a per-channel
constant, so the rotation uses :func:`scipy.ndimage.rotate`; crop and flips are slicing.
All randomness comes from the ``numpy.random.Generator`` passed in, so a sample is
reproducible from its seed.

Example::

    aug = TrainAugment(patch_size=64)
    image, label = aug(image, label, np.random.default_rng(0), background=[-1.2] * 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from passion_kit.data.description import DatasetDescription

__all__ = ["JITTER_MODES", "TrainAugment", "augment_for", "patch_tuple"]

JITTER_MODES = ("official", "channel")
# Rotation planes of the official RandomRotion, as axes of the (H, W, D) array.
OFFICIAL_PLANES = ((1, 0), (2, 1), (2, 0))


def patch_tuple(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    """``80`` -> ``(80, 80, 80)``; a 3-tuple is checked and returned."""
    p = (int(patch_size),) * 3 if isinstance(patch_size, int | np.integer) else tuple(patch_size)
    if len(p) != 3 or any(int(v) < 1 for v in p):
        raise ValueError(f"patch_size must be a positive int or (H, W, D), got {patch_size!r}")
    return tuple(int(v) for v in p)  # type: ignore[return-value]


@dataclass(frozen=True)
class TrainAugment:
    """Random crop, rotation, intensity jitter and flips for one (image, label) pair.

    Args:
        patch_size: crop size, an int (cube) or (H, W, D); docs/method.md A.5 uses 80.
        rotation_degrees: the angle is an integer in [-d, d - 1] (official
            ``randint(-10, 10)``); 0 disables rotation.
        rotation_planes: the planes to choose from, as axis pairs of the (H, W, D) array.
        intensity_scale: scale ~ U(1 - s, 1 + s).
        intensity_shift: shift ~ U(-t, t).
        jitter: ``"official"`` (per channel and first-axis index) or ``"channel"``.
        flip_axes: spatial axes flipped independently with p = 0.5.
        image_fill: ``"background"`` (each channel's background value) or a number.
        label_fill: label value of voxels rotated in from outside.
    """

    patch_size: int | tuple[int, int, int] = 80
    rotation_degrees: int = 10
    rotation_planes: tuple[tuple[int, int], ...] = OFFICIAL_PLANES
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    jitter: str = "official"
    flip_axes: tuple[int, ...] = (0, 1, 2)
    image_fill: str | float = "background"
    label_fill: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", patch_tuple(self.patch_size))
        if self.jitter not in JITTER_MODES:
            raise ValueError(f"jitter must be one of {JITTER_MODES}, got {self.jitter!r}")
        if self.rotation_degrees < 0:
            raise ValueError(f"rotation_degrees must be >= 0, got {self.rotation_degrees}")
        if self.rotation_degrees and not self.rotation_planes:
            raise ValueError("rotation_planes is empty but rotation_degrees > 0")
        bad = [p for p in self.rotation_planes if len(p) != 2 or not set(p) <= {0, 1, 2}]
        if bad or any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError("rotation_planes and flip_axes must use spatial axes 0, 1, 2")
        if isinstance(self.image_fill, str) and self.image_fill != "background":
            raise ValueError(
                f"image_fill must be 'background' or a number, got {self.image_fill!r}"
            )

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        rng: np.random.Generator,
        background: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one pair.

        Args:
            image: (M, H, W, D); it is not modified (a memory map works).
            label: (H, W, D).
            rng: the source of every random choice.
            background: per-channel background values, required for
                ``image_fill="background"``.

        Returns:
            ``image`` float32 (M, *patch) and ``label`` int64 (*patch), contiguous.

        Raises:
            ValueError: if the volume is smaller than the patch along an axis.
        """
        shape, patch = image.shape[1:], self.patch_size
        if any(s < p for s, p in zip(shape, patch, strict=True)):
            raise ValueError(f"patch_size {patch} is larger than the volume {tuple(shape)}")
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, patch, strict=True))
        img = np.array(image[(slice(None), *sl)], dtype=np.float32)
        lab = np.array(label[sl], dtype=np.int64)

        if self.rotation_degrees:
            plane = self.rotation_planes[int(rng.integers(len(self.rotation_planes)))]
            angle = int(rng.integers(-self.rotation_degrees, self.rotation_degrees))
            if angle:
                fills = self._fills(img.shape[0], background)
                for c in range(img.shape[0]):
                    img[c] = _rotate(img[c], angle, plane, fills[c])
                lab = _rotate(lab, angle, plane, self.label_fill)

        m = img.shape[0]
        size = (m, 1, 1, 1) if self.jitter == "channel" else (m, patch[0], 1, 1)
        scale = rng.uniform(1.0 - self.intensity_scale, 1.0 + self.intensity_scale, size)
        shift = rng.uniform(-self.intensity_shift, self.intensity_shift, size)
        img = (img * scale + shift).astype(np.float32)

        flips = tuple(a for a in self.flip_axes if rng.random() < 0.5)
        if flips:
            img = np.flip(img, axis=tuple(a + 1 for a in flips))
            lab = np.flip(lab, axis=flips)
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    def _fills(self, channels: int, background: Sequence[float] | None) -> list[float]:
        if self.image_fill != "background":
            return [float(self.image_fill)] * channels
        if background is None or len(background) != channels:
            raise ValueError(
                f"image_fill='background' needs {channels} background values, got {background!r}"
            )
        return [float(b) for b in background]


def _rotate(arr: np.ndarray, angle: int, plane: tuple[int, int], fill: float) -> np.ndarray:
    return ndimage.rotate(
        arr, angle, axes=plane, reshape=False, order=0, mode="constant", cval=fill
    )


def augment_for(
    description: DatasetDescription, patch_size: int | Sequence[int], **overrides
) -> TrainAugment:
    """The docs/method.md A.5 augmentation for a dataset: 3D for volumes; for slice datasets
    (MyoPS) rotation and flips stay in-plane, as the authors do."""
    kw: dict = {"patch_size": patch_tuple(patch_size)}
    if description.kind == "slice":
        kw.update(rotation_planes=((1, 0),), flip_axes=(0, 1))
    kw.update(overrides)
    return TrainAugment(**kw)
