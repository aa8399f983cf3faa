"""Atomic writes: an interrupted run never leaves a truncated file that looks complete."""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TMP_PREFIX",
    "BadNameError",
    "NoSpaceError",
    "umask",
    "atomic_write",
    "read_text",
    "remove_stale_temps",
    "check_writable",
    "check_free_space",
    "check_name",
    "inside",
    "RunInUseError",
    "RunLock",
    "atomic_write_text",
    "atomic_torch_save",
    "write_csv",
    "markdown_table",
    "USER_ERRORS",
    "error_line",
    "report_errors",
]

TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"


class BadNameError(ValueError):
    """A name or path part that would lead outside its folder (a bad argument: exit 2)."""

    exit_status = 2


def check_name(name: str, what: str) -> str:
    """``name`` if it can be one part of a path: not empty, no separator, not ``.``/``..``,
    at most 255 bytes; else a :class:`BadNameError` (a ValueError) naming ``what``."""
    if not isinstance(name, str) or not name.strip():
        raise BadNameError(f"{what} must be a non-empty name, got {name!r}")
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise BadNameError(f"{what} must be a name, not a path, got {name!r}")
    if len(name.encode()) > 255:
        raise BadNameError(f"{what} is {len(name.encode())} bytes long; a name has at most 255")
    return name


def inside(root: str | os.PathLike, *parts: str, what: str) -> Path:
    """``root / parts``, refused unless it resolves inside ``root`` (symlinks followed)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise BadNameError(f"{what} {Path(*parts)} leads outside {root}: refused")
    return path


class RunLock:
    """One process per folder: a lock file holding the holder's PID and host.

    Taken with ``O_EXCL`` before anything in the folder is written or cleaned; a second
    process stops with a line naming the holder. A lock left by a process that has died
    on this host is taken over with a notice. Use as a context manager.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "this run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.held = False

    def __enter__(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except PermissionError:
                raise PermissionError(f"{self.folder}: cannot write its lock file there") from None
            except FileExistsError:
                if not self._stale():
                    raise RunInUseError(
                        f"{self.folder} is in use by {self._holder()} ({self.what}); wait for "
                        f"it to end, or delete {self.path} if that process is gone"
                    ) from None
                print(f"notice: {self.path} was left by {self._holder()}, which has ended")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            return self
        raise RuntimeError(f"{self.path}: could not take the lock")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> str:
        try:
            pid, host = self.path.read_text().split()[:2]
        except (OSError, ValueError):
            return "an unknown process"
        return f"process {pid} on {host}"

    def _stale(self) -> bool:
        """Whether the lock's holder is a process of this host that no longer runs."""
        try:
            pid, host = self.path.read_text().split()[:2]
            pid = int(pid)
        except (OSError, ValueError):
            return False
        if host != socket.gethostname():
            return False
        if pid == os.getpid():
            return False  # this process holds it already
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def umask() -> int:
    """The process umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunInUseError(RuntimeError):
    """Another live process holds the folder's lock (:class:`RunLock`)."""


class NoSpaceError(OSError):
    """The disk filled up while writing a file (what was there before is unchanged)."""


def _out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an error it was raised from is a full disk (torch wraps it)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` keeps its old content; a
    full disk raises :class:`NoSpaceError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    except OSError as exc:  # name the file asked for, not the temporary one
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(exc):
            raise NoSpaceError(
                errno.ENOSPC,
                f"{path}: no space left on device (nothing written; the previous file, if "
                f"any, is unchanged)",
            ) from exc
        raise


def read_text(path: str | os.PathLike, what: str) -> str:
    """A text file's content, with one clear error for a binary or unreadable file."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file ({what} expected)") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a file ({what} expected)") from None


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``folder``."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(TMP_PREFIX) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Refuse, before long work, a folder where ``what`` could not be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"{folder}: cannot write {what} there ({exc.strerror})") from None


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse, before long work, a disk with less than ``needed`` bytes free."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise NoSpaceError(
            errno.ENOSPC,
            f"{folder}: {free / 2**20:.0f} MiB free, {what} needs about {needed / 2**20:.0f} MiB",
        )


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


# Errors that mean bad input or a machine that cannot do what was asked (a file, key or
# value; a full or read-only disk; a run in use). Anything else is a bug and keeps its
# traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, RunInUseError)


def error_line(exc: BaseException) -> str:
    """The one line a user error prints: its message, or for an error of the system's own
    (``[Errno 30] Read-only file system: 'x'``) the file and the reason."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def report_errors(body: Callable[[], int], *, debug: bool = False) -> int:
    """``body()``'s exit status; a user error prints ``error: <one line>`` on stderr and
    gives the error's ``exit_status`` (2 for a bad argument, as argparse) or 1.
    ``debug`` lets it raise, with its traceback."""
    try:
        return body()
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_status", 1)
