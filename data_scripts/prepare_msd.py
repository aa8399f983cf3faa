"""Prepare MSD Task01_BrainTumour (download with MONAI, md5-checked, cached).

    python data_scripts/prepare_msd.py --download --workers 4        # about 7 GB
    python data_scripts/prepare_msd.py --root ~/msd                  # already downloaded

The tarball and Task01_BrainTumour/ live in --root (default <data root>/raw); prepared cases
go to --out (default <data root>/msd_task01). Channels are reordered to [FLAIR, T1c, T1, T2]
and labels mapped as in docs/data.md. Resumable; failures are reported at the end.
"""

from __future__ import annotations

import argparse
import sys

from passion_kit.data.description import data_root
from passion_kit.data.msd import prepare_msd
from passion_kit.data.prepared import PreparationError
from passion_kit.data.preprocess import CROP_MODES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--root", default=None, help="folder for the download (default <data root>/raw)"
    )
    ap.add_argument("--download", action="store_true", help="download and extract if missing")
    ap.add_argument("--out", default=None, help="default <data root>/msd_task01")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--crop-mode", default="official", choices=CROP_MODES)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    root = args.root or data_root() / "raw"
    out = args.out or data_root() / "msd_task01"
    try:
        done = prepare_msd(
            out,
            root=root,
            download=args.download,
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
