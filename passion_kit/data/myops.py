"""MyoPS2020 to the prepared format, following the authors' 2D protocol (docs/data.md).

Three modalities in the order [bSSFP (C0), LGE (DE), T2]; six classes (0 background,
1 normal myocardium (raw 200), 2 LV blood pool (500), 3 RV blood pool (600), 4 edema
(1220), 5 scar (2221)); evaluated regions LVB = {2}, RVB = {3}, MYO = {1, 4, 5}.

Raw layouts found under ``raw_root`` (searched recursively): the official release
(``train25/myops_training_101_C0.nii.gz`` ... and ``train25_myops_gd/
myops_training_101_gd.nii.gz``) and the per-case folders the authors' script expects
(``MyoPS2020_Training_Data/myops_training_101/myops_training_101_C0.nii.gz``). Only the
25 labelled training patients are used, as by the authors (their test set is 5 of them).

Per patient: each modality is z-scored over the whole 3D case (voxels where the sum of the
modalities is > 0), no resampling; then every short-axis slice becomes its own case
``myops_training_101_slice_<z>`` with depth 1, centre-cropped in-plane to 256 x 256 as
the authors do at load time (start ``(s - 256) // 2``). All slices of a patient share one
availability row in the missing-rate splits (the six shipped files).

Usage::

    python data_scripts/prepare_myops2020.py --raw ~/MyoPS2020 --workers 2
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from passion_kit.data.description import MYOPS2020, save_description
from passion_kit.data.prepared import PreparedCase, prepare_all, read_case_ids, write_case_ids
from passion_kit.data.preprocess import check_image, load_on_grid, map_labels, walk_folders, zscore
from passion_kit.data.splits import read_split, shipped, write_split

__all__ = [
    "MYOPS_FILE_SUFFIX",
    "MYOPS_SPLITS",
    "MyopsSource",
    "find_myops_cases",
    "prepare_myops2020",
]

# Kit modality -> raw file suffix; "label" is the ground truth.
MYOPS_FILE_SUFFIX = {"bssfp": "C0", "lge": "DE", "t2": "T2", "label": "gd"}
MYOPS_SPLITS = ("357", "375", "537", "573", "735", "753")
CROP = 256
_FILE = re.compile(r"^(myops_training_\d+)_(C0|DE|T2|gd)\.nii(\.gz)?$")


@dataclass(frozen=True)
class MyopsSource:
    """One slice to prepare: the patient's files (``None`` if missing) and the slice index."""

    patient: str
    slice_index: int
    files: dict[str, str | None]
    crop: int | None = CROP

    @property
    def case_id(self) -> str:
        return f"{self.patient}_slice_{self.slice_index}"


def find_myops_cases(raw_root: str | os.PathLike, *, crop: int | None = CROP) -> list[MyopsSource]:
    """One source per slice of every labelled training patient under ``raw_root``.

    The slice count is read from the header of one of the patient's files.

    Raises:
        FileNotFoundError: if ``raw_root`` holds no ``myops_training_*`` NIfTI file.
        ValueError: if a patient's files are found twice or a header cannot be read.
    """
    root = Path(raw_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: raw MyoPS folder not found")
    found: dict[str, dict[str, str]] = {}
    by_suffix = {v: k for k, v in MYOPS_FILE_SUFFIX.items()}
    for dirpath, _, filenames in walk_folders(root):  # linked folders too
        for name in filenames:
            m = _FILE.match(name)
            if not m:
                continue
            patient, key = m.group(1), by_suffix[m.group(2)]
            path = str(Path(dirpath) / name)
            if key in found.setdefault(patient, {}):
                raise ValueError(
                    f"{path}: {patient} {m.group(2)} found twice (also {found[patient][key]})"
                )
            found[patient][key] = path
    if not found:
        raise FileNotFoundError(
            f"{root}: no MyoPS training file found (expected e.g. myops_training_101_C0.nii.gz)"
        )
    sources = []
    for patient in sorted(found):
        files = {k: found[patient].get(k) for k in MYOPS_FILE_SUFFIX}
        ref = next(p for p in (files["label"], files["bssfp"], files["lge"], files["t2"]) if p)
        import nibabel as nib  # lazily: importing the kit must not need nibabel

        try:
            shape = nib.load(ref).shape
        except Exception as exc:  # nibabel raises many types for unreadable files
            raise ValueError(f"{ref}: cannot read NIfTI header: {exc}") from exc
        depth = shape[2] if len(shape) == 3 else 1
        sources += [MyopsSource(patient, z, files, crop) for z in range(depth)]
    return sources


def _prepare_myops(source: MyopsSource) -> PreparedCase:
    arrays, grid = [], None
    for key in ("bssfp", "lge", "t2", "label"):
        path = source.files.get(key)
        if path is None:
            raise FileNotFoundError(
                f"{source.patient}: missing {'label' if key == 'label' else 'modality'} file "
                f"{source.patient}_{MYOPS_FILE_SUFFIX[key]}.nii.gz"
            )
        data, grid = load_on_grid(path, grid, what="a 3D short-axis stack")
        if key != "label":
            check_image(data, path)
        arrays.append(data)
    label = map_labels(arrays.pop(), MYOPS2020.label_mapping, str(source.files["label"]))
    channels = [str(source.files[k]) for k in ("bssfp", "lge", "t2")]
    volume, stats = zscore(np.stack(arrays).astype(np.float32), channels)
    ref, shape, affine = grid
    z = source.slice_index
    start, stop = [0, 0, z], [shape[0], shape[1], z + 1]
    if source.crop is not None:
        for ax in (0, 1):
            if shape[ax] < source.crop:
                raise ValueError(
                    f"{ref}: in-plane size {shape[:2]} is smaller than the {source.crop} crop"
                )
            start[ax] = (shape[ax] - source.crop) // 2
            stop[ax] = start[ax] + source.crop
    sl = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    meta = {
        "case_id": source.case_id,
        "dataset": MYOPS2020.name,
        "patient": source.patient,
        "slice_index": z,
        "source_files": dict(source.files),
        "original_shape": list(shape),
        "original_affine": affine.tolist(),
        "spacing": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        "crop": {"start": start, "stop": stop},
        "normalization": stats,  # per patient, over the whole 3D stack
    }
    image = np.ascontiguousarray(volume[(slice(None), *sl)])
    return PreparedCase(source.case_id, image, np.ascontiguousarray(label[sl]), meta)


def prepare_myops2020(
    out: str | os.PathLike,
    *,
    raw_root: str | os.PathLike,
    workers: int = 1,
    crop: int | None = CROP,
    progress: bool = True,
) -> list[str]:
    """Prepare MyoPS2020 slices under ``out`` (resumable; prepared slices are untouched).

    Also writes ``dataset.json``, the authors' ``train.txt`` (80 slices) and ``test.txt``
    (22 slices), an empty ``val.txt`` (the authors have none; they select checkpoints on
    the test list) and their six missing-rate splits as ``splits/missing_rates/mr357.csv``
    etc. in the readable CSV format.

    Returns:
        The ids of the slice cases prepared by this call.
    """
    sources = find_myops_cases(raw_root, crop=crop)
    out = Path(out)
    save_description(MYOPS2020, out)
    for name in ("train", "test"):
        ids = read_case_ids(shipped(f"myops2020/MyoPS2020_{name}.txt"))
        write_case_ids(out / "splits" / f"{name}.txt", ids)
    write_case_ids(out / "splits" / "val.txt", [])
    for digits in MYOPS_SPLITS:
        src = shipped(f"myops2020/MyoPS2020_longtail_split_{digits}.csv")
        split = read_split(src, MYOPS2020.modalities)
        write_split(split, out / "splits" / "missing_rates" / f"mr{digits}.csv", overwrite=True)
    ids = [s.case_id for s in sources]
    return prepare_all(
        sources, ids, _prepare_myops, out, workers=workers, progress=progress, desc="myops2020"
    )
