"""Prepare BraTS2020 (raw NIfTI, official or Kaggle layout, or the RFNet npy layout).

    python data_scripts/prepare_brats2020.py --raw ~/MICCAI_BraTS2020_TrainingData --workers 4
    python data_scripts/prepare_brats2020.py --rfnet-npy ~/BRATS2020_Training_none_npy

Writes <out> (default <data root>/brats2020, data root = $PASSION_KIT_DATA or ./data) in the
prepared format with the official case lists and missing-rate splits. Resumable: prepared
cases are skipped untouched; a failed case leaves nothing and is reported at the end.
"""

from __future__ import annotations

import sys

from passion_kit.data.brats import prepare_brats2020
from passion_kit.data.cli import preparation_parser, run_preparation
from passion_kit.data.preprocess import CROP_MODES


def main(argv: list[str] | None = None) -> int:
    ap = preparation_parser(__doc__, "brats2020")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--raw", help="folder holding BraTS20_Training_XXX case folders")
    src.add_argument("--rfnet-npy", help="folder holding vol/ and seg/ (RFNet/PASSION npy)")
    crop_help = "official: RFNet's [min:max) crop, which drops the last index (docs/method.md G.15)"
    ap.add_argument("--crop-mode", default="official", choices=CROP_MODES, help=crop_help)
    args = ap.parse_args(argv)
    return run_preparation(
        prepare_brats2020,
        args,
        "brats2020",
        raw_root=args.raw,
        rfnet_root=args.rfnet_npy,
        crop_mode=args.crop_mode,
    )


if __name__ == "__main__":
    sys.exit(main())
