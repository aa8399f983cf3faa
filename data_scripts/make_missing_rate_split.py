"""Draw an imbalanced missing-rate split with the official algorithm (docs/method.md A.3).

Rates are given by modality name, never by position::

    python data_scripts/make_missing_rate_split.py --cases train.txt \\
        --missing-rates flair=0.6,t1c=0.4,t1=0.2,t2=0.8 --seed 1037 --out split.csv

writes the official BraTS2020 mr2468 split (the same mask for every case). ``--rates
mr2468`` is the same thing by name; the digits of a name follow the dataset's generator
order (BraTS: t1, t1c, flair, t2). ``--dataset`` picks the modalities (brats2020, msd_task01,
phantom, myops2020) or ``--description path/to/dataset.json`` for any prepared dataset; slice
datasets draw one row per patient. An existing ``--out`` is refused unless ``--overwrite``
(a file is never appended to).
"""

from __future__ import annotations

import argparse
import sys

from passion_kit.data.description import BUILTIN, load_description
from passion_kit.data.splits import (
    FORMATS,
    generate_missing_rate_split,
    parse_missing_rates,
    patient_of,
    rates_from_name,
    read_case_ids,
    split_summary,
    write_split,
)
from passion_kit.io import USER_ERRORS, error_line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", required=True, help="case list, one id per line (e.g. train.txt)")
    rates = ap.add_mutually_exclusive_group(required=True)
    rates.add_argument("--missing-rates", help="name=rate for every modality, e.g. flair=0.6,...")
    rates.add_argument("--rates", help="a split name such as mr2468")
    ap.add_argument("--dataset", default="brats2020", choices=sorted(BUILTIN))
    ap.add_argument("--description", help="a dataset.json (overrides --dataset)")
    ap.add_argument("--seed", type=int, default=1037, help="default 1037 (the official seed)")
    ap.add_argument("--out", required=True, help="CSV to write")
    ap.add_argument("--format", default="readable", choices=FORMATS)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)

    try:
        desc = load_description(args.description) if args.description else BUILTIN[args.dataset]
        if args.missing_rates:
            p = parse_missing_rates(args.missing_rates, desc.modalities)
        else:
            p = rates_from_name(args.rates, desc)
        ids = read_case_ids(args.cases)
        group = patient_of if desc.kind == "slice" else None
        split = generate_missing_rate_split(ids, p, desc, seed=args.seed, group_of=group)
        write_split(split, args.out, fmt=args.format, overwrite=args.overwrite)
    except USER_ERRORS as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} ({args.format}); missing rates "
        + ", ".join(f"{k}={v:g}" for k, v in p.items())
    )
    print(split_summary(split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
