"""Datasets, modalities, splits and transforms (never imports models).

- :mod:`~passion_kit.data.modalities`: modality names and the ``mask_id`` tables.
- :mod:`~passion_kit.data.description`: ``dataset.json``, what a dataset is.
- :mod:`~passion_kit.data.prepared`, :mod:`~passion_kit.data.preprocess`: the prepared
  on-disk format and the shared crop / z-score / label steps.
- :mod:`~passion_kit.data.phantom`: the built-in procedural dataset.
- :mod:`~passion_kit.data.brats`, :mod:`~passion_kit.data.msd`,
  :mod:`~passion_kit.data.myops`: real datasets to the prepared format.
- :mod:`~passion_kit.data.splits`: imbalanced missing-rate splits.
- :mod:`~passion_kit.data.dataset`, :mod:`~passion_kit.data.transforms`: torch side.
"""

from __future__ import annotations

from passion_kit.data.dataset import SETTINGS, PreparedDataset, load_split
from passion_kit.data.description import (
    BRATS2020,
    BUILTIN,
    MSD_TASK01,
    MYOPS2020,
    PHANTOM,
    DatasetDescription,
    data_root,
    load_description,
    save_description,
)
from passion_kit.data.modalities import BRATS, MYOPS, ModalitySet, default_combinations
from passion_kit.data.phantom import generate_case, informativeness, make_phantom
from passion_kit.data.splits import (
    MissingRateSplit,
    generate_missing_rate_split,
    rates_from_name,
    read_split,
    write_split,
)
from passion_kit.data.transforms import TrainAugment, augment_for

__all__ = [
    "BRATS",
    "BRATS2020",
    "BUILTIN",
    "MSD_TASK01",
    "MYOPS",
    "MYOPS2020",
    "PHANTOM",
    "SETTINGS",
    "DatasetDescription",
    "MissingRateSplit",
    "ModalitySet",
    "PreparedDataset",
    "TrainAugment",
    "augment_for",
    "data_root",
    "default_combinations",
    "generate_case",
    "generate_missing_rate_split",
    "informativeness",
    "load_description",
    "load_split",
    "make_phantom",
    "rates_from_name",
    "read_split",
    "save_description",
    "write_split",
]
