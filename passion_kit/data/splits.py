"""Imbalanced missing-rate splits: generation, reading, writing and validation (docs/method.md A.3).

A split gives every training case one fixed availability mask. The generator is the
official algorithm (``generate_imb_mr.py``), made general (any case list, any number of
modalities, any rates) and safe (the result is returned, files are written atomically
and never appended to). With seed 1037 and the sorted BraTS2020 ``train.txt`` it
reproduces the eight published CSVs row for row::

    >>> from passion_kit.data import splits
    >>> ids = splits.read_case_ids(splits.shipped("brats2020/train.txt"))
    >>> s = splits.generate_missing_rate_split(ids, splits.rates_from_name("mr2468"))
    >>> s.availability_counts()
    {'flair': 90, 't1c': 135, 't1': 184, 't2': 43}

Two CSV formats are read and written: the kit's readable one (``case_id, mask_id`` and
one True/False column per modality) and the official one (``data_name, mask_id, mask,
pos_mask_ids``; masks as Python-list strings, CRLF line endings).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from passion_kit.data.description import BRATS2020, DatasetDescription
from passion_kit.data.modalities import ModalitySet
from passion_kit.data.prepared import atomic_write_text, read_case_ids
from passion_kit.io import read_text

__all__ = [
    "FORMATS",
    "MissingRateSplit",
    "generate_missing_rate_split",
    "parse_missing_rates",
    "patient_of",
    "rate_name",
    "rates_from_name",
    "read_case_ids",
    "read_split",
    "shipped",
    "split_summary",
    "write_split",
]

FORMATS = ("readable", "official")
OFFICIAL_SEED = 1037
_SLICE = re.compile(r"_slice_\d+$")


def shipped(relpath: str) -> Path:
    """Path of a split file shipped in ``passion_kit/resources/splits`` (see its README)."""
    path = Path(str(resources.files("passion_kit") / "resources" / "splits" / relpath))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a shipped split file")
    return path


def patient_of(case_id: str) -> str:
    """The patient of a slice case (``myops_training_101_slice_3`` -> ``myops_training_101``)."""
    return _SLICE.sub("", case_id)


@dataclass(frozen=True)
class MissingRateSplit:
    """One availability mask per case.

    Args:
        modalities: the dataset's modalities and combination table.
        case_ids: case ids, in file order.
        masks: (N, M) booleans in channel order; every row has at least one True.
    """

    modalities: ModalitySet
    case_ids: tuple[str, ...]
    masks: tuple[tuple[bool, ...], ...]

    def __post_init__(self) -> None:
        ids = tuple(str(c) for c in self.case_ids)
        masks = tuple(tuple(bool(v) for v in row) for row in self.masks)
        if len(ids) != len(masks):
            raise ValueError(f"got {len(ids)} case ids but {len(masks)} masks")
        if len(set(ids)) != len(ids):
            raise ValueError("case ids must be unique")
        for cid, row in zip(ids, masks, strict=True):
            try:
                self.modalities.mask_id(row)
            except ValueError as exc:
                raise ValueError(f"case {cid}: {exc}") from None
        object.__setattr__(self, "case_ids", ids)
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(ids)})

    def __len__(self) -> int:
        return len(self.case_ids)

    def mask_of(self, case_id: str) -> tuple[bool, ...]:
        """The availability mask of a case (KeyError naming the case if absent)."""
        try:
            return self.masks[self._index[case_id]]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(f"case {case_id!r} is not in this split") from None

    def mask_ids(self) -> list[int]:
        return [self.modalities.mask_id(m) for m in self.masks]

    def availability_counts(self) -> dict[str, int]:
        """n_m: the number of cases in which each modality is present."""
        arr = np.array(self.masks, dtype=bool).reshape(len(self), -1)
        return {n: int(c) for n, c in zip(self.modalities.modalities, arr.sum(0), strict=True)}

    def missing_rates(self) -> dict[str, float]:
        """The realised missing rate of each modality."""
        n = max(len(self), 1)
        return {k: 1.0 - v / n for k, v in self.availability_counts().items()}


def parse_missing_rates(text: str, modalities: ModalitySet) -> dict[str, float]:
    """Parse ``"flair=0.6,t1c=0.4,t1=0.2,t2=0.8"``; every modality must appear once."""
    rates: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in modalities.modalities or name in rates:
            raise ValueError(
                f"--missing-rates: bad entry {item!r}; expected name=rate for each of "
                f"{list(modalities.modalities)} exactly once"
            )
        rates[name] = float(value)
    return _check_rates(rates, modalities)


def rates_from_name(name: str, description: DatasetDescription = BRATS2020) -> dict[str, float]:
    """Rates of a split name such as ``"mr2468"`` or ``"357"``.

    The digits are the missing rates x10 in ``description.split_order`` (BraTS: t1, t1c,
    flair, t2, so ``mr2468`` is p_t1 = 0.2, p_t1c = 0.4, p_flair = 0.6, p_t2 = 0.8).
    """
    digits = name[2:] if name.startswith("mr") else name
    order = description.split_order
    if len(digits) != len(order) or not digits.isdigit():
        raise ValueError(
            f"split name {name!r}: expected 'mr' and {len(order)} digits, the missing rates "
            f"x10 of {list(order)}"
        )
    return {m: int(d) / 10 for m, d in zip(order, digits, strict=True)}


def rate_name(rates: Mapping[str, float], description: DatasetDescription = BRATS2020) -> str:
    """Inverse of :func:`rates_from_name` where every rate is a multiple of 0.1."""
    digits = [round(rates[m] * 10) for m in description.split_order]
    if any(
        abs(d / 10 - rates[m]) > 1e-9 for d, m in zip(digits, description.split_order, strict=True)
    ):
        return "mr_" + "_".join(f"{m}{rates[m]:g}" for m in description.split_order)
    return "mr" + "".join(str(d) for d in digits)


def _check_rates(rates: Mapping[str, float], modalities: ModalitySet) -> dict[str, float]:
    names = modalities.modalities
    if set(rates) != set(names):
        raise ValueError(f"missing rates must name each of {list(names)}, got {sorted(rates)}")
    out = {n: float(rates[n]) for n in names}
    bad = {n: p for n, p in out.items() if not 0.0 <= p <= 1.0}
    if bad:
        raise ValueError(f"missing rates must lie in [0, 1], got {bad}")
    if all(p == 1.0 for p in out.values()):
        raise ValueError("at least one modality must have a missing rate below 1")
    return out


def _pattern_order(m: int) -> list[tuple[bool, ...]]:
    """The order in which the generator walks the non-empty availability patterns.

    Patterns are in ``split_order``. For M = 4 this is the official order
    (docs/method.md A.3), which
    is not plain binary order: in the TT.. and FT.. blocks the last two modalities come
    as TT, FT, TF, FF, in the TF.. and FF.. blocks as TT, TF, FT, FF. For any other M it
    is descending binary order (present first, the first modality most significant).
    """
    if m == 4:
        return [tuple(c == "T" for c in p) for p in _OFFICIAL_ORDER_4]
    pats = itertools.product((True, False), repeat=m)
    return [p for p in pats if any(p)]


_OFFICIAL_ORDER_4 = (
    "TTTT TTFT TTTF TTFF TFTT TFTF TFFT TFFF FTTT FTFT FTTF FTFF FFTT FFTF FFFT".split()
)


def generate_missing_rate_split(
    case_ids: Iterable[str],
    missing_rates: Mapping[str, float],
    description: DatasetDescription = BRATS2020,
    *,
    seed: int = OFFICIAL_SEED,
    group_of: Callable[[str], str] | None = None,
) -> MissingRateSplit:
    """Draw one availability mask per case with the official algorithm (docs/method.md A.3).

    Steps, all from one legacy numpy ``RandomState(seed)`` (the same stream as the
    official ``np.random.seed``): M throw-away Bernoulli draws; each non-empty pattern
    gets ``max(1, floor(N * prod q_j))`` consecutive rows (q_j = 1 - p_j if present);
    the leftover rows are all-missing; one shared permutation shuffles the rows; each
    all-missing row is redrawn (``rand(1) > p_j`` per modality) until one is present.
    Because of the ``max(1, ...)``, patterns of probability 0 still get one case, and when
    the counts add up to more than N the last patterns of the walk get fewer rows or
    none (both as in the official code).

    Args:
        case_ids: the cases; they are sorted, as in the official script.
        missing_rates: modality name -> probability of being missing.
        description: gives the modalities and the generator's modality order
            (``split_order``); the order changes the result, not the meaning.
        seed: 1037 reproduces the published BraTS2020 splits.
        group_of: if given, masks are drawn per group (e.g. :func:`patient_of` for slice
            datasets) and every case of a group shares its group's mask.

    Returns:
        The split, rows in sorted case order.
    """
    ms = description.modalities
    rates = _check_rates(missing_rates, ms)
    ids = sorted(set(case_ids))
    if not ids:
        raise ValueError("case_ids is empty")
    units = sorted({group_of(c) for c in ids}) if group_of else ids
    order = [ms.index(n) for n in description.split_order]
    p = [rates[ms.modalities[j]] for j in order]
    n, m = len(units), len(order)

    rng = np.random.RandomState(seed)
    cols = [rng.rand(n) > p[j] for j in range(m)]  # only advance the stream, as the original
    row = 0
    for pattern in _pattern_order(m):
        expected = float(n)
        for j in range(m):  # multiply in this order: float rounding decides the floor
            expected = expected * ((1 - p[j]) if pattern[j] else p[j])
        count = max(1, int(expected))
        for j in range(m):
            cols[j][row : row + count] = pattern[j]
        row += count
    for j in range(m):
        cols[j][row:] = False
    state = rng.get_state()
    for j in range(m):
        rng.set_state(state)
        rng.shuffle(cols[j])
    for i in range(n):
        while not any(cols[j][i] for j in range(m)):
            for j in range(m):
                cols[j][i] = rng.rand(1)[0] > p[j]

    unit_mask = {}
    for i, unit in enumerate(units):
        mask = [False] * m
        for j in range(m):
            mask[order[j]] = bool(cols[j][i])
        unit_mask[unit] = tuple(mask)
    masks = [unit_mask[group_of(c) if group_of else c] for c in ids]
    return MissingRateSplit(ms, tuple(ids), tuple(masks))


def _parse_bool(text: str, where: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1"):
        return True
    if t in ("false", "0"):
        return False
    raise ValueError(f"{where}: expected True or False, got {text!r}")


def _parse_list(text: str, where: str) -> list[str]:
    t = text.strip()
    if not (t.startswith("[") and t.endswith("]")):
        raise ValueError(f"{where}: expected a list like [True, False], got {text!r}")
    return [v for v in (x.strip() for x in t[1:-1].split(",")) if v]


def read_split(path: str | os.PathLike, modalities: ModalitySet) -> MissingRateSplit:
    """Read a split CSV in the readable or the official format (detected from the header).

    Raises:
        ValueError: naming the file, the line and the column for anything malformed or
            inconsistent (unknown header, bad boolean, mask_id that does not match the mask,
            wrong pos_mask_ids, duplicate case).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    rows = list(csv.reader(io.StringIO(read_text(path, "a split CSV"))))
    if not rows:
        raise ValueError(f"{path}: empty file")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    names = list(modalities.modalities)
    if header == ["case_id", "mask_id", *names]:
        fmt = "readable"
    elif header == ["data_name", "mask_id", "mask", "pos_mask_ids"]:
        fmt = "official"
    else:
        raise ValueError(
            f"{path}: unknown header {header}; expected {['case_id', 'mask_id', *names]} "
            "(readable) or ['data_name', 'mask_id', 'mask', 'pos_mask_ids'] (official)"
        )
    ids, masks = [], []
    for lineno, row in enumerate(body, start=2):
        where = f"{path}, line {lineno}"
        if len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} columns, got {len(row)}")
        if fmt == "readable":
            cells = zip(row[2:], names, strict=True)
            mask = tuple(_parse_bool(v, f"{where}, column {n!r}") for v, n in cells)
        else:
            items = _parse_list(row[2], f"{where}, column 'mask'")
            if len(items) != len(names):
                raise ValueError(f"{where}: mask must have {len(names)} entries ({names})")
            mask = tuple(_parse_bool(v, f"{where}, column 'mask'") for v in items)
        try:
            expected_id = modalities.mask_id(mask)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if row[1].strip() != str(expected_id):
            raise ValueError(
                f"{where}: mask_id {row[1]!r} does not match the mask {list(mask)} "
                f"(expected {expected_id}, {modalities.name(expected_id)})"
            )
        if fmt == "official":
            pos = [int(v) for v in _parse_list(row[3], f"{where}, column 'pos_mask_ids'")]
            if pos != modalities.subset_ids(mask):
                raise ValueError(
                    f"{where}: pos_mask_ids {pos} should be {modalities.subset_ids(mask)}"
                )
        ids.append(row[0].strip())
        masks.append(mask)
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate case ids {dup[:5]}")
    return MissingRateSplit(modalities, tuple(ids), tuple(masks))


def write_split(
    split: MissingRateSplit,
    path: str | os.PathLike,
    *,
    fmt: str = "readable",
    overwrite: bool = False,
) -> Path:
    """Write a split CSV atomically.

    Args:
        split: the split.
        path: destination.
        fmt: ``"readable"`` or ``"official"`` (CRLF, as the published files).
        overwrite: replace an existing file; without it an existing file is an error.
            A file is never appended to.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; a split is written to a .csv file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True (--overwrite)")
    ms = split.modalities
    buf = io.StringIO()
    if fmt == "readable":
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["case_id", "mask_id", *ms.modalities])
        for cid, mask in zip(split.case_ids, split.masks, strict=True):
            w.writerow([cid, ms.mask_id(mask), *(str(v) for v in mask)])
    else:
        w = csv.writer(buf)  # csv's default CRLF, as the published files
        w.writerow(["data_name", "mask_id", "mask", "pos_mask_ids"])
        for cid, mask in zip(split.case_ids, split.masks, strict=True):
            # plain bools: numpy 2 would print np.True_ (PITFALLS)
            w.writerow([cid, ms.mask_id(mask), str([bool(v) for v in mask]), ms.subset_ids(mask)])
    atomic_write_text(path, buf.getvalue(), newline="")
    return path


def split_summary(split: MissingRateSplit, expected_cases: Sequence[str] | None = None) -> str:
    """A readable report: per-modality counts and missing rates, combination counts.

    Raises:
        ValueError: if ``expected_cases`` is given and the split does not cover exactly them.
    """
    if expected_cases is not None:
        missing = sorted(set(expected_cases) - set(split.case_ids))
        extra = sorted(set(split.case_ids) - set(expected_cases))
        if missing or extra:
            raise ValueError(
                f"split does not match the case list: {len(missing)} case(s) missing "
                f"{missing[:5]}, {len(extra)} unexpected {extra[:5]}"
            )
    ms = split.modalities
    counts = split.availability_counts()
    rates = split.missing_rates()
    lines = [f"cases: {len(split)}", "modality  present  missing rate"]
    lines += [f"{n:<9} {counts[n]:>7}  {rates[n]:.3f}" for n in ms.modalities]
    ids = split.mask_ids()
    lines.append("combination counts (mask_id name: cases):")
    lines += [
        f"  {i:>2} {ms.name(i)}: {ids.count(i)}" for i in range(ms.num_combinations) if i in ids
    ]
    sizes = [sum(m) for m in split.masks]
    hist = "/".join(str(sizes.count(k)) for k in range(1, ms.num_modalities + 1))
    lines.append(f"cases with 1..{ms.num_modalities} modalities: {hist}")
    return "\n".join(lines)
