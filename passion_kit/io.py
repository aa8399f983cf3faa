"""Atomic writes: an interrupted run never leaves a truncated file that looks complete."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TMP_PREFIX",
    "umask",
    "atomic_write",
    "atomic_write_text",
    "atomic_torch_save",
    "write_csv",
    "markdown_table",
]

TMP_PREFIX = ".tmp-"


def umask() -> int:
    """The process umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, newline: str | None = None) -> None:
    """Write ``text`` to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline=newline) as f:
            f.write(text)

    atomic_write(path, write)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: torch rejects some temporary names
            torch.save(obj, f)

    atomic_write(path, write)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write dict rows as CSV atomically; columns in first-seen order, missing cells empty."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue(), newline="")


def markdown_table(rows: Any, *, digits: int = 4) -> str:
    """A pandas DataFrame as a GitHub Markdown table (floats with ``digits`` decimals)."""
    cols = [str(c) for c in rows.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in rows.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
