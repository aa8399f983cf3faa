"""Prepare MyoPS2020 per the authors' 2D protocol (each slice a case, 256 x 256 centre crop).

    python data_scripts/prepare_myops2020.py --raw ~/MyoPS2020 --workers 2

--raw holds train25/ and train25_myops_gd/ (official release) or per-case folders
myops_training_1XX/ (the authors' layout). Writes <out> (default <data root>/myops2020) with
the authors' train/test lists and their six missing-rate splits (mr357.csv, ...).
"""

from __future__ import annotations

import sys

from passion_kit.data.cli import preparation_parser, run_preparation
from passion_kit.data.myops import CROP, prepare_myops2020


def main(argv: list[str] | None = None) -> int:
    ap = preparation_parser(__doc__, "myops2020")
    ap.add_argument("--raw", required=True, help="folder with the MyoPS2020 training NIfTI files")
    ap.add_argument("--crop", type=int, default=CROP, help="in-plane centre crop; 0 keeps all")
    args = ap.parse_args(argv)
    return run_preparation(
        prepare_myops2020,
        args,
        "myops2020",
        what="slice case(s)",
        raw_root=args.raw,
        crop=args.crop or None,
    )


if __name__ == "__main__":
    sys.exit(main())
