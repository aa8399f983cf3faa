"""The built-in phantom: procedural multi-modal brain MRI with a three-part tumour.

The default dataset of the kit: no download, no GPU, a hundred 64^3 cases in seconds,
written in exactly the prepared format of real data (``dataset.json``, ``cases/``,
``splits/`` including missing-rate splits), so nothing downstream can tell it apart.

Each case has a brain (deformed ellipsoid) with cortex (grey matter), white matter,
ventricles and sulcal CSF, a few enhancing vessels, and a tumour at a random position
made of a deformed core (necrosis inside, an enhancing rim) inside deformed edema.
Labels follow prepared BraTS: 1 NCR/NET, 2 edema, 3 enhancing. The modalities carry
different information, as in real MRI (:data:`TISSUE_INTENSITY`):

- FLAIR: edema and the whole tumour bright, CSF dark: finds the whole tumour (WT).
- T1c: the enhancing rim very bright, necrosis dark: finds ET and most of TC.
- T2: edema bright, necrosis as bright as CSF: WT with CSF confusion, TC poorly.
- T1: little contrast between tumour and normal tissue.

Nuisances: per-case tissue contrast jitter, smooth texture, partial volume (blur), a
multiplicative bias field per modality, Gaussian noise. Intensities are then z-scored
on brain voxels like every prepared dataset (docs/method.md A.4).

Usage::

    python data_scripts/make_phantom.py --out data/phantom --cases 100 --report

    from passion_kit.data.phantom import generate_case, informativeness
    image, label = generate_case(0, size=64)          # (4, 64, 64, 64), (64, 64, 64)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from passion_kit.data.description import (
    PHANTOM,
    DatasetDescription,
    load_description,
    save_description,
)
from passion_kit.data.prepared import PreparedCase, prepare_all, write_case_ids
from passion_kit.data.preprocess import zscore
from passion_kit.data.splits import (
    generate_missing_rate_split,
    rates_from_name,
    write_split,
)

__all__ = [
    "PHANTOM_RATE_SPLITS",
    "DESIGN",
    "TISSUES",
    "TISSUE_INTENSITY",
    "PhantomSource",
    "best_threshold_dice",
    "design_target_failures",
    "format_informativeness",
    "generate_case",
    "informativeness",
    "make_phantom",
    "phantom_case_id",
]

# Tissue codes of the internal tissue map (not the label).
TISSUES = ("background", "csf", "grey", "white", "edema", "necrosis", "enhancing", "vessel")
# Mean raw intensity of each tissue per modality [flair, t1c, t1, t2], in TISSUES order.
# Design: FLAIR separates the whole tumour; T1c the enhancing rim (necrosis dark);
# T2 makes necrosis look like CSF; T1 barely separates tumour from grey matter and CSF.
TISSUE_INTENSITY = np.array(
    [
        # bg   csf   grey  white edema necr  enh   vessel
        [0.0, 0.15, 0.55, 0.45, 1.00, 0.90, 0.95, 0.50],  # flair
        [0.0, 0.20, 0.50, 0.70, 0.45, 0.25, 1.25, 1.10],  # t1c
        [0.0, 0.20, 0.50, 0.70, 0.50, 0.35, 0.55, 0.50],  # t1
        [0.0, 1.00, 0.60, 0.45, 0.90, 1.00, 0.65, 0.40],  # t2
    ],
    dtype=np.float32,
)
# per modality, in the units of TISSUE_INTENSITY; T1 the noisiest (design 3), so that it
# stays the least informative modality with the larger tumours of design 3
NOISE_STD = (0.07, 0.07, 0.10, 0.05)
BIAS_STRENGTH = 0.12  # std of the log bias field
CONTRAST_JITTER = 0.06  # std of the per-case multiplicative jitter of each tissue mean
# Tumour size, in units of the half-width of the volume: the edema's radius, and the
# core's radius as a fraction of it.
TUMOUR_RADIUS = (0.38, 0.5)  # design 3: the whole tumour about 6 % of the volume
CORE_FRACTION = (0.5, 0.68)
# The enhancing rim is at least this many voxels thick: in a 32^3 case a rim of 6-9 % of
# the half-width would be one voxel, which partial volume blurs away (design 2: 2 voxels).
# Design 4: 3 voxels. A shell's Dice loses about its boundary error over its thickness,
# so a 2-voxel rim capped the ET Dice of a short CPU run near the 0.85 bar.
RIM_MIN_VOXELS = 3.0
# The generator's design: a phantom written by another design is refused, never mixed.
# 1: the first design; 2: the rim at least RIM_MIN_VOXELS thick; 3: larger tumours
# (edema radius 0.38-0.5 of the half-width instead of 0.3-0.45: the whole tumour is about
# 6 % of the volume instead of 4 %, nearer BraTS patches) and T1 noise 0.10 instead of 0.05;
# 4: the rim at least 3 voxels thick instead of 2.
DESIGN = 4
# The official BraTS2020 rate settings; the phantom gets each of them for its train list.
PHANTOM_RATE_SPLITS = (
    "mr1379", "mr2258", "mr2285", "mr2468", "mr5528", "mr5582", "mr8825", "mr8852",
)  # fmt: skip


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field of unit-ish std: Gaussian bumps on a ``cells``^3 grid."""
    centers = np.linspace(-1.0, 1.0, cells, dtype=np.float32)
    x = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    width = 2.0 / (cells - 1)
    basis = np.exp(-0.5 * ((x[:, None] - centers[None, :]) / width) ** 2)
    basis /= np.sqrt((basis**2).sum(1, keepdims=True))  # (S, c), unit rows: field std ~1
    coef = rng.standard_normal((cells, cells, cells), dtype=np.float32)
    f = np.tensordot(basis, coef, axes=(1, 0))  # (S, c, c)
    f = np.tensordot(f, basis, axes=(1, 1))  # (S, c, S)
    return np.tensordot(f, basis, axes=(1, 1))  # (S, S, S)


def _ellipsoid_distance(axes: Sequence[np.ndarray], center, radii) -> np.ndarray:
    """Normalised distance to ``center`` on the open grid ``axes`` (broadcast to 3D)."""
    sq = [
        ((a - np.float32(c)) / np.float32(r)) ** 2
        for a, c, r in zip(axes, center, radii, strict=True)
    ]
    return np.sqrt(sq[0] + sq[1] + sq[2])


def _tissue_map(rng: np.random.Generator, size: int) -> np.ndarray:
    """The tissue codes (see :data:`TISSUES`) of one random case, uint8 (S, S, S)."""
    ax = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    grid = (ax[:, None, None], ax[None, :, None], ax[None, None, :])
    tissue = np.zeros((size,) * 3, dtype=np.uint8)

    center = rng.uniform(-0.04, 0.04, 3)
    radii = (rng.uniform(0.78, 0.9), rng.uniform(0.68, 0.8), rng.uniform(0.62, 0.74))
    d = _ellipsoid_distance(grid, center, radii) + 0.05 * _smooth_field(rng, size, 5)
    brain = d < 1.0
    cortex = d > 0.74 + 0.06 * _smooth_field(rng, size, 7)
    tissue[brain] = TISSUES.index("white")
    tissue[brain & cortex] = TISSUES.index("grey")
    tissue[brain & (d > 0.97)] = TISSUES.index("csf")
    for side in (-1.0, 1.0):  # two lateral ventricles
        vc = center + np.array([side * rng.uniform(0.1, 0.16), rng.uniform(-0.08, 0.08), 0.05])
        vr = (rng.uniform(0.06, 0.1), rng.uniform(0.22, 0.32), rng.uniform(0.1, 0.16))
        tissue[_ellipsoid_distance(grid, vc, vr) < 1.0] = TISSUES.index("csf")
    for _ in range(rng.integers(3, 7)):  # small enhancing vessels
        vc = center + rng.uniform(-0.6, 0.6, 3) * np.array(radii)
        vessel = _ellipsoid_distance(grid, vc, rng.uniform(0.03, 0.06, 3)) < 1.0
        tissue[vessel & brain] = TISSUES.index("vessel")

    # Tumour: position anywhere well inside the brain, sizes and shapes vary.
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    tc = center + direction * rng.uniform(0.15, 0.45) * np.array(radii)
    r_edema = rng.uniform(*TUMOUR_RADIUS)
    r_core = r_edema * rng.uniform(*CORE_FRACTION)
    # The enhancing rim is at least RIM_MIN_VOXELS thick whatever the volume size.
    rim = max(rng.uniform(0.06, 0.09), RIM_MIN_VOXELS * 2.0 / size)
    d_core = _ellipsoid_distance(grid, tc, (r_core,) * 3) + 0.15 * _smooth_field(rng, size, 14)
    d_edema = _ellipsoid_distance(grid, tc, (r_edema,) * 3) + 0.25 * _smooth_field(rng, size, 11)
    core = brain & (d_core < 1.0)
    tissue[brain & (d_edema < 1.0)] = TISSUES.index("edema")
    tissue[core] = TISSUES.index("enhancing")
    tissue[core & (d_core < 1.0 - rim / r_core)] = TISSUES.index("necrosis")
    return tissue


_LABEL_OF_TISSUE = np.array([0, 0, 0, 0, 2, 1, 3, 0], dtype=np.uint8)


def generate_case(index: int, *, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One phantom case, deterministic in ``(seed, index)``.

    Args:
        index: case number.
        size: edge length of the cubic volume (>= 16).
        seed: dataset seed.

    Returns:
        ``image`` float32 (4, S, S, S) z-scored on brain voxels in [flair, t1c, t1, t2]
        order, and ``label`` uint8 (S, S, S) with 0 background, 1 NCR/NET, 2 edema,
        3 enhancing.
    """
    image, label, _ = _generate(index, size, seed)
    return image, label


def _generate(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng((seed, index))
    tissue = _tissue_map(rng, size)
    brain = tissue > 0
    jitter = 1.0 + CONTRAST_JITTER * rng.standard_normal(TISSUE_INTENSITY.shape)
    means = (TISSUE_INTENSITY * jitter).astype(np.float32)
    texture = 1.0 + 0.03 * _smooth_field(rng, size, 9)  # anatomy: shared by all modalities
    raw = np.zeros((4, *tissue.shape), dtype=np.float32)
    for m in range(4):
        img = means[m][tissue] * texture
        img = ndimage.gaussian_filter(img, 0.5)  # partial volume
        img *= np.exp(BIAS_STRENGTH * _smooth_field(rng, size, 3))
        img += NOISE_STD[m] * rng.standard_normal(img.shape, dtype=np.float32)
        raw[m] = np.where(brain, np.maximum(img, 0.01), 0.0)
    image, stats = zscore(raw)
    return image, _LABEL_OF_TISSUE[tissue], stats


@dataclass(frozen=True)
class PhantomSource:
    """Picklable recipe of one case, for :func:`passion_kit.data.prepared.prepare_all`."""

    index: int
    size: int
    seed: int

    @property
    def case_id(self) -> str:
        return phantom_case_id(self.index)


def phantom_case_id(index: int) -> str:
    """The case id of phantom case ``index`` (``phantom_0007``)."""
    return f"phantom_{index:04d}"


def _build(source: PhantomSource) -> PreparedCase:
    image, label, stats = _generate(source.index, source.size, source.seed)
    meta = {
        "case_id": source.case_id,
        "dataset": PHANTOM.name,
        "source_files": {},
        "generator": {"module": __name__, "seed": source.seed, "index": source.index},
        "original_shape": list(label.shape),
        "original_affine": np.eye(4).tolist(),
        "crop": {"start": [0, 0, 0], "stop": list(label.shape)},
        "normalization": stats,
    }
    return PreparedCase(source.case_id, image, label, meta)


def make_phantom(
    root: str | os.PathLike,
    *,
    num_cases: int = 100,
    size: int = 64,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> list[str]:
    """Write a phantom dataset in the prepared format under ``root``.

    Writes cases ``phantom_0000..`` (resumable: existing cases are kept untouched),
    ``splits/{train,val,test}.txt`` (first 60 %, next 10 %, last 30 % of the cases; they
    are i.i.d., so a contiguous split is unbiased), one missing-rate split per entry of
    :data:`PHANTOM_RATE_SPLITS` drawn from ``train.txt`` with the official generator
    (seed 1037) in the readable CSV format, and ``dataset.json`` (last).

    Args:
        root: the dataset folder, e.g. ``data/phantom``.
        num_cases: number of cases (>= 3).
        size: edge of the cubic volumes.
        seed: generator seed; case i depends only on (seed, i).
        workers: worker processes.
        progress: show a progress bar.

    Returns:
        The ids of the cases written by this call.

    Raises:
        ValueError: if ``root`` already holds a phantom made with another size or seed.
    """
    if num_cases < 3:
        raise ValueError(f"num_cases must be >= 3 (train, val and test), got {num_cases}")
    root = Path(root)
    recipe = {"size": int(size), "seed": int(seed), "design": DESIGN}
    if (root / "dataset.json").is_file():
        old = load_description(root)
        old_recipe = {k: old.extra.get(k) for k in recipe}
        if old.name != PHANTOM.name or old_recipe != recipe:
            raise ValueError(
                f"{root / 'dataset.json'}: holds {old.name} {old_recipe}, not phantom {recipe}; "
                "use another folder or delete this one"
            )
    sources = [PhantomSource(i, size, seed) for i in range(num_cases)]
    ids = [s.case_id for s in sources]
    written = prepare_all(
        sources,
        ids,
        _build,
        root,
        workers=workers,
        progress=progress,
        desc="phantom",
        case_bytes=(4 * len(PHANTOM.modalities.modalities) + 1) * size**3 + 4096,
    )
    n_test, n_val = max(1, round(0.3 * num_cases)), max(1, round(0.1 * num_cases))
    n_train = num_cases - n_test - n_val
    train = ids[:n_train]
    write_case_ids(root / "splits" / "train.txt", train)
    write_case_ids(root / "splits" / "val.txt", ids[n_train : n_train + n_val])
    write_case_ids(root / "splits" / "test.txt", ids[n_train + n_val :])
    for name in PHANTOM_RATE_SPLITS:
        split = generate_missing_rate_split(train, rates_from_name(name, PHANTOM), PHANTOM)
        write_split(split, root / "splits" / "missing_rates" / f"{name}.csv", overwrite=True)
    description = replace(PHANTOM, extra={**recipe, "num_cases": num_cases})
    save_description(description, root)
    return written


def best_threshold_dice(values: np.ndarray, target: np.ndarray) -> float:
    """Dice of the best single global threshold on ``values`` for the binary ``target``.

    Both directions are tried (voxels above the threshold, or below it); cuts are placed
    only between distinct values. An empty target scores 1 (the empty prediction).
    """
    x = values.ravel()
    order = np.argsort(x, kind="stable")
    return _best_dice_sorted(x[order], target.ravel()[order])


def _best_dice_sorted(xs: np.ndarray, ts: np.ndarray) -> float:
    n, g = xs.size, int(np.count_nonzero(ts))
    if g == 0:
        return 1.0
    csum = np.concatenate([[0], np.cumsum(ts, dtype=np.int64)])
    k = np.arange(n + 1)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = xs[:-1] < xs[1:]
    above = 2.0 * (g - csum[valid]) / ((n - k[valid]) + g)  # predict sorted indices >= k
    below = 2.0 * csum[valid] / (k[valid] + g)  # predict sorted indices < k
    return float(max(above.max(), below.max()))


def informativeness(
    cases: Iterable[tuple[np.ndarray, np.ndarray]],
    description: DatasetDescription = PHANTOM,
) -> dict[str, dict[str, float]]:
    """How much each modality alone tells about each region.

    For every case, modality and region: the Dice of the best single global intensity
    threshold on that modality (:func:`best_threshold_dice`); then the mean over cases.

    Args:
        cases: ``(image (M, ...), label (...))`` pairs, e.g. from :func:`generate_case`.
        description: gives modality names and regions.

    Returns:
        ``{modality: {region: mean Dice}}``.
    """
    names = description.modalities.modalities
    sums = {m: dict.fromkeys(description.regions, 0.0) for m in names}
    n = 0
    for image, label in cases:
        targets = {r: np.isin(label, ids).ravel() for r, ids in description.regions.items()}
        for mi, m in enumerate(names):
            x = image[mi].ravel()
            order = np.argsort(x, kind="stable")
            xs = x[order]
            for r, t in targets.items():
                sums[m][r] += _best_dice_sorted(xs, t[order])
        n += 1
    if n == 0:
        raise ValueError("informativeness needs at least one case")
    return {m: {r: v / n for r, v in row.items()} for m, row in sums.items()}


def format_informativeness(table: dict[str, dict[str, float]]) -> str:
    """The table as aligned text, one row per modality, the best per region starred."""
    regions = list(next(iter(table.values())))
    best = {r: max(table, key=lambda m: table[m][r]) for r in regions}
    lines = ["modality " + "".join(f"{r:>9}" for r in regions)]
    for m, row in table.items():
        cells = "".join(f"{row[r]:>8.3f}{'*' if best[r] == m else ' '}" for r in regions)
        lines.append(f"{m:<9}{cells}")
    return "\n".join(lines)


def design_target_failures(table: dict[str, dict[str, float]]) -> list[str]:
    """Which of the phantom's design targets (issue 4) a table from :func:`informativeness` misses.

    Targets: WT is best found from FLAIR or T2, with Dice >= 0.7; ET best from T1c, >= 0.7;
    for TC, T1c beats every other single modality by >= 0.15; T1 stays below 0.5 for every
    region; no single modality reaches 0.7 on all three regions.

    Returns:
        One message per missed target (empty if all are met).
    """
    fails = []
    best_wt = max(table, key=lambda m: table[m]["WT"])
    if best_wt not in ("flair", "t2") or table[best_wt]["WT"] < 0.7:
        fails.append(f"WT: best is {best_wt} at {table[best_wt]['WT']:.3f}; want flair/t2 >= 0.7")
    best_et = max(table, key=lambda m: table[m]["ET"])
    if best_et != "t1c" or table["t1c"]["ET"] < 0.7:
        fails.append(f"ET: best is {best_et} at {table[best_et]['ET']:.3f}; want t1c >= 0.7")
    margin = table["t1c"]["TC"] - max(v["TC"] for m, v in table.items() if m != "t1c")
    if margin < 0.15:
        fails.append(f"TC: t1c leads the next modality by {margin:.3f}; want >= 0.15")
    worst_t1 = max(table["t1"].values())
    if worst_t1 >= 0.5:
        fails.append(f"T1 reaches {worst_t1:.3f} on some region; want < 0.5 everywhere")
    for m, row in table.items():
        if all(row[r] >= 0.7 for r in ("WT", "TC", "ET")):
            fails.append(f"{m} alone reaches >= 0.7 on WT, TC and ET")
    return fails
