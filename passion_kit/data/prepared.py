"""Reading and writing the prepared-data format shared by every dataset (docs/data.md).

::

    <root>/dataset.json                  the DatasetDescription
    <root>/cases/<case_id>/image.npy     float32 (M, H, W, D), normalised
    <root>/cases/<case_id>/label.npy     uint8 (H, W, D), classes 0..K-1
    <root>/cases/<case_id>/meta.json     crop bounds, original shape/affine, normalisation
    <root>/splits/{train,val,test}.txt
    <root>/splits/missing_rates/<name>.csv

A case directory appears only when complete: it is written under a hidden temporary name
and renamed. :func:`prepare_all` runs a per-case function over many sources with worker
processes and a progress bar, skips cases that are already there (resumable) and reports
every failure at the end, naming the offending file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from passion_kit.io import (
    TMP_PREFIX,
    atomic_write_text,
    check_free_space,
    check_writable,
    read_text,
    umask,
)

__all__ = [
    "CASES",
    "TMP_PREFIX",
    "PreparationError",
    "PreparedCase",
    "check_case_arrays",
    "atomic_write_text",
    "case_dir",
    "list_cases",
    "prepare_all",
    "read_case",
    "read_case_ids",
    "write_case",
    "write_case_ids",
]

CASES = "cases"


class PreparationError(RuntimeError):
    """One or more cases could not be prepared; the message lists each case and its reason."""


@dataclass
class PreparedCase:
    """One case ready to be written: arrays in the prepared layout plus its metadata."""

    case_id: str
    image: np.ndarray  # (M, H, W, D) float32
    label: np.ndarray  # (H, W, D) uint8
    meta: dict[str, Any]


def case_dir(root: str | os.PathLike, case_id: str) -> Path:
    """``<root>/cases/<case_id>``; a case id must be a plain folder name."""
    case_id = str(case_id)
    if not case_id or case_id in (".", "..") or any(c in case_id for c in "/\\\0"):
        raise ValueError(f"case id {case_id!r} must be a plain folder name (no path parts)")
    return Path(root) / CASES / case_id


def write_case(root: str | os.PathLike, case: PreparedCase) -> Path:
    """Write one case atomically under ``<root>/cases/<case_id>``.

    Raises:
        FileExistsError: if the case directory already exists (prepared cases are never
            overwritten; delete the directory to redo it).
        ValueError: if the arrays do not have the prepared dtypes and shapes.
    """
    img, lab = case.image, case.label
    if img.dtype != np.float32 or img.ndim != 4:
        raise ValueError(
            f"{case.case_id}: image must be float32 (M, H, W, D), got {img.dtype} {img.shape}"
        )
    if lab.dtype != np.uint8 or lab.shape != img.shape[1:]:
        raise ValueError(
            f"{case.case_id}: label must be uint8 of shape {img.shape[1:]}, "
            f"got {lab.dtype} {lab.shape}"
        )
    final = case_dir(root, case.case_id)
    if final.exists():
        raise FileExistsError(f"{final}: case already prepared; delete it to prepare it again")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{case.case_id}-", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; give the usual mode
        np.save(tmp / "image.npy", np.ascontiguousarray(img))
        np.save(tmp / "label.npy", np.ascontiguousarray(lab))
        (tmp / "meta.json").write_text(json.dumps(case.meta, indent=1) + "\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_case(
    root: str | os.PathLike, case_id: str, *, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load ``(image (M, H, W, D) float32, label (H, W, D) uint8, meta)`` of a prepared case."""
    d = case_dir(root, case_id)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such prepared case")
    mode = "r" if mmap else None
    image, label = (load_array(d / name, mode) for name in ("image.npy", "label.npy"))
    check_case_arrays(image, label, str(d))
    meta = json.loads((d / "meta.json").read_text())
    return image, label, meta


def check_case_arrays(
    image: np.ndarray, label: np.ndarray, where: str, num_modalities: int | None = None
) -> None:
    """Refuse a case whose ``image.npy`` (M, *size) and ``label.npy`` (size) do not fit."""
    m = image.shape[0] if num_modalities is None else num_modalities
    if image.ndim != 4 or image.shape[0] != m or label.shape != image.shape[1:]:
        raise ValueError(
            f"{where}: image.npy {image.shape} and label.npy {label.shape} do not fit; "
            f"expected ({'M' if num_modalities is None else m}, *size) and size"
        )


def list_cases(root: str | os.PathLike) -> list[str]:
    """Sorted ids of the complete cases under ``<root>/cases`` (temporary folders excluded)."""
    d = Path(root) / CASES
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_case_ids(path: str | os.PathLike) -> list[str]:
    """Read a case list (one id per line; blank lines ignored) such as ``train.txt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: case list not found")
    ids = [line.strip() for line in read_text(path, "a case list").splitlines() if line.strip()]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate case ids {dup[:5]}")
    return ids


def load_array(path: Path, mode: str | None) -> np.ndarray:
    """``np.load`` with an error that names the file (truncated, foreign or pickled)."""
    try:
        return np.load(path, mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; prepare the case again") from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(
            f"{path}: not a readable .npy array ({exc}); prepare the case again"
        ) from None


def write_case_ids(path: str | os.PathLike, ids: Iterable[str]) -> None:
    """Write a case list atomically, one id per line."""
    atomic_write_text(path, "".join(f"{i}\n" for i in ids))


def _remove_stale_temps(root: Path) -> None:
    # Leftovers of an interrupted run: never complete cases, always safe to delete.
    d = root / CASES
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _run_one(fn: Callable[[Any], PreparedCase], source: Any, root: str) -> str:
    case = fn(source)
    write_case(root, case)
    return case.case_id


def prepare_all(
    sources: Sequence[Any],
    case_ids: Sequence[str],
    fn: Callable[[Any], PreparedCase],
    root: str | os.PathLike,
    *,
    workers: int = 1,
    progress: bool = True,
    desc: str = "preparing",
    case_bytes: int = 0,
) -> list[str]:
    """Prepare every source whose case is not yet on disk.

    Args:
        sources: one picklable description of the input of each case (e.g. file paths).
        case_ids: the case id each source will produce (used to skip finished cases).
        fn: a picklable top-level function mapping a source to a :class:`PreparedCase`.
        root: the prepared dataset folder.
        workers: worker processes; 1 runs in this process.
        progress: show a tqdm progress bar.
        desc: progress bar label.
        case_bytes: about what one prepared case takes on disk; with the folder's
            writability, the free space for the cases to do is checked before any work.

    Returns:
        The case ids prepared by this call (already-prepared ones are skipped untouched).

    Raises:
        PreparationError: after all other cases are done, listing each failed case with
            its error (which names the offending file). Failed cases leave nothing behind.
    """
    if len(sources) != len(case_ids):
        raise ValueError(f"got {len(sources)} sources but {len(case_ids)} case ids")
    root = Path(root)
    check_writable(root, "the prepared cases")
    _remove_stale_temps(root)
    done = set(list_cases(root))
    todo = [(s, c) for s, c in zip(sources, case_ids, strict=True) if c not in done]
    check_free_space(root, len(todo) * case_bytes, f"{len(todo)} prepared case(s)")
    failures: list[str] = []
    prepared: list[str] = []
    bar = tqdm(total=len(todo), desc=desc, disable=not progress or not todo, unit="case")
    if workers <= 1:
        for source, cid in todo:
            try:
                prepared.append(_run_one(fn, source, str(root)))
            except Exception as exc:  # collected, re-raised below
                failures.append(f"{cid}: {exc}")
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_one, fn, s, str(root)): c for s, c in todo}
            for fut in as_completed(futures):
                try:
                    prepared.append(fut.result())
                except Exception as exc:  # collected, re-raised below
                    failures.append(f"{futures[fut]}: {exc}")
                bar.update()
    bar.close()
    if failures:
        failures.sort()
        raise PreparationError(
            f"{len(failures)} of {len(todo)} case(s) failed ({len(prepared)} prepared, "
            f"{len(done)} already there); nothing was written for the failed ones:\n  "
            + "\n  ".join(failures)
        )
    return sorted(prepared)
