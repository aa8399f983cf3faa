"""Datasets, modalities, splits and transforms (never imports models)."""

from __future__ import annotations

from passion_kit.data.modalities import BRATS, MYOPS, ModalitySet, default_combinations

__all__ = ["BRATS", "MYOPS", "ModalitySet", "default_combinations"]
