"""What the ``data_scripts/prepare_*.py`` commands share: their common options (``--out``,
``--workers``, ``--quiet``) and how they report success and failure."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from passion_kit.data.description import data_root
from passion_kit.data.prepared import PreparationError
from passion_kit.io import USER_ERRORS, error_line

__all__ = ["preparation_parser", "run_preparation"]


def preparation_parser(doc: str, dataset: str) -> argparse.ArgumentParser:
    """A parser with the options every preparation takes; the script adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=None, help=f"default <data root>/{dataset}")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def run_preparation(
    prepare: Callable[..., list[str]],
    args: argparse.Namespace,
    dataset: str,
    *,
    what: str = "case(s)",
    **options,
) -> int:
    """Run ``prepare(out, workers=, progress=, **options)``; the exit status of the script.

    ``out`` is ``--out`` or ``<data root>/<dataset>``. A bad input (the error names the
    file and what was expected) prints ``error: ...`` on stderr and returns 1.
    """
    out = Path(args.out) if args.out else data_root() / dataset
    try:
        done = prepare(out, workers=args.workers, progress=not args.quiet, **options)
    except PreparationError as exc:  # one line, then one line per failed case
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except USER_ERRORS as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    print(f"{out}: prepared {len(done)} new {what}")
    return 0
