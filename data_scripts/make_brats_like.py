"""Write synthetic cases in the BraTS 2020 or BraTS 2023 training layout, at full size.

These files exist to exercise the real BraTS path end to end (finding the layout,
reading NIfTI, cropping and normalising full-size volumes, loading 80^3 patches,
evaluating and exporting predictions) on a machine without the data. They are the kit's
phantom (:func:`passion_kit.data.phantom.generate_case`: a brain with a learnable
three-part tumour) written as BraTS files, not brain MRI: never report a result on them
in place of BraTS.

Layouts (``--layout``):

- ``brats2020``: ``BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz`` and ``_t1``,
  ``_t1ce``, ``_t2``, ``_seg``; labels {0, 1 NCR/NET, 2 edema, 4 enhancing}.
- ``brats2023``: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz`` (FLAIR) and
  ``-t1n`` (T1), ``-t1c`` (T1c), ``-t2w`` (T2), ``-seg``; labels {0, 1, 2, 3 enhancing}.
  Case k of a run (k = 1, 2, ...) is ``BraTS20_Training_<k>`` in 2020 and
  ``BraTS-GLI-<k - 1>-000`` in 2023, with the same voxels in both.

Each case: 240 x 240 x 155 voxels (``--size``), int16 images that are exactly 0 outside
one brain mask shared by the four modalities (and >= 1 inside it), a uint8 label that is
0 outside the brain, and the affine ``diag(-1, -1, 1)`` with origin ``(0, W - 1, 0)``
(1 mm voxels, x and y flipped; ``(0, 239, 0)`` at full size), which is what this script
uses for the BraTS grid. The phantom is generated as a cube of at most 64^3, stretched
(trilinear for images, nearest for labels) to a box of :data:`BOX_FRACTION` of the volume,
given fine noise at full size and centred in the volume, so a case takes a few seconds.

Usage::

    python data_scripts/make_brats_like.py --cases 3 --out /tmp/brats_like
    python data_scripts/make_brats_like.py --cases 3 --out /tmp/gli --layout brats2023
    python data_scripts/prepare_brats2020.py --raw /tmp/brats_like --out /tmp/prepared

``--out`` must be a new or empty folder. Every case folder appears complete (written
under a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from passion_kit.data.phantom import generate_case
from passion_kit.io import TMP_PREFIX, USER_ERRORS, error_line, umask

__all__ = [
    "BOX_FRACTION",
    "BRATS_SIZE",
    "LAYOUTS",
    "brats_affine",
    "brats_like_case",
    "case_folder_name",
    "make_brats_like",
    "parse_size",
]

BRATS_SIZE = (240, 240, 155)
LAYOUTS = ("brats2020", "brats2023")
# The phantom's cube is stretched to this fraction of the volume per axis (then centred,
# the third axis cropped): brains of about 150 x 175 x 125 voxels at full size, near the
# extent of BraTS brains.
BOX_FRACTION = (0.74, 0.96, 1.19)
GENERATED_EDGE = 64  # the largest cube generated; larger volumes are stretched from it
# int16 units per standard deviation of the phantom's brain intensities, per modality
# [flair, t1c, t1, t2], and the std of the fine noise added at full size (in those stds).
INTENSITY_SCALE = (110.0, 140.0, 90.0, 120.0)
FINE_NOISE = 0.05
# Kit modality -> file suffix, and the raw value of each phantom class (0, 1, 2, 3).
_SUFFIX = {
    "brats2020": {"flair": "flair", "t1c": "t1ce", "t1": "t1", "t2": "t2"},
    "brats2023": {"flair": "t2f", "t1c": "t1c", "t1": "t1n", "t2": "t2w"},
}
_RAW_LABEL = {
    "brats2020": np.array([0, 1, 2, 4], np.uint8),
    "brats2023": np.arange(4, dtype=np.uint8),
}
_MODALITIES = ("flair", "t1c", "t1", "t2")  # generate_case's channel order


def parse_size(text: str) -> tuple[int, int, int]:
    """``"240,240,155"`` -> ``(240, 240, 155)``; each edge must be >= 16."""
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 16:
        raise ValueError(f"--size must be three integers >= 16 such as 240,240,155, got {text!r}")
    return size  # type: ignore[return-value]


def case_folder_name(number: int, layout: str) -> str:
    """Case ``number`` (1-based) as a folder name of ``layout``."""
    if layout == "brats2020":
        if not 1 <= number <= 999:
            raise ValueError(f"brats2020 case numbers run from 1 to 999, got {number}")
        return f"BraTS20_Training_{number:03d}"
    if layout == "brats2023":
        if not 1 <= number <= 100000:
            raise ValueError(f"brats2023 case numbers run from 1 to 100000, got {number}")
        return f"BraTS-GLI-{number - 1:05d}-000"
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def brats_affine(size: Sequence[int] = BRATS_SIZE) -> np.ndarray:
    """The 4 x 4 affine written: 1 mm voxels, x and y flipped, origin (0, W - 1, 0)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = size[1] - 1
    return affine


def _centred(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``array`` (..., h, w, d) centred in a zero volume of spatial ``size`` (cropped if larger)."""
    out = np.zeros((*array.shape[:-3], *size), dtype=array.dtype)
    src, dst = [], []
    for have, want in zip(array.shape[-3:], size, strict=True):
        if have <= want:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
        else:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
    out[(..., *dst)] = array[(..., *src)]
    return out


def brats_like_case(
    index: int, *, size: Sequence[int] = BRATS_SIZE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case, deterministic in ``(seed, index)``.

    Returns:
        ``image`` int16 (4, H, W, D) in [flair, t1c, t1, t2] order, 0 outside the brain and
        >= 1 inside it, and ``label`` uint8 (H, W, D) with the phantom's classes 0..3
        (3 enhancing), 0 outside the brain.
    """
    size = tuple(int(s) for s in size)
    box = tuple(max(16, round(f * s)) for f, s in zip(BOX_FRACTION, size, strict=True))
    edge = max(16, min(GENERATED_EDGE, max(box)))
    image, label = generate_case(index, size=edge, seed=seed)
    # The phantom is z-scored with background -mean/std, its minimum (brain voxels are
    # > 0 before): subtracting it gives raw intensities in std units, background exactly 0.
    raw = image - image.reshape(4, -1).min(1)[:, None, None, None]
    brain = (raw > 0).any(0)
    with torch.no_grad():  # stretched to the box: linear for images, nearest for masks
        up = F.interpolate(
            torch.from_numpy(raw)[None], size=box, mode="trilinear", align_corners=True
        )[0].numpy()
        masks = torch.from_numpy(np.stack([brain, label]).astype(np.float32))[None]
        masks = F.interpolate(masks, size=box, mode="nearest")[0].numpy()
    brain = masks[0] > 0.5
    label = np.where(brain, masks[1], 0).astype(np.uint8)
    rng = np.random.default_rng((seed, index, 1))
    up += FINE_NOISE * rng.standard_normal(up.shape, dtype=np.float32)
    up *= np.asarray(INTENSITY_SCALE, dtype=np.float32)[:, None, None, None]
    values = np.clip(np.rint(up), 1, np.iinfo(np.int16).max)
    out = np.where(brain, values, 0).astype(np.int16)
    return _centred(out, size), _centred(label, size)


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _write_case(out: Path, number: int, layout: str, size, seed: int) -> Path:
    name = case_folder_name(number, layout)
    final = out / name
    image, label = brats_like_case(number, size=size, seed=seed)
    affine = brats_affine(size)
    sep = "_" if layout == "brats2020" else "-"
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=out))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; give the usual mode
        for c, mod in enumerate(_MODALITIES):
            path = tmp / f"{name}{sep}{_SUFFIX[layout][mod]}.nii.gz"
            path.write_bytes(_nifti_bytes(image[c], affine))
        seg = _RAW_LABEL[layout][label]
        (tmp / f"{name}{sep}seg.nii.gz").write_bytes(_nifti_bytes(seg, affine))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def make_brats_like(
    out: str | os.PathLike,
    *,
    cases: int = 0,
    numbers: Sequence[int] = (),
    layout: str = "brats2020",
    size: Sequence[int] = BRATS_SIZE,
    seed: int = 0,
) -> list[Path]:
    """Write synthetic BraTS cases under ``out`` (module docstring).

    Args:
        out: a new or empty folder.
        cases: write cases 1..``cases``; or
        numbers: the case numbers to write (e.g. those of the official training list).
        layout: ``"brats2020"`` or ``"brats2023"``.
        size: volume shape (H, W, D).
        seed: generator seed; case k depends only on (seed, k).

    Returns:
        The case folders, in order.

    Raises:
        ValueError: for a non-empty ``out``, an unknown layout, no cases or a bad number.
    """
    out = Path(out)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; give a new --out")
    wanted = list(numbers) if numbers else list(range(1, cases + 1))
    if not wanted:
        raise ValueError(f"--cases must be >= 1, got {cases}")
    for number in wanted:
        case_folder_name(number, layout)  # every number checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    return [_write_case(out, n, layout, size, seed) for n in wanted]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--cases", type=int, required=True, help="number of cases (1, 2, ...)")
    ap.add_argument("--out", required=True, help="a new or empty folder")
    ap.add_argument("--layout", default="brats2020", choices=LAYOUTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="240,240,155", help="H,W,D (default 240,240,155)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    try:
        size = parse_size(args.size)
        folders = make_brats_like(
            args.out, cases=args.cases, layout=args.layout, size=size, seed=args.seed
        )
    except USER_ERRORS as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    print(
        f"{args.out}: wrote {len(folders)} synthetic case(s) of {'x'.join(map(str, size))} "
        f"in the {args.layout} layout ({seconds:.1f} s, {seconds / len(folders):.1f} s a case)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
