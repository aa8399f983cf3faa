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
    """A small phantom (10 cases of 32^3: 6 train, 1 val, 3 test) shared by read-only tests."""
    from passion_kit.data.phantom import make_phantom

    root = tmp_path_factory.mktemp("phantom") / "phantom"
    make_phantom(root, num_cases=10, size=32, seed=3, progress=False)
    return root


# The smallest patch each backbone accepts (the transformers need multiples of 16, >= 32).
SMALLEST_PATCH = {"rfnet": 16, "mmformer": 32, "m2ftrans": 32}


def tiny_config(phantom_root: Path, run_dir: Path, *overrides: str, backbone: str = "rfnet"):
    """The CPU preset shrunk to seconds: smallest patches, 2 epochs, no progress bars."""
    from passion_kit.config import ExperimentConfig

    size = SMALLEST_PATCH[backbone]
    return ExperimentConfig.preset("cpu").override(
        [
            f"data.root={phantom_root}",
            "data.phantom_cases=0",  # use the shared phantom as it is
            f"train.run_dir={run_dir}",
            f"model.backbone={backbone}",
            f"data.patch_size={size}",
            "train.epochs=2",
            "train.progress=false",
            f"eval.window={size}",
            *overrides,
        ]
    )
