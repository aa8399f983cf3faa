"""Prepare BraTS2020 (raw NIfTI, official or Kaggle layout, or the RFNet npy layout), or a
BraTS 2023 raw layout (BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz ...).

    python data_scripts/prepare_brats2020.py --raw ~/MICCAI_BraTS2020_TrainingData --workers 4
    python data_scripts/prepare_brats2020.py --rfnet-npy ~/BRATS2020_Training_none_npy
    python data_scripts/prepare_brats2020.py --raw ~/BraTS2023-GLI-Training --layout brats2023

Writes <out> (default <data root>/brats2020, or <data root>/brats2023 for the 2023 layout;
data root = $PASSION_KIT_DATA or ./data) in the prepared format, with the official case
lists and missing-rate splits for BraTS2020 (the 2023 layout gets none: the RFNet split
lists 2020 cases). Resumable: prepared cases are skipped untouched; a failed case leaves
nothing and is reported at the end.
"""

from __future__ import annotations

import sys

from passion_kit.data.brats import LAYOUT_CHOICES, find_brats_cases, prepare_brats2020
from passion_kit.data.cli import preparation_parser, run_preparation
from passion_kit.data.preprocess import CROP_MODES
from passion_kit.io import USER_ERRORS, error_line


def main(argv: list[str] | None = None) -> int:
    ap = preparation_parser(__doc__, "brats2020")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--raw", help="folder holding BraTS20_Training_XXX (or 2023) case folders")
    src.add_argument("--rfnet-npy", help="folder holding vol/ and seg/ (RFNet/PASSION npy)")
    crop_help = "official: RFNet's [min:max) crop, which drops the last index (docs/method.md G.15)"
    ap.add_argument("--crop-mode", default="official", choices=CROP_MODES, help=crop_help)
    layout_help = "file naming of --raw: auto (detected), brats2020 or brats2023"
    ap.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help=layout_help)
    args = ap.parse_args(argv)
    dataset = "brats2020"
    if args.raw and args.out is None:  # the default folder is named after the layout found
        try:
            dataset = find_brats_cases(args.raw, layout=args.layout)[0].layout
        except USER_ERRORS as exc:
            print(f"error: {error_line(exc)}", file=sys.stderr)
            return 1
    return run_preparation(
        prepare_brats2020,
        args,
        dataset,
        raw_root=args.raw,
        rfnet_root=args.rfnet_npy,
        crop_mode=args.crop_mode,
        layout=args.layout,
    )


if __name__ == "__main__":
    sys.exit(main())
