"""Prepare MSD Task01_BrainTumour (download with MONAI, md5-checked, cached).

    python data_scripts/prepare_msd.py --download --workers 4        # about 7 GB
    python data_scripts/prepare_msd.py --root ~/msd                  # already downloaded

The tarball and Task01_BrainTumour/ live in --root (default <data root>/raw); prepared cases
go to --out (default <data root>/msd_task01). Channels are reordered to [FLAIR, T1c, T1, T2]
and labels mapped as in docs/data.md. Resumable; failures are reported at the end.
"""

from __future__ import annotations

import sys

from passion_kit.data.cli import preparation_parser, run_preparation
from passion_kit.data.description import data_root
from passion_kit.data.msd import prepare_msd
from passion_kit.data.preprocess import CROP_MODES


def main(argv: list[str] | None = None) -> int:
    ap = preparation_parser(__doc__, "msd_task01")
    ap.add_argument(
        "--root", default=None, help="folder for the download (default <data root>/raw)"
    )
    ap.add_argument("--download", action="store_true", help="download and extract if missing")
    ap.add_argument("--crop-mode", default="official", choices=CROP_MODES)
    args = ap.parse_args(argv)
    return run_preparation(
        prepare_msd,
        args,
        "msd_task01",
        root=args.root or data_root() / "raw",
        download=args.download,
        crop_mode=args.crop_mode,
    )


if __name__ == "__main__":
    sys.exit(main())
