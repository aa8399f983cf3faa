"""Medical Segmentation Decathlon Task01_BrainTumour to the prepared format.

MONAI's :class:`~monai.apps.DecathlonDataset` downloads the task (md5-checked tarball,
cached, with a progress bar) and lists its cases; the kit then reorders the channels to
its [FLAIR, T1c, T1, T2] order, maps the labels to its classes and prepares each case like
BraTS (crop, z-score; docs/method.md A.4). The two tables below are the single source of truth,
used by the code and printed in ``docs/data.md`` (:func:`mapping_tables_markdown`).

MSD Task01 is BraTS 2016/2017 under other file names (``BRATS_001``..``BRATS_484``) and
other label meanings, so its cases do not match BraTS2020 ids. The kit ships a seeded
case split (:func:`msd_case_split`, files in ``resources/splits/msd_task01``) and draws
missing-rate splits for its training list with the official generator.

Usage::

    python data_scripts/prepare_msd.py --download --workers 4      # ~7 GB download
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from passion_kit.data.brats import OFFICIAL_SPLITS
from passion_kit.data.description import MSD_TASK01, save_description
from passion_kit.data.prepared import PreparedCase, prepare_all, read_case_ids, write_case_ids
from passion_kit.data.preprocess import check_image, load_nifti, map_labels, prepare_volume
from passion_kit.data.splits import (
    generate_missing_rate_split,
    rates_from_name,
    shipped,
    write_split,
)

__all__ = [
    "MSD_CHANNEL_TABLE",
    "MSD_LABEL_TABLE",
    "MSD_MD5",
    "MSD_TASK",
    "MsdSource",
    "find_msd_cases",
    "mapping_tables_markdown",
    "msd_case_split",
    "prepare_msd",
]

MSD_TASK = "Task01_BrainTumour"
MSD_MD5 = "240a19d752f0d9e9101544901065d872"  # of Task01_BrainTumour.tar (MONAI's table)

# (MSD channel index, MSD name in its dataset.json, kit channel index, kit name)
MSD_CHANNEL_TABLE = (
    (0, "FLAIR", 0, "flair"),
    (1, "T1w", 2, "t1"),
    (2, "t1gd", 1, "t1c"),
    (3, "T2w", 3, "t2"),
)
# (MSD label value, MSD meaning, kit class id, kit class name)
MSD_LABEL_TABLE = (
    (0, "background", 0, "background"),
    (1, "edema", 2, "edema"),
    (2, "non-enhancing tumor", 1, "ncr_net"),
    (3, "enhancing tumour", 3, "enhancing"),
)
SPLIT_FRACTIONS = (0.6, 0.1, 0.3)  # train, val, test: close to BraTS2020's 219/50/100
SPLIT_SEED = 1037


# The keys MONAI's DecathlonDataset reads from an MSD dataset.json (it raises a bare
# KeyError for a missing one).
MSD_JSON_KEYS = (
    "name",
    "description",
    "reference",
    "licence",
    "tensorImageSize",
    "modality",
    "labels",
    "numTraining",
    "numTest",
    "training",
)


def _check_msd_json(path: Path) -> None:
    """Refuse an MSD dataset.json that is not JSON or lacks a key, naming the file."""
    import json

    from passion_kit.io import read_text

    try:
        obj = json.loads(read_text(path, "an MSD dataset.json"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in MSD_JSON_KEYS if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise ValueError(f"{path}: an MSD dataset.json needs the keys {', '.join(missing)}")


def mapping_tables_markdown() -> str:
    """The two MSD mapping tables as Markdown (the text ``docs/data.md`` must contain)."""
    lines = ["| MSD channel | MSD name | kit channel | kit name |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in MSD_CHANNEL_TABLE]
    lines += ["", "| MSD label | MSD meaning | kit class | kit name |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in MSD_LABEL_TABLE]
    return "\n".join(lines)


def msd_case_split(case_ids: Sequence[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Seeded train/val/test split: a ``RandomState(seed)`` permutation of the sorted ids,
    cut at :data:`SPLIT_FRACTIONS`; each part sorted."""
    ids = sorted(case_ids)
    n = len(ids)
    n_val, n_test = round(SPLIT_FRACTIONS[1] * n), round(SPLIT_FRACTIONS[2] * n)
    perm = [ids[i] for i in np.random.RandomState(seed).permutation(n)]
    n_train = n - n_val - n_test
    return {
        "train": sorted(perm[:n_train]),
        "val": sorted(perm[n_train : n_train + n_val]),
        "test": sorted(perm[n_train + n_val :]),
    }


@dataclass(frozen=True)
class MsdSource:
    case_id: str
    image: str
    label: str
    crop_mode: str = "official"


def find_msd_cases(
    root: str | os.PathLike, *, download: bool = False, crop_mode: str = "official"
) -> list[MsdSource]:
    """List the training cases of ``<root>/Task01_BrainTumour`` through MONAI.

    Args:
        root: folder that holds (or will hold) ``Task01_BrainTumour``.
        download: download and extract the md5-checked tarball into ``root`` first
            (cached: an existing tarball with the right md5 is not downloaded again).
        crop_mode: ``"official"`` or ``"inclusive"`` (see ``preprocess.CROP_MODES``).

    Raises:
        FileNotFoundError: if the task folder is missing and ``download`` is False.
        ValueError: if its ``dataset.json`` does not describe the expected channels/labels.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if download:  # skipped when the tarball is there with the right md5; then extracted once
        from monai.apps import DecathlonDataset, download_and_extract

        url = DecathlonDataset.resource[MSD_TASK]
        download_and_extract(
            url, root / f"{MSD_TASK}.tar", root, hash_val=MSD_MD5, hash_type="md5", progress=True
        )
    if not (root / MSD_TASK / "dataset.json").is_file():
        raise FileNotFoundError(
            f"{root / MSD_TASK / 'dataset.json'}: not found; pass download=True (--download) "
            f"or point root at the folder holding {MSD_TASK}"
        )
    _check_msd_json(root / MSD_TASK / "dataset.json")
    from monai.apps import DecathlonDataset  # heavy import, only needed here

    ds = DecathlonDataset(root, MSD_TASK, "training", val_frac=0.0, cache_rate=0.0, progress=False)
    props = ds.get_properties(["modality", "labels"])
    origin = root / MSD_TASK / "dataset.json"
    modality = {int(k): str(v) for k, v in props["modality"].items()}
    expected = {a: b for a, b, _, _ in MSD_CHANNEL_TABLE}
    if {k: v.lower() for k, v in modality.items()} != {k: v.lower() for k, v in expected.items()}:
        raise ValueError(f"{origin}: 'modality' is {modality}, expected {expected}")
    labels = {int(k) for k in props["labels"]}
    if labels != {a for a, _, _, _ in MSD_LABEL_TABLE}:
        raise ValueError(f"{origin}: 'labels' are {sorted(labels)}, expected 0..3")
    out = []
    for item in ds.data:
        name = Path(item["image"]).name
        cid = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
        out.append(MsdSource(cid, str(item["image"]), str(item["label"]), crop_mode))
    return sorted(out, key=lambda s: s.case_id)


def _prepare_msd(source: MsdSource) -> PreparedCase:
    for p in (source.image, source.label):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: listed in dataset.json but missing")
    data, affine = load_nifti(source.image)
    m = len(MSD_CHANNEL_TABLE)
    if data.ndim != 4 or data.shape[-1] != m:
        raise ValueError(f"{source.image}: expected a 4D image (H, W, D, {m}), got {data.shape}")
    raw_label, laff = load_nifti(source.label)
    if raw_label.shape != data.shape[:3]:
        raise ValueError(
            f"{source.label}: shape {raw_label.shape} differs from image {data.shape[:3]}"
        )
    if not np.allclose(laff, affine, atol=1e-3):
        raise ValueError(f"{source.label}: affine differs from that of {source.image}")
    vol = np.empty((m, *data.shape[:3]), dtype=np.float32)
    for msd_c, msd_name, kit_c, _ in MSD_CHANNEL_TABLE:
        check_image(data[..., msd_c], f"{source.image} (channel {msd_c}, {msd_name})")
        vol[kit_c] = data[..., msd_c]
    mapping = {a: c for a, _, c, _ in MSD_LABEL_TABLE}
    label = map_labels(raw_label, mapping, source.label)
    return prepare_volume(
        source.case_id,
        vol,
        label,
        dataset=MSD_TASK01.name,
        affine=affine,
        crop_mode=source.crop_mode,
        source_files={"image": source.image, "label": source.label},
        channel_sources=[f"{source.image} (channel {c}, {n})" for c, n, _, _ in MSD_CHANNEL_TABLE],
    )


def prepare_msd(
    out: str | os.PathLike,
    *,
    root: str | os.PathLike,
    download: bool = False,
    workers: int = 1,
    crop_mode: str = "official",
    progress: bool = True,
) -> list[str]:
    """Prepare MSD Task01 under ``out`` (resumable; already-prepared cases untouched).

    Writes ``dataset.json``, the case split (the shipped files when the task's full case
    list is found, else :func:`msd_case_split` of the cases present) and one missing-rate
    split per official BraTS rate setting, drawn from ``train.txt`` with seed 1037.

    Returns:
        The ids of the cases prepared by this call.
    """
    sources = find_msd_cases(root, download=download, crop_mode=crop_mode)
    out = Path(out)
    ids = [s.case_id for s in sources]
    parts = {n: read_case_ids(shipped(f"msd_task01/{n}.txt")) for n in ("train", "val", "test")}
    if sorted(sum(parts.values(), [])) != ids:
        parts = msd_case_split(ids)
    save_description(MSD_TASK01, out)
    for name, part in parts.items():
        write_case_ids(out / "splits" / f"{name}.txt", part)
    for name in OFFICIAL_SPLITS:
        rates = rates_from_name(name, MSD_TASK01)
        split = generate_missing_rate_split(parts["train"], rates, MSD_TASK01)
        write_split(split, out / "splits" / "missing_rates" / f"{name}.csv", overwrite=True)
    return prepare_all(
        sources, ids, _prepare_msd, out, workers=workers, progress=progress, desc="msd"
    )
