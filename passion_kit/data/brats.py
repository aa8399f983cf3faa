"""BraTS2020 to the prepared format (docs/method.md A.4), from raw NIfTI or the RFNet npy layout.

The BraTS 2023 layout is read too (``layout="brats2023"``, or detected with ``"auto"``).

Raw layouts found under ``raw_root`` (searched recursively, so either root works):

- official: ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz``
  (also ``_t1ce``, ``_t1``, ``_t2``, ``_seg``);
- Kaggle: ``BraTS2020_TrainingData/MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/
  BraTS20_Training_001_flair.nii`` (uncompressed); case 355's label is misnamed
  ``W39_1998.09.19_Segm.nii``: a folder without ``_seg`` but with exactly one other NIfTI
  whose name holds "seg" uses that file as its label (any other is refused as missing);
- BraTS 2023 (glioma, and the other 2023 sets named alike):
  ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz`` (also ``-t1c``, ``-t1n``, ``-t2w``,
  ``-seg``), with t2f = FLAIR, t1c = T1c, t1n = T1, t2w = T2 and labels {0, 1 NETC,
  2 SNFH, 3 ET}: 3 becomes the enhancing class, as 4 does for 2020, so both give the same
  prepared arrays. Case ids are the folder names; the dataset is described as
  ``brats2023`` (its ``label_mapping`` maps back to 3 when a prediction is exported), and
  no case lists or missing-rate splits are written (the RFNet split lists 2020 cases):
  write ``splits/*.txt`` and make the splits with ``data_scripts/make_missing_rate_split.py``.

Case ids are the official list names (``HG_BraTS20_Training_001``; ``HG_`` if the case
number is <= 259 or >= 336, else ``LG_``), so the shipped split files apply unchanged.

Per case: the four modalities are stacked as [FLAIR, T1c, T1, T2], cropped to the
non-zero box widened to >= 128 voxels per axis, z-scored on brain voxels; labels
{0, 1, 2, 4} (2023: {0, 1, 2, 3}) become {0, 1, 2, 3}. ``meta.json`` keeps the crop
bounds, the original shape and affine, the normalisation statistics and the source
files, so a prediction can be put back into the original NIfTI space
(:func:`passion_kit.data.preprocess.uncrop`).

Usage::

    python data_scripts/prepare_brats2020.py --raw ~/MICCAI_BraTS2020_TrainingData --workers 4
    python data_scripts/prepare_brats2020.py --raw ~/BraTS2023-GLI-Training --layout brats2023
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from passion_kit.data.description import (
    BRATS2020,
    DatasetDescription,
    load_description,
    save_description,
)
from passion_kit.data.prepared import (
    PreparedCase,
    prepare_all,
    read_case_ids,
    write_case_ids,
)
from passion_kit.data.preprocess import (
    check_image,
    load_on_grid,
    map_labels,
    prepare_volume,
    walk_folders,
)
from passion_kit.data.splits import read_split, shipped, write_split

__all__ = [
    "BRATS2023",
    "BRATS2023_FILE_SUFFIX",
    "BRATS_FILE_SUFFIX",
    "BRATS_LAYOUTS",
    "LAYOUT_CHOICES",
    "BratsLayout",
    "BratsSource",
    "RfnetSource",
    "brats2020_case_id",
    "find_brats_cases",
    "find_rfnet_cases",
    "prepare_brats2020",
]

# Kit modality -> file suffix in BraTS releases (T1c is "t1ce").
BRATS_FILE_SUFFIX = {"flair": "flair", "t1c": "t1ce", "t1": "t1", "t2": "t2"}
# Kit modality -> file suffix in BraTS 2023 (t2f = T2-FLAIR, t1n = native T1).
BRATS2023_FILE_SUFFIX = {"flair": "t2f", "t1c": "t1c", "t1": "t1n", "t2": "t2w"}

# BraTS 2023: 1 NETC, 2 SNFH (edema), 3 ET -> the classes of BraTS2020's 1, 2 and 4.
BRATS2023 = replace(
    BRATS2020,
    name="brats2023",
    label_mapping={0: 0, 1: 1, 2: 2, 3: 3},
    source="BraTS 2023 training data (BraTS-GLI-XXXXX-XXX folders, -t1n/-t1c/-t2w/-t2f/-seg)",
    version="2023",
)


@dataclass(frozen=True)
class BratsLayout:
    """How one BraTS release names its files: ``<folder><separator><suffix>.nii[.gz]``."""

    name: str
    separator: str
    suffixes: Mapping[str, str]  # kit modality -> file suffix
    description: DatasetDescription
    example: str

    def stem(self, folder: str, suffix: str) -> str:
        return f"{folder}{self.separator}{suffix}"


BRATS_LAYOUTS = {
    "brats2020": BratsLayout(
        "brats2020", "_", BRATS_FILE_SUFFIX, BRATS2020,
        "BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz",
    ),
    "brats2023": BratsLayout(
        "brats2023", "-", BRATS2023_FILE_SUFFIX, BRATS2023,
        "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz",
    ),
}  # fmt: skip
LAYOUT_CHOICES = ("auto", *BRATS_LAYOUTS)
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
    layout: str = "brats2020"  # a key of BRATS_LAYOUTS


def _find_nifti(folder: Path, stem: str) -> Path | None:
    """The one file ``<stem>.nii`` or ``<stem>.nii.gz`` in ``folder``; both is an error."""
    found = [folder / f"{stem}{ext}" for ext in _NII if (folder / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise ValueError(
            f"{found[0]} and {found[1].name}: two files for one image; keep one of them"
        )
    return found[0] if found else None


def _layouts(layout: str) -> list[BratsLayout]:
    if layout not in LAYOUT_CHOICES:
        raise ValueError(f"layout must be one of {LAYOUT_CHOICES}, got {layout!r}")
    return list(BRATS_LAYOUTS.values()) if layout == "auto" else [BRATS_LAYOUTS[layout]]


def _case_of(folder: Path, names: set[str], lay: BratsLayout, crop_mode: str) -> BratsSource:
    """The files of one case folder of layout ``lay``."""
    files: dict[str, str | None] = {}
    for mod, suffix in lay.suffixes.items():
        p = _find_nifti(folder, lay.stem(folder.name, suffix))
        files[mod] = str(p) if p else None
    label = _find_nifti(folder, lay.stem(folder.name, "seg"))
    if label is None and lay.name == "brats2020":  # Kaggle's case 355: "...Segm" NIfTI
        stems = [*lay.suffixes.values(), "seg"]
        known = {f"{lay.stem(folder.name, s)}{e}" for s in stems for e in _NII}
        other = sorted(n for n in names if n.endswith(_NII) and n not in known)
        # Only a file named as a segmentation: a brain mask must not become the label.
        label = folder / other[0] if len(other) == 1 and "seg" in other[0].lower() else None
    files["label"] = str(label) if label else None
    cid = brats2020_case_id(folder.name) if lay.name == "brats2020" else folder.name
    mapping = dict(lay.description.label_mapping)
    return BratsSource(cid, str(folder), files, crop_mode, label_mapping=mapping, layout=lay.name)


def find_brats_cases(
    raw_root: str | os.PathLike, *, crop_mode: str = "official", layout: str = "auto"
) -> list[BratsSource]:
    """Every BraTS case folder under ``raw_root``, sorted by id.

    A case folder is one that holds a file of its layout, e.g. ``<folder>_flair.nii[.gz]``
    (2020, official or Kaggle) or ``<folder>-t2f.nii[.gz]`` (2023); the unlabelled 2020
    challenge sets (``*_Validation_XXX``, ``*_Testing_XXX``) are skipped.

    Args:
        raw_root: the folder to search (recursively, following linked folders).
        crop_mode: recorded in each source.
        layout: ``"brats2020"``, ``"brats2023"`` or ``"auto"`` (whichever is found; a
            folder holding both is refused).

    Raises:
        FileNotFoundError: if ``raw_root`` does not exist or holds no case folder.
        ValueError: for an unknown layout, both layouts under ``raw_root`` with
            ``"auto"``, a case found twice, or two files for one image (``.nii`` and
            ``.nii.gz``).
    """
    layouts = _layouts(layout)
    root = Path(raw_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: raw BraTS folder not found")
    found: dict[str, list[BratsSource]] = {lay.name: [] for lay in layouts}
    for folder, _, filenames in walk_folders(root):  # linked case folders too
        names = set(filenames)
        if _UNLABELLED.search(folder.name):
            continue
        for lay in layouts:
            stems = [*lay.suffixes.values(), "seg"]
            if any(f"{lay.stem(folder.name, s)}{e}" in names for s in stems for e in _NII):
                found[lay.name].append(_case_of(folder, names, lay, crop_mode))
                break
    present = [name for name, sources in found.items() if sources]
    if not present:
        examples = " or ".join(lay.example for lay in layouts)
        raise FileNotFoundError(f"{root}: no BraTS case folder found (expected e.g. {examples})")
    if len(present) > 1:
        first = {name: Path(found[name][0].folder).name for name in present}
        raise ValueError(
            f"{root}: holds both BraTS 2020 ({first['brats2020']}) and BraTS 2023 "
            f"({first['brats2023']}) case folders; prepare each into its own folder with "
            f"layout brats2020 or brats2023 (--layout)"
        )
    sources = found[present[0]]
    ids = [s.case_id for s in sources]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{root}: case(s) found twice: {dup[:5]}")
    return sorted(sources, key=lambda s: s.case_id)


def _prepare_brats(source: BratsSource) -> PreparedCase:
    lay = BRATS_LAYOUTS[source.layout]
    arrays, grid = [], None
    for mod in source.modalities:
        path = source.files.get(mod)
        if path is None:
            raise FileNotFoundError(
                f"{source.folder}: missing modality file for {mod} "
                f"(*{lay.separator}{lay.suffixes.get(mod, mod)}.nii or .nii.gz)"
            )
        data, grid = load_on_grid(path, grid)
        check_image(data, str(path))
        arrays.append(data.astype(np.float32))
    label_path = source.files.get("label")
    if label_path is None:
        raise FileNotFoundError(
            f"{source.folder}: missing label file (*{lay.separator}seg.nii or .nii.gz)"
        )
    raw_label, _ = load_on_grid(label_path, grid)
    affine = grid[2]
    label = map_labels(raw_label, source.label_mapping, str(label_path))
    return prepare_volume(
        source.case_id,
        np.stack(arrays),
        label,
        dataset=lay.description.name,
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
    layout: str = "auto",
) -> list[str]:
    """Prepare BraTS under ``out`` from raw NIfTI (``raw_root``) or RFNet npy (``rfnet_root``).

    For BraTS2020 (raw or npy) also writes the official case lists and the eight official
    missing-rate splits (in the readable CSV format) under ``out/splits``; for the BraTS
    2023 layout, no splits (module docstring). Always writes ``out/dataset.json``.
    Resumable: cases already under ``out/cases`` are left untouched.

    Args:
        layout: of ``raw_root``: ``"brats2020"``, ``"brats2023"`` or ``"auto"`` (detected);
            the npy layout is BraTS2020's.

    Returns:
        The ids of the cases prepared by this call.

    Raises:
        PreparationError: listing every case that failed and why (naming the file); the
            other cases are prepared, the failed ones leave nothing behind.
        ValueError: if ``out`` already holds another dataset (``dataset.json``).
    """
    if (raw_root is None) == (rfnet_root is None):
        raise ValueError("give exactly one of raw_root (NIfTI) and rfnet_root (npy)")
    out = Path(out)
    if raw_root is not None:
        sources = find_brats_cases(raw_root, crop_mode=crop_mode, layout=layout)
        description = BRATS_LAYOUTS[sources[0].layout].description
        fn = _prepare_brats
    else:
        if layout not in ("auto", "brats2020"):
            raise ValueError(f"the RFNet npy layout holds BraTS2020 cases, not layout {layout!r}")
        sources = find_rfnet_cases(rfnet_root)
        description = BRATS2020
        fn = _prepare_rfnet
    if (out / "dataset.json").is_file():
        held = load_description(out).name
        if held != description.name:
            raise ValueError(
                f"{out / 'dataset.json'}: holds {held}, not {description.name}; "
                "prepare into another folder"
            )
    save_description(description, out)
    if description.name == BRATS2020.name:
        _write_brats_splits(out, description)
    ids = [s.case_id for s in sources]
    return prepare_all(
        sources,
        ids,
        fn,
        out,
        workers=workers,
        progress=progress,
        desc=description.name,
        case_bytes=_case_bytes(sources[0]) if sources else 0,
    )


def _case_bytes(source: BratsSource | RfnetSource) -> int:
    """About what one prepared case takes on disk: float32 channels and a uint8 label of
    the brain box, taken as half the volume (the box is about a third of a BraTS volume)."""
    if isinstance(source, RfnetSource):  # already cropped
        return os.path.getsize(source.vol) + os.path.getsize(source.seg)
    import nibabel as nib

    first = next(path for path in source.files.values() if path)
    voxels = math.prod(nib.load(first).shape[:3])
    return int(voxels * (4 * len(source.modalities) + 1) * 0.5)
