"""Prepare BraTS2020 (raw NIfTI, official or Kaggle layout, or the RFNet npy layout).

    python data_scripts/prepare_brats2020.py --raw ~/MICCAI_BraTS2020_TrainingData --workers 4
    python data_scripts/prepare_brats2020.py --rfnet-npy ~/BRATS2020_Training_none_npy

Writes <out> (default <data root>/brats2020, data root = $PASSION_KIT_DATA or ./data) in the
prepared format with the official case lists and missing-rate splits. Resumable: prepared
cases are skipped untouched; a failed case leaves nothing and is reported at the end.
"""

from __future__ import annotations

import argparse
import sys

from passion_kit.data.brats import prepare_brats2020
from passion_kit.data.description import data_root
from passion_kit.data.prepared import PreparationError
from passion_kit.data.preprocess import CROP_MODES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--raw", help="folder holding BraTS20_Training_XXX case folders")
    src.add_argument("--rfnet-npy", help="folder holding vol/ and seg/ (RFNet/PASSION npy)")
    ap.add_argument("--out", default=None, help="default <data root>/brats2020")
    ap.add_argument("--workers", type=int, default=1)
    crop_help = "official: RFNet's [min:max) crop, which drops the last index (spec G.15)"
    ap.add_argument("--crop-mode", default="official", choices=CROP_MODES, help=crop_help)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    out = args.out or data_root() / "brats2020"
    try:
        done = prepare_brats2020(
            out,
            raw_root=args.raw,
            rfnet_root=args.rfnet_npy,
            workers=args.workers,
            crop_mode=args.crop_mode,
            progress=not args.quiet,
        )
    except (PreparationError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: prepared {len(done)} new case(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
