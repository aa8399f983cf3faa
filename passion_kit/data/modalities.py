"""Modalities and availability masks for any number of modalities M.

An availability mask is a boolean vector of length M in the dataset's channel order.
The 2^M - 1 non-empty masks ("combinations") are indexed by ``mask_id``. BraTS and
MyoPS use the official PASSION tables (docs/method.md A.1, docs/data.md) so that published split
files and result tables line up id for id; any other M gets a documented default
order: by number of modalities, then by channel order.

Example::

    >>> from passion_kit.data.modalities import BRATS
    >>> BRATS.mask(12)
    (True, True, False, True)
    >>> BRATS.name(12)
    'flair+t1c+t2'
    >>> BRATS.mask_id((True, True, False, True))
    12
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["ModalitySet", "BRATS", "MYOPS", "default_combinations"]

Mask = tuple[bool, ...]


def default_combinations(num_modalities: int) -> tuple[Mask, ...]:
    """All non-empty masks ordered by size, then by channel order (lexicographic on indices)."""
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    out = []
    for size in range(1, num_modalities + 1):
        for chosen in itertools.combinations(range(num_modalities), size):
            out.append(tuple(m in chosen for m in range(num_modalities)))
    return tuple(out)


@dataclass(frozen=True)
class ModalitySet:
    """Names, channel order and the table of modality combinations of a dataset.

    Args:
        modalities: modality names in channel order, e.g. ``("flair", "t1c", "t1", "t2")``.
        combinations: the 2^M - 1 non-empty masks, in ``mask_id`` order. Defaults to
            :func:`default_combinations`.
        full_name: the name of the all-modality combination ("all" in the official tables).
    """

    modalities: tuple[str, ...]
    combinations: tuple[Mask, ...] = ()
    full_name: str = "all"

    def __post_init__(self) -> None:
        m = len(self.modalities)
        if m < 1 or len(set(self.modalities)) != m:
            raise ValueError(f"modalities must be distinct names, got {self.modalities!r}")
        combos = tuple(tuple(bool(v) for v in c) for c in self.combinations)
        if not combos:
            combos = default_combinations(m)
        expected = set(default_combinations(m))
        if len(combos) != len(expected) or set(combos) != expected:
            raise ValueError(
                f"combinations must list each of the {len(expected)} non-empty masks of "
                f"{m} modalities exactly once, got {len(combos)} entries"
            )
        object.__setattr__(self, "combinations", combos)

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_combinations(self) -> int:
        return len(self.combinations)

    def mask(self, mask_id: int) -> Mask:
        """The availability mask of ``mask_id``."""
        if not 0 <= int(mask_id) < self.num_combinations:
            raise ValueError(
                f"mask_id must be in [0, {self.num_combinations - 1}], got {mask_id!r}"
            )
        return self.combinations[int(mask_id)]

    def mask_id(self, mask: Sequence[bool]) -> int:
        """The id of an availability mask (a sequence of M booleans, not all False)."""
        key = tuple(bool(v) for v in mask)
        if len(key) != self.num_modalities:
            raise ValueError(
                f"mask must have {self.num_modalities} entries ({', '.join(self.modalities)}), "
                f"got {len(key)}"
            )
        if not any(key):
            raise ValueError("mask must contain at least one available modality, got all False")
        return self.combinations.index(key)

    def name(self, mask_id: int) -> str:
        """Human-readable name, e.g. ``'flair+t1c+t2'`` or ``'all'``."""
        mask = self.mask(mask_id)
        if all(mask):
            return self.full_name
        return "+".join(n for n, present in zip(self.modalities, mask, strict=True) if present)

    def names(self) -> list[str]:
        return [self.name(i) for i in range(self.num_combinations)]

    def id_from_name(self, name: str) -> int:
        """Inverse of :meth:`name`."""
        for i in range(self.num_combinations):
            if self.name(i) == name:
                return i
        raise ValueError(f"unknown combination {name!r}; expected one of {self.names()}")

    def index(self, modality: str) -> int:
        """Channel index of a modality name."""
        try:
            return self.modalities.index(modality)
        except ValueError:
            raise ValueError(
                f"unknown modality {modality!r}; expected one of {list(self.modalities)}"
            ) from None

    def single_id(self, modality: int | str) -> int:
        """The id of the combination holding only one modality."""
        m = self.index(modality) if isinstance(modality, str) else int(modality)
        return self.mask_id([i == m for i in range(self.num_modalities)])

    def subset_ids(self, mask: Sequence[bool]) -> list[int]:
        """Ids of every non-empty subset of ``mask`` (the official ``pos_mask_ids``), ascending."""
        key = tuple(bool(v) for v in mask)
        self.mask_id(key)  # validates
        return [
            i
            for i, c in enumerate(self.combinations)
            if all(k or not v for v, k in zip(c, key, strict=True))
        ]

    def mask_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """All combinations as a bool tensor of shape (2^M - 1, M), row i = ``mask(i)``."""
        return torch.tensor(self.combinations, dtype=torch.bool, device=device)


# Spec A.1: channel order [FLAIR, T1c, T1, T2]; ids as in the official code and CSVs.
BRATS = ModalitySet(
    modalities=("flair", "t1c", "t1", "t2"),
    combinations=(
        (False, False, False, True),  # 0 t2
        (False, True, False, False),  # 1 t1c
        (False, False, True, False),  # 2 t1
        (True, False, False, False),  # 3 flair
        (False, True, False, True),  # 4 t1c+t2
        (False, True, True, False),  # 5 t1c+t1
        (True, False, True, False),  # 6 flair+t1
        (False, False, True, True),  # 7 t1+t2
        (True, False, False, True),  # 8 flair+t2
        (True, True, False, False),  # 9 flair+t1c
        (True, True, True, False),  # 10 flair+t1c+t1
        (True, False, True, True),  # 11 flair+t1+t2
        (True, True, False, True),  # 12 flair+t1c+t2
        (False, True, True, True),  # 13 t1c+t1+t2
        (True, True, True, True),  # 14 all
    ),
)

# The MyoPS channel order (docs/data.md): [bSSFP (C0), LGE (DE), T2]; ids as in the authors' MyoPS
# code.
MYOPS = ModalitySet(
    modalities=("bssfp", "lge", "t2"),
    combinations=(
        (False, False, True),  # 0 t2
        (False, True, False),  # 1 lge
        (True, False, False),  # 2 bssfp
        (False, True, True),  # 3 lge+t2
        (True, True, False),  # 4 bssfp+lge
        (True, False, True),  # 5 bssfp+t2
        (True, True, True),  # 6 all
    ),
)
