"""Write the built-in phantom dataset in the prepared format (no download needed).

Usage::

    python data_scripts/make_phantom.py --out data/phantom --cases 60 --size 32 --report

``--report`` prints the generation speed and the per-modality informativeness table
(mean over cases of the Dice of the best single global threshold per modality and
region) and checks the phantom's design targets; the exit status is 1 if one is missed.
"""

from __future__ import annotations

import argparse
import sys
import time

from passion_kit.data.description import data_root
from passion_kit.data.phantom import (
    design_target_failures,
    format_informativeness,
    informativeness,
    make_phantom,
    phantom_case_id,
)
from passion_kit.data.prepared import read_case
from passion_kit.io import USER_ERRORS, error_line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=None, help="dataset folder (default: <data root>/phantom)")
    ap.add_argument(
        "--cases", type=int, default=60, help="number of cases (default 60, the cpu preset's)"
    )
    ap.add_argument(
        "--size", type=int, default=32, help="volume edge in voxels (default 32, the cpu preset's)"
    )
    ap.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--report", action="store_true", help="print speed and informativeness")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    out = args.out or data_root() / "phantom"
    start = time.perf_counter()
    try:
        written = make_phantom(
            out,
            num_cases=args.cases,
            size=args.size,
            seed=args.seed,
            workers=args.workers,
            progress=not args.quiet,
        )
    except USER_ERRORS as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"{out}: {len(written)} new case(s), {args.cases - len(written)} already there")
    if not args.report:
        return 0
    if written:
        print(
            f"speed: {len(written)} cases of {args.size}^3 in {elapsed:.1f} s "
            f"({len(written) / elapsed:.1f} cases/s, {args.workers} worker(s)), "
            "generation + writing + splits"
        )
    else:
        print("speed: nothing generated (all cases existed); use a fresh --out to time it")
    ids = [phantom_case_id(i) for i in range(args.cases)]
    cases = ((img, lab) for img, lab, _ in (read_case(out, c, mmap=True) for c in ids))
    table = informativeness(cases)
    print(f"informativeness over {args.cases} cases (best single-threshold Dice; * = best):")
    print(format_informativeness(table))
    fails = design_target_failures(table)
    print("design targets: " + ("all met" if not fails else "MISSED:\n  " + "\n  ".join(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
