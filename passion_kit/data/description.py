"""Datasets describe themselves: the ``dataset.json`` of the prepared format.

Everything dataset-specific (modality names and channel order, the combination table,
class names, how raw label values map to classes, the evaluated regions, spacing, volumes
or slices) lives in one :class:`DatasetDescription`, written next to the prepared cases
and read back with :func:`load_description`. Training and evaluation code asks the
description instead of hard-coding BraTS.

Example::

    >>> from passion_kit.data.description import BRATS2020
    >>> BRATS2020.regions["TC"]
    (1, 3)
    >>> BRATS2020.modalities.name(14)
    'all'
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passion_kit.data.modalities import BRATS, MYOPS, ModalitySet
from passion_kit.data.prepared import atomic_write_text
from passion_kit.io import read_text

__all__ = [
    "BRATS2020",
    "BUILTIN",
    "FORMAT",
    "MSD_TASK01",
    "MYOPS2020",
    "PHANTOM",
    "DatasetDescription",
    "data_root",
    "load_description",
    "save_description",
]

FORMAT = "passion-kit-prepared/1"
_KINDS = ("volume", "slice")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$PASSION_KIT_DATA``, else ``./data``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("PASSION_KIT_DATA", "data"))


@dataclass(frozen=True)
class DatasetDescription:
    """What a prepared dataset is: the content of its ``dataset.json``.

    Args:
        name: short identifier, e.g. ``"brats2020"``.
        modalities: names, channel order and the ``mask_id`` table.
        classes: class names; class ``k`` is stored as ``k`` in ``label.npy``.
        regions: evaluated regions, name -> class ids (BraTS WT = (1, 2, 3)).
        label_mapping: raw label value in the source files -> class id.
        kind: ``"volume"`` (one 3D case per scan) or ``"slice"`` (each 2D slice is a case
            of depth 1; the slices of one patient share one availability row).
        spacing: voxel spacing in mm, or None where it varies per case (see ``meta.json``).
        split_order: the modality order of the missing-rate generator and of the digits in
            split names (BraTS: t1, t1c, flair, t2, so ``mr2468`` means p_t1 = 0.2).
        source: where the data comes from, free text.
        version: version of the source data or of the generator.
    """

    name: str
    modalities: ModalitySet
    classes: tuple[str, ...]
    regions: Mapping[str, tuple[int, ...]]
    label_mapping: Mapping[int, int]
    kind: str = "volume"
    spacing: tuple[float, ...] | None = None
    split_order: tuple[str, ...] = ()
    source: str = ""
    version: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.classes)
        if k < 2:
            raise ValueError(f"classes must name at least background and one class, got {k}")
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        regions = {str(n): tuple(int(c) for c in ids) for n, ids in self.regions.items()}
        for n, ids in regions.items():
            if not ids or any(not 1 <= c < k for c in ids):
                raise ValueError(f"region {n!r} must list foreground class ids in [1, {k - 1}]")
        mapping = {int(r): int(c) for r, c in self.label_mapping.items()}
        if any(not 0 <= c < k for c in mapping.values()):
            raise ValueError(f"label_mapping must map onto class ids in [0, {k - 1}]")
        order = tuple(self.split_order) or self.modalities.modalities
        if sorted(order) != sorted(self.modalities.modalities):
            raise ValueError(
                f"split_order must be a permutation of {list(self.modalities.modalities)}, "
                f"got {list(order)}"
            )
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if not all(math.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(f"spacing must be voxel sizes > 0 in mm, got {list(spacing)}")
            object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "label_mapping", mapping)
        object.__setattr__(self, "split_order", order)
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "extra", dict(self.extra))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_modalities(self) -> int:
        return self.modalities.num_modalities

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``dataset.json``."""
        ms = self.modalities
        return {
            "format": FORMAT,
            "name": self.name,
            "modalities": list(ms.modalities),
            "combinations": [
                {"id": i, "name": ms.name(i), "mask": list(ms.mask(i))}
                for i in range(ms.num_combinations)
            ],
            "classes": list(self.classes),
            "label_mapping": {str(r): c for r, c in self.label_mapping.items()},
            "regions": {n: list(ids) for n, ids in self.regions.items()},
            "kind": self.kind,
            "spacing": None if self.spacing is None else list(self.spacing),
            "split_order": list(self.split_order),
            "source": self.source,
            "version": self.version,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], origin: str = "dataset.json") -> DatasetDescription:
        """Build a description from the JSON object of a ``dataset.json``.

        Raises:
            ValueError: naming ``origin`` and the key, for a missing or invalid entry.
        """
        if not isinstance(obj, dict):
            raise ValueError(
                f"{origin}: a dataset description is a JSON object, not a {type(obj).__name__}"
            )
        if obj.get("format") != FORMAT:
            raise ValueError(f"{origin}: 'format' must be {FORMAT!r}, got {obj.get('format')!r}")
        missing = [k for k in ("name", "modalities", "combinations", "classes") if k not in obj]
        missing += [k for k in ("label_mapping", "regions", "kind") if k not in obj]
        if missing:
            raise ValueError(f"{origin}: missing key(s) {missing}")
        try:
            combos = sorted(obj["combinations"], key=lambda c: int(c["id"]))
            if [int(c["id"]) for c in combos] != list(range(len(combos))):
                raise ValueError("'combinations' ids must be 0..n-1")
            ms = ModalitySet(
                modalities=tuple(obj["modalities"]),
                combinations=tuple(tuple(bool(v) for v in c["mask"]) for c in combos),
            )
            for c in combos:
                if ms.name(int(c["id"])) != c.get("name", ms.name(int(c["id"]))):
                    raise ValueError(f"combination {c['id']} is named {c['name']!r}")
            return cls(
                name=str(obj["name"]),
                modalities=ms,
                classes=tuple(obj["classes"]),
                regions=obj["regions"],
                label_mapping=obj["label_mapping"],
                kind=obj["kind"],
                spacing=obj.get("spacing"),
                split_order=tuple(obj.get("split_order") or ()),
                source=str(obj.get("source", "")),
                version=str(obj.get("version", "")),
                extra=obj.get("extra") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{origin}: invalid dataset description: {exc}") from exc


def load_description(root: str | os.PathLike) -> DatasetDescription:
    """Read ``<root>/dataset.json`` (or ``root`` itself if it is a JSON file).

    Raises:
        FileNotFoundError: if there is no ``dataset.json``, naming the path.
        ValueError: if the file is not a valid description, naming the file and the key.
    """
    path = Path(root)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no dataset.json; prepare the dataset first (see data_scripts/)"
        )
    try:
        obj = json.loads(read_text(path, "a dataset.json"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    return DatasetDescription.from_json(obj, origin=str(path))


def save_description(description: DatasetDescription, root: str | os.PathLike) -> Path:
    """Write ``<root>/dataset.json`` atomically and return its path."""
    path = Path(root) / "dataset.json"
    atomic_write_text(path, json.dumps(description.to_json(), indent=2) + "\n")
    return path


def _brats_like(name: str, mapping: Mapping[int, int], **kw: Any) -> DatasetDescription:
    return DatasetDescription(
        name=name,
        modalities=BRATS,
        classes=("background", "ncr_net", "edema", "enhancing"),
        regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
        label_mapping=mapping,
        kind="volume",
        spacing=(1.0, 1.0, 1.0),
        split_order=("t1", "t1c", "flair", "t2"),
        **kw,
    )


# Spec A.4: BraTS labels 0, 1 (NCR/NET), 2 (edema), 4 (enhancing) -> classes 0..3.
BRATS2020 = _brats_like(
    "brats2020",
    {0: 0, 1: 1, 2: 2, 4: 3},
    source="BraTS 2020 training data (MICCAI_BraTS2020_TrainingData), official RFNet split",
    version="2020",
)

# MSD Task01 labels mean something else (1 edema, 2 non-enhancing, 3 enhancing) and its
# channels are FLAIR, T1w, T1gd, T2w; see passion_kit.data.msd.MSD_LABEL_TABLE.
MSD_TASK01 = _brats_like(
    "msd_task01",
    {0: 0, 1: 2, 2: 1, 3: 3},
    source="Medical Segmentation Decathlon Task01_BrainTumour (BraTS 2016/2017), via MONAI",
    version="msd-2018",
)

# A procedurally generated stand-in with the same modalities, classes and regions.
PHANTOM = _brats_like(
    "phantom",
    {0: 0, 1: 1, 2: 2, 3: 3},
    source="passion_kit.data.phantom (procedural, no download)",
)

# The MyoPS protocol (docs/data.md): 6 classes; LVB = {2}, RVB = {3}, MYO = normal myocardium +
# edema + scar.
MYOPS2020 = DatasetDescription(
    name="myops2020",
    modalities=MYOPS,
    classes=("background", "myocardium", "lv_blood_pool", "rv_blood_pool", "edema", "scar"),
    regions={"LVB": (2,), "RVB": (3,), "MYO": (1, 4, 5)},
    label_mapping={0: 0, 200: 1, 500: 2, 600: 3, 1220: 4, 2221: 5},
    kind="slice",
    spacing=None,
    split_order=("bssfp", "lge", "t2"),
    source="MyoPS 2020 training data (train25, train25_myops_gd), authors' 2D protocol (HGA)",
    version="2020",
)


BUILTIN: dict[str, DatasetDescription] = {
    d.name: d for d in (BRATS2020, MSD_TASK01, PHANTOM, MYOPS2020)
}
