"""Fixtures of the data tests (helpers live in data_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from data_helpers import write_brats_case


@pytest.fixture
def make_brats_official(tmp_path: Path) -> Callable[..., Path]:
    """Official layout: MICCAI_BraTS2020_TrainingData/BraTS20_Training_XXX/*.nii.gz."""

    def make(numbers=(1, 2, 300)) -> Path:
        root = tmp_path / "MICCAI_BraTS2020_TrainingData"
        for n in numbers:
            write_brats_case(root, n)
        (root / "name_mapping.csv").write_text("BraTS_2020_subject_ID\n")
        return root

    return make
