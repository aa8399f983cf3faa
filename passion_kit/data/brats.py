"""BraTS2020 to the prepared format (docs/method.md A.4), from raw NIfTI or the RFNet npy layout.

Raw layouts found under ``raw_root`` (searched recursively, so either root works):

- official: ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz``
  (also ``_t1ce``, ``_t1``, ``_t2``, ``_seg``);
- Kaggle: ``BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/
  BraTS20_Training_001_flair.nii`` (uncompressed); case 355's label is misnamed
  ``W39_1998.09.19_Segm.nii``: a folder without ``_seg`` but with exactly one other NIfTI
  whose name holds "seg" uses that file as its label (any other is refused as missing).

Case ids are the official list names (``HG_BraTS20_Training_001``; ``HG_`` if the case
number is <= 259 or >= 336, else ``LG_``), so the shipped split files apply unchanged.

Per case: the four modalities are stacked as [FLAIR, T1c, T1, T2], cropped to the
non-zero box widened to >= 128 voxels per axis, z-scored on brain voxels; labels
{0, 1, 2, 4} become {0, 1, 2, 3}. ``meta.json`` keeps the crop bounds, the original
shape and affine, the normalisation statistics and the source files, so a prediction can
be put back into the original NIfTI space
(:func:`passion_kit.data.preprocess.uncrop`).

Usage::

    python data_scripts/prepare_brats2020.py --raw ~/MICCAI_BraTS2020_TrainingData --workers 4
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from passion_kit.data.description import BRATS2020, DatasetDescription, save_description
from passion_kit.data.prepared import (
    PreparedCase,
    prepare_all,
    read_case_ids,
    write_case_ids,
)
from passion_kit.data.preprocess import check_image, load_on_grid, map_labels, prepare_volume
from passion_kit.data.splits import read_split, shipped, write_split

__all__ = [
    "BRATS_FILE_SUFFIX",
    "BratsSource",
    "RfnetSource",
    "brats2020_case_id",
    "find_brats_cases",
    "find_rfnet_cases",
    "prepare_brats2020",
]

# Kit modality -> file suffix in BraTS releases (T1c is "t1ce").
BRATS_FILE_SUFFIX = {"flair": "flair", "t1c": "t1ce", "t1": "t1", "t2": "t2"}
_NII = (".nii.gz", ".nii")
_BRATS20 = re.compile(r"^BraTS20_Training_(\d{3})$")
_UNLABELLED = re.compile(r"_(Validation|Testing)_\d+$")  # challenge sets without labels
OFFICIAL_SPLITS = ("mr1379", "mr2258", "mr2285", "mr2468", "mr5528", "mr5582", "mr8825", "mr8852")


def brats2020_case_id(folder_name: str) -> str:
    """``BraTS20_Training_001`` -> ``HG_BraTS20_Training_001`` (RFNet naming); others unchanged."""
    m = _BRATS20.match(folder_name)
    if not m:
        return folder_name
    num = int(m.group(1))
    return ("HG_" if num <= 259 or num >= 336 else "LG_") + folder_name


@dataclass(frozen=True)
class BratsSource:
    """The files of one raw case; a missing file is ``None`` and fails at preparation."""

    case_id: str
    folder: str
    files: dict[str, str | None]  # modality or "label" -> path
    crop_mode: str = "official"
    modalities: tuple[str, ...] = BRATS2020.modalities.modalities
    label_mapping: dict[int, int] = field(default_factory=lambda: dict(BRATS2020.label_mapping))


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for ext in _NII:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def find_brats_cases(
    raw_root: str | os.PathLike, *, crop_mode: str = "official"
) -> list[BratsSource]:
    """Every BraTS case folder under ``raw_root`` (official or Kaggle layout), sorted by id.

    A case folder is one that holds ``<folder>_flair.nii[.gz]`` or any other modality;
    the unlabelled challenge sets (``*_Validation_XXX``, ``*_Testing_XXX``) are skipped.

    Raises:
        FileNotFoundError: if ``raw_root`` does not exist or holds no case folder.
    """
    root = Path(raw_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: raw BraTS folder not found")
    stems = [*BRATS_FILE_SUFFIX.values(), "seg"]
    sources = []
    for dirpath, _, filenames in os.walk(root):
        folder = Path(dirpath)
        names = set(filenames)
        if _UNLABELLED.search(folder.name):
            continue
        if not any(f"{folder.name}_{s}{e}" in names for s in stems for e in _NII):
            continue
        files: dict[str, str | None] = {}
        for mod, suffix in BRATS_FILE_SUFFIX.items():
            p = _find_nifti(folder, f"{folder.name}_{suffix}")
            files[mod] = str(p) if p else None
        label = _find_nifti(folder, f"{folder.name}_seg")
        if label is None:  # Kaggle's case 355: the one unrecognised "...Segm" NIfTI
            known = {f"{folder.name}_{s}{e}" for s in stems for e in _NII}
            other = sorted(n for n in names if n.endswith(_NII) and n not in known)
            # Only a file named as a segmentation: a brain mask must not become the label.
            label = folder / other[0] if len(other) == 1 and "seg" in other[0].lower() else None
        files["label"] = str(label) if label else None
        cid = brats2020_case_id(folder.name)
        sources.append(BratsSource(cid, str(folder), files, crop_mode))
    if not sources:
        raise FileNotFoundError(
            f"{root}: no BraTS case folder found (expected e.g. "
            "BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz)"
        )
    ids = [s.case_id for s in sources]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{root}: case(s) found twice: {dup[:5]}")
    return sorted(sources, key=lambda s: s.case_id)


def _prepare_brats(source: BratsSource) -> PreparedCase:
    arrays, grid = [], None
    for mod in source.modalities:
        path = source.files.get(mod)
        if path is None:
            raise FileNotFoundError(
                f"{source.folder}: missing modality file for {mod} "
                f"(*_{BRATS_FILE_SUFFIX.get(mod, mod)}.nii or .nii.gz)"
            )
        data, grid = load_on_grid(path, grid)
        check_image(data, str(path))
        arrays.append(data.astype(np.float32))
    label_path = source.files.get("label")
    if label_path is None:
        raise FileNotFoundError(f"{source.folder}: missing label file (*_seg.nii or .nii.gz)")
    raw_label, _ = load_on_grid(label_path, grid)
    affine = grid[2]
    label = map_labels(raw_label, source.label_mapping, str(label_path))
    return prepare_volume(
        source.case_id,
        np.stack(arrays),
        label,
        dataset=BRATS2020.name,
        affine=affine,
        crop_mode=source.crop_mode,
        source_files=source.files,
        channel_sources=[str(source.files[m]) for m in source.modalities],
    )


@dataclass(frozen=True)
class RfnetSource:
    """One case of the RFNet/PASSION preprocessed layout (``vol/``, ``seg/``)."""

    case_id: str
    vol: str
    seg: str


def find_rfnet_cases(npy_root: str | os.PathLike) -> list[RfnetSource]:
    """Cases of ``<npy_root>/vol/<name>_vol.npy`` with ``seg/<name>_seg.npy``, sorted."""
    root = Path(npy_root)
    vol_dir = root / "vol"
    if not vol_dir.is_dir():
        raise FileNotFoundError(f"{vol_dir}: not found (expected the RFNet npy layout vol/, seg/)")
    out = []
    for p in sorted(vol_dir.glob("*_vol.npy")):
        name = p.name[: -len("_vol.npy")]
        out.append(RfnetSource(name, str(p), str(root / "seg" / f"{name}_seg.npy")))
    if not out:
        raise FileNotFoundError(f"{vol_dir}: no *_vol.npy file")
    return out


def _prepare_rfnet(source: RfnetSource) -> PreparedCase:
    vol = np.load(source.vol)
    m = BRATS2020.num_modalities
    if vol.ndim != 4 or vol.shape[-1] != m:
        raise ValueError(
            f"{source.vol}: expected (H, W, D, {m}) in [FLAIR, T1c, T1, T2], got {vol.shape}"
        )
    check_image(vol, source.vol)
    for c, name in enumerate(BRATS2020.modalities.modalities):
        low, high = float(vol[..., c].min()), float(vol[..., c].max())
        if low == high:
            raise ValueError(f"{source.vol}: channel {name} is constant ({low}), not an MRI volume")
    if not Path(source.seg).is_file():
        raise FileNotFoundError(f"{source.seg}: missing label file")
    seg = np.load(source.seg)
    if seg.shape != vol.shape[:3]:
        raise ValueError(
            f"{source.seg}: shape {seg.shape} differs from {source.vol} {vol.shape[:3]}"
        )
    identity = {c: c for c in range(BRATS2020.num_classes)}
    label = map_labels(seg, identity, source.seg)
    image = np.ascontiguousarray(np.moveaxis(vol, -1, 0), dtype=np.float32)
    meta = {
        "case_id": source.case_id,
        "dataset": BRATS2020.name,
        "source_files": {"image": source.vol, "label": source.seg},
        "original_shape": None,  # the RFNet layout keeps neither the crop nor the affine
        "original_affine": None,
        "crop": None,
        # Raw MRI is >= 0, so the normalised background is each channel's minimum.
        "normalization": {"background": [float(image[c].min()) for c in range(m)]},
    }
    return PreparedCase(source.case_id, image, label, meta)


def _write_brats_splits(out: Path, description: DatasetDescription) -> None:
    for name in ("train", "val", "test"):
        write_case_ids(
            out / "splits" / f"{name}.txt", read_case_ids(shipped(f"brats2020/{name}.txt"))
        )
    for name in OFFICIAL_SPLITS:
        split = read_split(
            shipped(f"brats2020/Brats2020_imb_split_{name}.csv"), description.modalities
        )
        write_split(split, out / "splits" / "missing_rates" / f"{name}.csv", overwrite=True)


def prepare_brats2020(
    out: str | os.PathLike,
    *,
    raw_root: str | os.PathLike | None = None,
    rfnet_root: str | os.PathLike | None = None,
    workers: int = 1,
    crop_mode: str = "official",
    progress: bool = True,
) -> list[str]:
    """Prepare BraTS2020 under ``out`` from raw NIfTI (``raw_root``) or RFNet npy (``rfnet_root``).

    Also writes the official case lists and the eight official missing-rate splits (in
    the readable CSV format) under ``out/splits`` and ``out/dataset.json``. Resumable:
    cases already under ``out/cases`` are left untouched.

    Returns:
        The ids of the cases prepared by this call.

    Raises:
        PreparationError: listing every case that failed and why (naming the file); the
            other cases are prepared, the failed ones leave nothing behind.
    """
    if (raw_root is None) == (rfnet_root is None):
        raise ValueError("give exactly one of raw_root (NIfTI) and rfnet_root (npy)")
    out = Path(out)
    if raw_root is not None:
        sources = find_brats_cases(raw_root, crop_mode=crop_mode)
        fn = _prepare_brats
    else:
        sources = find_rfnet_cases(rfnet_root)
        fn = _prepare_rfnet
    save_description(BRATS2020, out)
    _write_brats_splits(out, BRATS2020)
    ids = [s.case_id for s in sources]
    return prepare_all(sources, ids, fn, out, workers=workers, progress=progress, desc="brats2020")
