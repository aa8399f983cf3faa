"""The torch dataset over any prepared dataset, in the three training settings (docs/method.md A.2).

Every sample is a dict (docs/data.md, "Torch side"); the default collate stacks them into
``image`` float32 (B, M, H, W, D), ``label`` int64 (B, H, W, D), ``mask`` bool (B, M)
and ``case_id`` (a list of str).

Settings (``setting=``):

- ``"pdt"``: all modalities are real; ``mask`` is a uniformly drawn combination id.
- ``"idt"``: ``mask`` is the case's fixed row of the missing-rate split; absent channels
  are set to 0 (after augmentation, so no jitter brings them back).
- ``"idt_drop"``: like idt, but ``mask`` is drawn uniformly from the non-empty subsets of
  the case's row (``pos_mask_ids``); channels outside the drawn mask are zeroed.
- ``"full"``: every modality present (evaluation forces its own masks).

Randomness (masks and augmentation) is drawn from a seed taken from torch's RNG, which
the DataLoader seeds differently in every worker, so workers never repeat each other
and ``torch.manual_seed`` makes a run reproducible.

Example::

    ds = PreparedDataset("data/phantom", "train", setting="idt", missing_rates="mr2468",
                         augment=TrainAugment(patch_size=48))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    n_m, n = ds.availability()          # for the inverse-availability weights N / n_m
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from passion_kit.data.description import DatasetDescription, load_description
from passion_kit.data.prepared import (
    case_dir,
    check_case_arrays,
    list_cases,
    load_array,
    read_case_ids,
)
from passion_kit.data.splits import MissingRateSplit, read_split
from passion_kit.data.transforms import TrainAugment

__all__ = ["SETTINGS", "PreparedDataset", "load_split"]

SETTINGS = ("pdt", "idt", "idt_drop", "full")


def load_split(root: str | os.PathLike, name_or_path: str | os.PathLike) -> MissingRateSplit:
    """A missing-rate split of a prepared dataset: a name under ``splits/missing_rates``
    (``"mr2468"``) or a CSV path, read with the dataset's modalities."""
    description = load_description(root)
    path = Path(name_or_path)
    if not path.suffix:
        path = Path(root) / "splits" / "missing_rates" / f"{name_or_path}.csv"
    return read_split(path, description.modalities)


def _split_file(root: Path, name: str) -> Path:
    """``<root>/splits/<name>.txt``; a name that would leave ``splits/`` is refused."""
    folder = (root / "splits").resolve()
    path = (folder / f"{name}.txt").resolve()
    if not name or folder not in path.parents:
        raise ValueError(
            f"split {name!r}: expected the name of a case list under {root / 'splits'} "
            f"(e.g. 'test'), not a path"
        )
    return path


class PreparedDataset(Dataset):
    """Cases of a prepared dataset as training or evaluation samples.

    Args:
        root: the prepared dataset folder (with ``dataset.json``).
        split: ``"train"``, ``"val"``, ``"test"`` (``splits/<split>.txt``) or a list of ids.
        setting: one of :data:`SETTINGS`.
        missing_rates: for idt/idt_drop, a split name under ``splits/missing_rates``, a CSV
            path or a :class:`MissingRateSplit`. Optional for pdt/full (then only used by
            :meth:`availability`).
        augment: training augmentation; None returns whole cases unchanged.

    Raises:
        FileNotFoundError: if cases of the split are not prepared (names them).
        ValueError: for an unknown setting, or idt cases without a row in the split.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | Sequence[str] = "train",
        *,
        setting: str = "idt",
        missing_rates: str | os.PathLike | MissingRateSplit | None = None,
        augment: TrainAugment | None = None,
    ) -> None:
        if setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
        self.root = Path(root)
        self.description: DatasetDescription = load_description(self.root)
        self.setting = setting
        self.augment = augment
        if isinstance(split, str):
            self.case_ids = read_case_ids(_split_file(self.root, split))
        else:
            self.case_ids = list(split)
        prepared = set(list_cases(self.root))
        missing = sorted(set(self.case_ids) - prepared)
        if missing:
            raise FileNotFoundError(
                f"{self.root / 'cases'}: {len(missing)} case(s) of the split are not prepared, "
                f"e.g. {missing[:3]}; run the preparation script for this dataset"
            )
        if setting in ("idt", "idt_drop") and missing_rates is None:
            raise ValueError(f"setting {setting!r} needs missing_rates (e.g. 'mr2468')")
        self.split: MissingRateSplit | None = None
        if isinstance(missing_rates, MissingRateSplit):
            self.split = missing_rates
        elif missing_rates is not None:
            self.split = load_split(self.root, missing_rates)
        if self.split is not None:
            where = (
                f"the missing-rate split {missing_rates}"
                if isinstance(missing_rates, str | os.PathLike)
                else "the missing-rate split"
            )
            absent = sorted(set(self.case_ids) - set(self.split.case_ids))
            if absent:
                raise ValueError(f"{len(absent)} case(s) have no row in {where}, e.g. {absent[:3]}")
            unknown = sorted(set(self.split.case_ids) - prepared)
            if unknown:
                warnings.warn(
                    f"{where} has rows for {len(unknown)} case(s) that {self.root} does not "
                    f"hold, e.g. {unknown[:3]} (ignored); is it the split of another dataset?",
                    stacklevel=2,
                )
        self._background = [self._read_background(c) for c in self.case_ids]

    def _read_background(self, case_id: str) -> list[float] | None:
        meta = json.loads((case_dir(self.root, case_id) / "meta.json").read_text())
        return (meta.get("normalization") or {}).get("background")

    def __len__(self) -> int:
        return len(self.case_ids)

    def case_mask(self, index: int) -> tuple[bool, ...]:
        """The fixed availability of case ``index`` (all True without a split)."""
        if self.split is None:
            return (True,) * self.description.num_modalities
        return self.split.mask_of(self.case_ids[index])

    def availability(self) -> tuple[torch.Tensor, int]:
        """``(n_m, N)``: per-modality count of cases that have the modality, and the number
        of cases, for this dataset's cases (pdt/full: every modality counts for every case)."""
        if self.setting in ("pdt", "full"):
            m = self.description.num_modalities
            return torch.full((m,), len(self), dtype=torch.long), len(self)
        masks = torch.tensor([self.case_mask(i) for i in range(len(self))], dtype=torch.long)
        return masks.sum(0), len(self)

    def __getitem__(self, index: int) -> dict:
        case_id = self.case_ids[index]
        d = case_dir(self.root, case_id)
        image = load_array(d / "image.npy", "r")
        label = load_array(d / "label.npy", "r")
        m = self.description.modalities.num_modalities
        check_case_arrays(image, label, f"case {case_id} ({d})", m)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        ms = self.description.modalities
        if self.setting == "pdt":
            mask = ms.mask(int(rng.integers(ms.num_combinations)))
        elif self.setting == "idt_drop":
            options = ms.subset_ids(self.case_mask(index))
            mask = ms.mask(options[int(rng.integers(len(options)))])
        else:
            mask = self.case_mask(index)
        if self.augment is not None:
            background = self._background[index]
            if background is None:  # raw MRI >= 0: background is each channel's minimum
                background = [float(image[c].min()) for c in range(image.shape[0])]
            try:
                image, label = self.augment(image, label, rng, background)
            except ValueError as exc:
                raise ValueError(f"case {case_id}: {exc}") from None
        else:
            image = np.array(image, dtype=np.float32)
            label = np.array(label, dtype=np.int64)
        if self.setting in ("idt", "idt_drop"):
            image[~np.array(mask)] = 0.0
        classes = len(self.description.classes)
        if label.size and (label.min() < 0 or label.max() >= classes):
            raise ValueError(
                f"case {case_id} ({d / 'label.npy'}): label values "
                f"{[int(v) for v in np.unique(label)[:8]]} "
                f"outside the dataset's classes 0..{classes - 1}"
            )
        return {
            "image": torch.from_numpy(image),
            "label": torch.from_numpy(label),
            "mask": torch.tensor(mask, dtype=torch.bool),
            "case_id": case_id,
        }
