"""Check a missing-rate split file and print what it contains.

    python data_scripts/validate_split.py split.csv --cases train.txt
    python data_scripts/validate_split.py split.csv --reference Brats2020_imb_split_mr2468.csv

Reads the readable or the official format; every row is checked (mask_id against the mask,
pos_mask_ids, booleans, duplicates). ``--cases`` checks that the split covers exactly that
case list; ``--reference`` that another split file gives every case the same mask.
Exit status 0 if valid, 1 if not.
"""

from __future__ import annotations

import argparse
import sys

from passion_kit.data.description import BUILTIN, load_description
from passion_kit.data.splits import read_case_ids, read_split, split_summary
from passion_kit.io import USER_ERRORS, error_line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("split", help="the CSV to check")
    ap.add_argument("--dataset", default="brats2020", choices=sorted(BUILTIN))
    ap.add_argument("--description", help="a dataset.json (overrides --dataset)")
    ap.add_argument("--cases", help="case list the split must cover exactly")
    ap.add_argument("--reference", help="another split that must give the same masks")
    args = ap.parse_args(argv)

    try:
        desc = load_description(args.description) if args.description else BUILTIN[args.dataset]
        split = read_split(args.split, desc.modalities)
        expected = read_case_ids(args.cases) if args.cases else None
        print(split_summary(split, expected))
        if args.reference:
            ref = read_split(args.reference, desc.modalities)
            diff = [
                c
                for c in ref.case_ids
                if c not in split.case_ids or split.mask_of(c) != ref.mask_of(c)
            ]
            diff += [c for c in split.case_ids if c not in ref.case_ids]
            if diff:
                raise ValueError(
                    f"{len(diff)} case(s) differ from {args.reference}, e.g. {diff[:5]}"
                )
            print(f"same mask for every case as {args.reference}")
    except USER_ERRORS as exc:
        print(f"invalid: {error_line(exc)}", file=sys.stderr)
        return 1
    print(f"valid: {args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
