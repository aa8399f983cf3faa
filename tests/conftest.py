from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom (10 cases of 24^3: 6 train, 1 val, 3 test) shared by read-only tests."""
    from passion_kit.data.phantom import make_phantom

    root = tmp_path_factory.mktemp("phantom") / "phantom"
    make_phantom(root, num_cases=10, size=24, seed=3, progress=False)
    return root


def tiny_config(phantom_root: Path, run_dir: Path, *overrides: str):
    """The CPU preset shrunk to seconds: 16^3 patches, 2 epochs, no progress bars."""
    from passion_kit.config import ExperimentConfig

    return ExperimentConfig.preset("cpu").override(
        [
            f"data.root={phantom_root}",
            f"train.run_dir={run_dir}",
            "data.patch_size=16",
            "train.epochs=2",
            "train.progress=false",
            "eval.window=16",
            *overrides,
        ]
    )
