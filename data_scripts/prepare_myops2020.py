"""Prepare MyoPS2020 per the authors' 2D protocol (each slice a case, 256 x 256 centre crop).

    python data_scripts/prepare_myops2020.py --raw ~/MyoPS2020 --workers 2

--raw holds train25/ and train25_myops_gd/ (official release) or per-case folders
myops_training_1XX/ (the authors' layout). Writes <out> (default <data root>/myops2020) with
the authors' train/test lists and their six missing-rate splits (mr357.csv, ...).
"""

from __future__ import annotations

import argparse
import sys

from passion_kit.data.description import data_root
from passion_kit.data.myops import CROP, prepare_myops2020
from passion_kit.data.prepared import PreparationError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--raw", required=True, help="folder with the MyoPS2020 training NIfTI files")
    ap.add_argument("--out", default=None, help="default <data root>/myops2020")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--crop", type=int, default=CROP, help="in-plane centre crop; 0 keeps all")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    out = args.out or data_root() / "myops2020"
    try:
        done = prepare_myops2020(
            out,
            raw_root=args.raw,
            workers=args.workers,
            crop=args.crop or None,
            progress=not args.quiet,
        )
    except (PreparationError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: prepared {len(done)} new slice case(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
