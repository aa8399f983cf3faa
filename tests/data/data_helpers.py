"""Writers of tiny files in the real on-disk layouts and other helpers for the data tests."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]

BRATS_SHAPE = (20, 18, 14)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def brats_arrays(seed: int, shape=BRATS_SHAPE) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four positive 'brain' images (zero outside a box) and a label with 0, 1, 2, 4."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, dtype=bool)
    brain[2:-2, 3:-2, 1:-1] = True
    images = {}
    for i, suffix in enumerate(("flair", "t1ce", "t1", "t2")):
        img = (rng.uniform(50, 100, shape) * (i + 1)).astype(np.float32)
        images[suffix] = np.where(brain, img, 0).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[6:10, 6:10, 4:8] = 2
    label[7:9, 7:9, 5:7] = 1
    label[8, 8, 6] = 4
    return images, label


def write_brats_case(
    parent: Path, number: int, *, ext: str = ".nii.gz", seg_name: str | None = None
) -> Path:
    """A raw BraTS2020 case folder ``BraTS20_Training_<number>`` in the real naming."""
    name = f"BraTS20_Training_{number:03d}"
    folder = parent / name
    images, label = brats_arrays(number)
    for suffix, img in images.items():
        save_nifti(folder / f"{name}_{suffix}{ext}", img)
    save_nifti(folder / (seg_name or f"{name}_seg{ext}"), label)
    return folder


def load_script(name: str):
    """Import ``data_scripts/<name>.py`` as a module (its ``main(argv)`` is then callable)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file under ``root``: proof that files were not rewritten."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = (Path(dirpath) / f).stat()
            out[str(Path(dirpath) / f)] = (st.st_ino, st.st_mtime_ns)
    return out


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
