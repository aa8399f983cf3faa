"""The preparation steps shared by BraTS, MSD Task01, MyoPS and the phantom (docs/method.md A.4).

- :func:`crop_bounds`: bounding box of the non-zero voxels of the voxel-wise maximum over
  modalities, widened symmetrically to at least 128 voxels per axis.
- :func:`zscore`: per-modality z-score with the mean and std of the brain voxels (sum over
  modalities > 0), applied to the whole volume, so background becomes -mean/std, not 0.
- :func:`map_labels`: raw label values to class ids through an explicit table, refusing
  any value the table does not know.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from passion_kit.data.prepared import PreparedCase
from passion_kit.io import error_line

__all__ = [
    "CROP_MODES",
    "check_image",
    "crop_bounds",
    "load_nifti",
    "load_on_grid",
    "map_labels",
    "prepare_volume",
    "uncrop",
    "walk_folders",
    "zscore",
]

# "official": the RFNet/PASSION slice [min:max) with max the last non-zero index, which
# drops that index on axes that are not widened (docs/method.md G.15). "inclusive" keeps it.
CROP_MODES = ("official", "inclusive")


def crop_bounds(
    volume: np.ndarray, *, min_size: int = 128, mode: str = "official"
) -> tuple[tuple[int, int], ...]:
    """Half-open crop bounds ``((start, stop), ...)`` per spatial axis.

    Args:
        volume: (M, H, W, D) or (H, W, D); the non-zero voxels of the maximum over the
            first axis (or of the volume itself) define the box.
        min_size: axes whose extent is below this are widened symmetrically, as in
        docs/method.md A.4
            (``ecart = int((min_size - ext) / 2)``, ``max += ecart + 1``, ``min -= ecart``,
            shifted to start at 0 if negative, clipped at the array end).
        mode: one of :data:`CROP_MODES`.

    Raises:
        ValueError: for an unknown mode or a volume without any non-zero voxel.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    vol = np.max(volume, axis=0) if volume.ndim == 4 else volume
    nz = np.nonzero(vol)
    if nz[0].size == 0:
        raise ValueError("the image has no non-zero voxel (empty image)")
    bounds = []
    for axis, idx in enumerate(nz):
        lo, hi = int(idx.min()), int(idx.max())
        if hi - lo < min_size:
            ecart = int((min_size - (hi - lo)) / 2)
            hi, lo = hi + ecart + 1, lo - ecart
        elif mode == "inclusive":
            hi += 1
        if lo < 0:
            hi, lo = hi - lo, 0
        bounds.append((lo, min(hi, vol.shape[axis])))
    return tuple(bounds)


def zscore(
    volume: np.ndarray, sources: Sequence[str] | None = None
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Z-score each modality with its brain-voxel statistics (docs/method.md A.4).

    Args:
        volume: (M, H, W, D) raw intensities, background 0.
        sources: per-channel origin (file) named in errors; defaults to "modality <m>".

    Returns:
        The normalised float32 volume and ``{"mean", "std", "background"}`` per modality,
        where ``background = -mean / std`` is the value of every non-brain voxel.

    Raises:
        ValueError: if there is no brain voxel or a modality is constant inside the brain;
            the message names the modality index.
    """
    brain = volume.sum(axis=0) > 0
    if not brain.any():
        raise ValueError("the image has no brain voxel (sum over modalities > 0): empty image")
    out = np.empty(volume.shape, dtype=np.float32)
    stats: dict[str, list[float]] = {"mean": [], "std": [], "background": []}
    for m in range(volume.shape[0]):
        vals = volume[m][brain].astype(np.float64)
        mean, std = float(vals.mean()), float(vals.std())
        if not std > 0:
            where = sources[m] if sources else f"modality {m}"
            raise ValueError(f"{where}: constant inside the brain (std 0): empty image")
        out[m] = (volume[m] - mean) / std
        stats["mean"].append(mean)
        stats["std"].append(std)
        stats["background"].append(-mean / std)
    return out, stats


def map_labels(raw: np.ndarray, mapping: Mapping[int, int], origin: str) -> np.ndarray:
    """Map raw label values to uint8 class ids.

    Raises:
        ValueError: naming ``origin`` if the label has NaN, non-integer or unknown values.
    """
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all():
            raise ValueError(f"{origin}: label contains NaN or infinite values")
        if not np.array_equal(raw, np.round(raw)):
            raise ValueError(f"{origin}: label contains non-integer values")
    values = np.unique(raw).astype(np.int64)
    unknown = sorted(set(values.tolist()) - set(mapping))
    if unknown:
        raise ValueError(
            f"{origin}: unexpected label values {unknown[:10]}; expected a subset of "
            f"{sorted(mapping)}"
        )
    out = np.zeros(raw.shape, dtype=np.uint8)
    raw_int = raw.astype(np.int64)
    for value, cls in mapping.items():
        if cls:
            out[raw_int == value] = cls
    return out


def check_image(array: np.ndarray, origin: str) -> None:
    """Refuse NaN/infinite values and all-zero images, naming ``origin``."""
    if not np.isfinite(array).all():
        raise ValueError(f"{origin}: image contains NaN or infinite values")
    if not np.any(array):
        raise ValueError(f"{origin}: image is empty (all voxels are zero)")


def prepare_volume(
    case_id: str,
    volume: np.ndarray,
    label: np.ndarray,
    *,
    dataset: str,
    affine: np.ndarray,
    crop_mode: str,
    source_files: Mapping[str, str | None],
    channel_sources: Sequence[str] | None = None,
) -> PreparedCase:
    """Crop, z-score and package one multi-modal volume (docs/method.md A.4).

    Args:
        case_id: the prepared case id.
        volume: (M, H, W, D) raw intensities in the dataset's channel order.
        label: (H, W, D) class ids (already mapped).
        dataset: dataset name recorded in ``meta.json``.
        affine: the original NIfTI affine.
        crop_mode: one of :data:`CROP_MODES`.
        source_files: what was read, recorded in ``meta.json``.
        channel_sources: per-channel origin named in errors.
    """
    bounds = crop_bounds(volume, mode=crop_mode)
    sl = tuple(slice(a, b) for a, b in bounds)
    image, stats = zscore(volume[(slice(None), *sl)], channel_sources)
    meta = {
        "case_id": case_id,
        "dataset": dataset,
        "source_files": dict(source_files),
        "original_shape": list(label.shape),
        "original_affine": np.asarray(affine, dtype=np.float64).tolist(),
        "crop": {"start": [a for a, _ in bounds], "stop": [b for _, b in bounds]},
        "crop_mode": crop_mode,
        "normalization": stats,
    }
    return PreparedCase(case_id, image, np.ascontiguousarray(label[sl]), meta)


def uncrop(array: np.ndarray, meta: Mapping, fill: float = 0) -> np.ndarray:
    """Put a prepared-grid array (..., h, w, d) back into the original grid of ``meta``.

    Use it to save a prediction as NIfTI with ``meta["original_affine"]``.
    """
    if not meta.get("crop") or not meta.get("original_shape"):
        raise ValueError(f"case {meta.get('case_id')}: meta.json has no crop bounds to undo")
    start, stop = meta["crop"]["start"], meta["crop"]["stop"]
    out = np.full((*array.shape[:-3], *meta["original_shape"]), fill, dtype=array.dtype)
    out[(..., *(slice(a, b) for a, b in zip(start, stop, strict=True)))] = array
    return out


def load_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of a NIfTI file, with errors that name the file."""
    import nibabel as nib  # lazily: importing the kit must not need nibabel

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise ValueError(f"{path}: cannot read NIfTI: {error_line(exc)}") from exc
    shape, dtype = tuple(img.shape), img.get_data_dtype()
    size = math.prod(shape) * dtype.itemsize
    if size > _memory_bytes():
        raise ValueError(
            f"{path}: its header claims {'x'.join(map(str, shape))} voxels of {dtype} "
            f"({size / 2**30:.0f} GiB), more than this machine's memory"
        )
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read NIfTI: {error_line(exc)}") from exc
    if np.iscomplexobj(data):
        raise ValueError(f"{path}: complex values ({data.dtype}); a real-valued image expected")
    return data, np.asarray(img.affine, dtype=np.float64)


def walk_folders(root: str | os.PathLike):
    """``(folder, dirnames, filenames)`` of every folder under ``root``, as ``os.walk``,
    following linked folders (a raw dataset is often assembled from links) once each."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already walked
            dirnames.clear()
            continue
        seen.add(real)
        yield Path(dirpath), dirnames, filenames


def _memory_bytes() -> int:
    """The machine's physical memory (a bound for one volume), or a large number."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63


# (path, shape, affine) of the first file of a case: the grid the others must share.
Grid = tuple[str | os.PathLike, tuple[int, ...], np.ndarray]


def load_on_grid(
    path: str | os.PathLike, grid: Grid | None, *, what: str = "a 3D image"
) -> tuple[np.ndarray, Grid]:
    """Load a 3-D NIfTI that must share the shape and affine of the case's first file.

    Args:
        path: the file.
        grid: ``(path, shape, affine)`` of the first file, or None for the first file.
        what: what a 3-D file is called in the error for another dimensionality.

    Returns:
        ``(array, grid)``: the grid is this file's when ``grid`` was None.

    Raises:
        ValueError: naming ``path``, for a file that is not 3-D or whose shape or affine
            (to 1e-3) differs from the first file's.
    """
    data, affine = load_nifti(path)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected {what}, got shape {data.shape}")
    if grid is None:
        return data, (path, data.shape, affine)
    ref, shape, ref_affine = grid
    if data.shape != shape:
        raise ValueError(f"{path}: shape {data.shape} differs from {ref} {shape}")
    if not np.allclose(affine, ref_affine, atol=1e-3):
        raise ValueError(f"{path}: affine differs from that of {ref}")
    return data, grid
