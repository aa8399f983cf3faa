"""Evaluation over every modality combination of a dataset (docs/method.md A.6).

For each test case, a sliding window (MONAI; 80^3 windows at 0.5 overlap by default)
encodes every modality **once per window** and fuses all the dataset's combinations
from those features (the backbone's ``fuse`` takes many mask rows per sample), so the
15 BraTS combinations do not cost 15 networks. Softmax outputs are averaged over
overlapping windows, then arg-maxed per combination.

Metrics per case, combination and region (regions from the dataset description):

- Dice ``(2|P & G| + 1e-8) / (|P| + |G| + 1e-8)``: 1 when both are empty.
- ETPro (BraTS): ET Dice after emptying ET predictions smaller than 500 voxels (for this
  metric only).
- HD95 from the distances of each border voxel (a voxel of the set with a 6-neighbour
  outside it) to the other set's border, in mm with the dataset's voxel spacing. Two
  definitions are in use, and they differ by up to a few mm on tumour-like shapes:

  - *pooled*: the 95th percentile of the distances of both directions together
    (medpy's ``metric.binary.hd95``);
  - *directed*: the larger of the two directions' 95th percentiles (MONAI's
    ``compute_hausdorff_distance(percentile=95)``; the BraTS 2023 toolkit's
    ``compute_robust_hausdorff`` is of this kind, with border elements weighted by area).

  ``eval.hd95`` picks a convention: a definition and the value when exactly one set is
  empty (both empty -> 0 in each):

  - ``official``: pooled, 1.0 for one empty set (optimistic), as the official PASSION
    code (``utils/predict.py``, medpy's ``hd95``);
  - ``brats``: pooled, 373.13 mm, as nnU-Net's BraTS 2020 evaluation (medpy's ``hd95``
    and 373.12866, named in the official code's comments);
  - ``monai``: directed, 373.13 mm (MONAI itself returns NaN or inf for an empty set).

Outputs (``evaluate_run``): ``per_case.csv`` (one row per case and combination),
``summary.csv`` and ``summary.md`` (mean per combination and the mean over combinations).

Usage::

    python -m passion_kit evaluate runs/phantom_rfnet_passion_idt_s1037 --max-cases 5
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from passion_kit.config import PLACE_KEYS, EvalConfig, ExperimentConfig
from passion_kit.data import PreparedDataset, load_description
from passion_kit.data.description import DatasetDescription
from passion_kit.engine.runs import build_model, check_compatible, load_checkpoint
from passion_kit.engine.runtime import amp_dtype, reuse_freed_memory, select_device
from passion_kit.io import (
    TMP_PREFIX,
    RunLock,
    check_name,
    check_writable,
    inside,
    markdown_table,
    remove_stale_temps,
)
from passion_kit.models import Backbone

__all__ = [
    "HD95_EMPTY",
    "MultiMaskPredictor",
    "predict_case",
    "dice",
    "hd95",
    "border_distances",
    "case_metrics",
    "evaluate_cases",
    "summarize",
    "evaluate_run",
    "ensure_evaluated",
    "load_run",
    "save_prediction_nifti",
]

# HD95 conventions (module docstring): the value for exactly one empty set, and whether
# the two directions' distances are pooled (medpy) or each direction is taken on its own.
HD95_EMPTY = {"official": 1.0, "brats": 373.13, "monai": 373.13}
HD95_POOLED = {"official": True, "brats": True, "monai": False}


class MultiMaskPredictor:
    """Window -> softmax of every mask, with the encoders run once per window.

    Args:
        backbone: the trained backbone (put in eval mode by the caller).
        masks: (C, M) bool, the combinations to predict.
        chunk: at most this many masks fused per ``fuse`` call (memory vs. speed).

    Calling it on a window batch (B, M, *roi) returns (B, C * K, *roi): the K class
    probabilities of mask 0, then of mask 1, and so on.

    On CPU a call also fuses at most ``CPU_ROW_VOXELS`` mask-row voxels (B x masks x
    window voxels): beyond that the batched decoder runs slower per mask than smaller
    calls. ``python benchmarks/eval_time.py --backbone rfnet --device cpu --chunk N``
    (80^3 window) took 10.1 s with 15 masks per call, 5.9 s with 4 or 2, 6.5 s with 1;
    with a 48^3 window, 15 per call was fastest.
    """

    CPU_ROW_VOXELS = 2**21  # 4 masks of an 80^3 window, all 15 of a 48^3 one

    def __init__(self, backbone: Backbone, masks: torch.Tensor, chunk: int = 15) -> None:
        self.backbone = backbone
        self.masks = masks
        self.chunk = max(1, int(chunk))

    @torch.no_grad()
    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        b = window.shape[0]
        feats = self.backbone.encode(window)
        masks = self.masks.to(window.device)
        chunk = self.chunk
        if window.device.type == "cpu":
            chunk = max(1, min(chunk, self.CPU_ROW_VOXELS // window[:, 0].numel()))
        outs = []
        for start in range(0, masks.shape[0], chunk):
            part = masks[start : start + chunk]  # (S, M)
            rows = part.unsqueeze(0).expand(b, -1, -1).reshape(-1, part.shape[1])
            logits = self.backbone.fuse(feats, rows).logits.float()
            outs.append(F.softmax(logits, 1).view(b, part.shape[0], *logits.shape[1:]))
        probs = torch.cat(outs, 1)  # (B, C, K, *roi)
        return probs.flatten(1, 2)


@torch.no_grad()
def predict_case(
    backbone: Backbone,
    image: torch.Tensor,
    masks: torch.Tensor,
    *,
    window: Sequence[int] = (80, 80, 80),
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    chunk: int = 15,
    device: torch.device | str = "cpu",
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Arg-max labels (C, H, W, D) of one case (M, H, W, D) for each of the C masks.

    ``amp``: the autocast dtype of the network's pass (None: fp32; see ``eval.amp``); the
    probabilities are averaged over windows in fp32 either way.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    predictor = MultiMaskPredictor(backbone, masks, chunk)
    x = image.unsqueeze(0).to(device)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        probs = sliding_window_inference(
            x,
            roi_size=tuple(window),  # MONAI pads a case smaller than the window
            sw_batch_size=sw_batch_size,
            predictor=predictor,
            overlap=overlap,
            mode="constant",
            sw_device=device,
            device=device,
        )  # (1, C * K, H, W, D)
    c = masks.shape[0]
    return probs.view(c, -1, *probs.shape[2:]).argmax(1).cpu()


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """The official Dice with its 1e-8 smoothing (1 when both are empty)."""
    inter = np.logical_and(pred, target).sum()
    return float((2 * inter + 1e-8) / (pred.sum() + target.sum() + 1e-8))


def _border(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def border_distances(
    pred: np.ndarray, target: np.ndarray, *, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each border voxel of one set to the other set's border.

    A border voxel is a voxel of the set with a 6-neighbour outside it or outside the
    volume; :func:`hd95`'s conventions are percentiles of these distances. The distance
    transforms are restricted to the bounding box of both masks (fast for tumour-sized
    regions).

    Returns:
        ``(pred_to_target, target_to_pred)``, one distance per border voxel.

    Raises:
        ValueError: either set is empty (HD95 is then a convention, not a distance).
    """
    from scipy import ndimage

    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if not pred.any() or not target.any():
        raise ValueError(
            "border_distances needs two non-empty sets (HD95 of an empty one is a convention)"
        )
    coords = np.argwhere(pred | target)
    box = tuple(
        slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(coords.min(0), coords.max(0), strict=True)
    )
    pb, tb = _border(pred[box]), _border(target[box])
    sampling = list(spacing) if spacing is not None else None
    to_target = ndimage.distance_transform_edt(~tb, sampling=sampling)[pb]
    to_pred = ndimage.distance_transform_edt(~pb, sampling=sampling)[tb]
    return to_target, to_pred


def hd95(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    convention: str = "official",
) -> float:
    """95th-percentile symmetric Hausdorff distance between the borders, in mm.

    ``official`` and ``brats``: ``P95`` of the distances of both directions pooled, as
    medpy's ``hd95`` (the official code's); ``monai``: ``max(P95 d(pred -> target),
    P95 d(target -> pred))``, over :func:`border_distances`. Empty sets follow
    ``convention`` (see the module docstring).
    """
    if convention not in HD95_EMPTY:
        raise ValueError(f"hd95 convention must be one of {sorted(HD95_EMPTY)}, got {convention!r}")
    p, t = bool(pred.any()), bool(target.any())
    if not p and not t:
        return 0.0
    if p != t:
        return HD95_EMPTY[convention]
    to_target, to_pred = border_distances(pred, target, spacing=spacing)
    if HD95_POOLED[convention]:
        return float(np.percentile(np.concatenate((to_target, to_pred)), 95))
    return float(max(np.percentile(to_target, 95), np.percentile(to_pred, 95)))


def case_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    regions: dict[str, tuple[int, ...]],
    *,
    spacing: Sequence[float] | None = None,
    hd95_convention: str = "official",
    etpro_threshold: int = 500,
) -> dict[str, float]:
    """Dice and HD95 of every region (plus ETPro where an ``ET`` region exists)."""
    out: dict[str, float] = {}
    for name, classes in regions.items():
        p = np.isin(pred, classes)
        t = np.isin(target, classes)
        out[f"dice_{name}"] = dice(p, t)
        out[f"hd95_{name}"] = hd95(p, t, spacing=spacing, convention=hd95_convention)
        if name == "ET":
            p_pro = p if p.sum() >= etpro_threshold else np.zeros_like(p)
            out["dice_ETPro"] = dice(p_pro, t)
            out["hd95_ETPro"] = hd95(p_pro, t, spacing=spacing, convention=hd95_convention)
    return out


def evaluate_cases(
    backbone: Backbone,
    dataset: PreparedDataset,
    *,
    window: Sequence[int] = (80, 80, 80),
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    chunk: int = 15,
    hd95_convention: str = "official",
    etpro_threshold: int = 500,
    device: torch.device | str = "cpu",
    amp: torch.dtype | None = None,
    max_cases: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (case, combination) with every metric; combinations from the dataset."""
    from tqdm.auto import tqdm

    description: DatasetDescription = dataset.description
    ms = description.modalities
    masks = ms.mask_tensor()
    spacing = description.spacing
    count = len(dataset) if not max_cases else min(max_cases, len(dataset))
    if count == 0:
        raise ValueError(f"the evaluation split of {dataset.root} has no cases")
    backbone.eval()
    rows = []
    for index in tqdm(range(count), desc="evaluate", disable=not progress, dynamic_ncols=True):
        sample = dataset[index]
        if not torch.isfinite(sample["image"]).all():
            raise ValueError(
                f"case {sample['case_id']} of {dataset.root}: image contains NaN or infinite "
                f"values; prepare it again"
            )
        labels = predict_case(
            backbone,
            sample["image"],
            masks,
            window=window,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            chunk=chunk,
            device=device,
            amp=amp,
        ).numpy()
        target = sample["label"].numpy()
        for mask_id in range(ms.num_combinations):
            metrics = case_metrics(
                labels[mask_id],
                target,
                description.regions,
                spacing=spacing,
                hd95_convention=hd95_convention,
                etpro_threshold=etpro_threshold,
            )
            rows.append(
                {"case_id": sample["case_id"], "mask_id": mask_id, "combination": ms.name(mask_id)}
                | metrics
            )
    return pd.DataFrame(rows)


def summarize(per_case: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per combination (in mask-id order), plus the mean over them."""
    metrics = [c for c in per_case.columns if c.startswith(("dice_", "hd95_"))]
    table = per_case.groupby(["mask_id", "combination"], sort=True)[metrics].mean().reset_index()
    mean = {"mask_id": "", "combination": "mean"} | table[metrics].mean().to_dict()
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


@dataclass
class LoadedRun:
    cfg: ExperimentConfig
    state: dict
    backbone: Backbone
    root: Path
    description: DatasetDescription
    device: torch.device

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype of the run's predictions (``eval.amp``) on its device."""
        return amp_dtype(self.cfg.eval.amp, self.device, "eval.amp")


def load_run(
    run_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
) -> LoadedRun:
    """A run's config and trained backbone (eval mode, on ``device``) and its dataset."""
    ckpt_path = Path(checkpoint) if checkpoint else Path(run_dir) / "checkpoint_last.pt"
    state = load_checkpoint(ckpt_path)
    cfg = ExperimentConfig.from_dict(state["config"], source=str(ckpt_path))
    root = Path(data_root) if data_root else cfg.dataset_root()
    description = load_description(root)
    backbone = build_model(cfg, description.num_modalities, len(description.classes))
    check_compatible(state, backbone, str(ckpt_path))
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise ValueError(
            f"{ckpt_path} has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): "
            f"its predictions would mean nothing"
        )
    dev = select_device(device)
    return LoadedRun(cfg, state, backbone.to(dev).eval(), root, description, dev)


def save_prediction_nifti(
    run_dir: str | os.PathLike,
    case_id: str,
    out_path: str | os.PathLike,
    *,
    modalities: Sequence[str] | None = None,
    checkpoint: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
) -> Path:
    """Predict one prepared case with a modality subset and save it in the original space.

    The prediction is un-cropped into the original grid, mapped back to the source label
    values (BraTS: 1, 2, 4) and saved with the original affine, so it overlays the
    original NIfTI files.

    Args:
        modalities: names of the available modalities (default: all).
    """
    import nibabel as nib

    from passion_kit.data.prepared import case_dir
    from passion_kit.data.preprocess import uncrop

    loaded = load_run(run_dir, checkpoint=checkpoint, data_root=data_root, device=device)
    ms = loaded.description.modalities
    names = list(modalities) if modalities else list(ms.modalities)
    mask = torch.tensor([[ms.modalities[i] in names for i in range(ms.num_modalities)]])
    for name in names:
        ms.index(name)  # unknown names raise a clear error
    if not mask.any():
        raise ValueError("modalities must name at least one modality")
    sample = PreparedDataset(loaded.root, [case_id], setting="full")[0]
    cfg = loaded.cfg
    labels = predict_case(
        loaded.backbone,
        sample["image"],
        mask,
        window=cfg.eval.window,
        overlap=cfg.eval.overlap,
        device=loaded.device,
        amp=loaded.amp,
    )[0].numpy()
    to_raw = np.zeros(len(loaded.description.classes), dtype=np.int16)
    for raw, cls in loaded.description.label_mapping.items():
        to_raw[cls] = raw
    meta = json.loads((case_dir(loaded.root, case_id) / "meta.json").read_text())
    if "original_affine" not in meta:
        raise ValueError(f"case {case_id} has no original affine in its meta.json (not from NIfTI)")
    volume = uncrop(to_raw[labels].astype(np.uint8), meta)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.asarray(meta["original_affine"])), str(out))
    return out


def ensure_evaluated(run_dir: str | os.PathLike, split: str = "test", **options) -> dict[str, Path]:
    """The tables of ``evaluate_run``, computed unless the run has them for ``split`` from
    its current checkpoint with the same evaluation settings (``settings.json``)."""
    out = Path(run_dir) / "eval" / split
    paths = {
        "per_case": out / "per_case.csv",
        "summary": out / "summary.csv",
        "markdown": out / "summary.md",
    }
    record = out / "settings.json"
    if all(p.exists() for p in paths.values()) and record.is_file():
        try:
            done = json.loads(record.read_text())
        except (OSError, ValueError):
            done = {}
        state = load_checkpoint(options.get("checkpoint") or Path(run_dir) / "checkpoint_last.pt")
        stored = ExperimentConfig.from_dict(state["config"], source=str(run_dir)).eval
        settings = options.get("settings") or stored
        wanted = _used_settings(settings, options.get("hd95_convention"), options.get("max_cases"))
        device = select_device(options.get("device", "auto"))
        on = _computed_on(device, amp_dtype(settings.amp, device, "eval.amp"))
        same = done.get("eval") == wanted and done.get("epoch") == state["epoch"]
        if same and done.get("computed_on") == on:  # a bf16 table is not an fp32 one
            return paths
    return evaluate_run(run_dir, split=split, **options)


def _used_settings(settings: EvalConfig, hd95: str | None, max_cases: int | None) -> dict:
    """The evaluation settings a table was computed with (JSON-comparable)."""
    used = dataclasses.asdict(settings)
    if hd95 is not None:
        used["hd95"] = hd95
    if max_cases is not None:
        used["max_cases"] = max_cases
    return json.loads(json.dumps(used))


def _computed_on(device: torch.device, amp: torch.dtype | None) -> str:
    """The device kind and precision of an evaluation, e.g. ``cpu, bfloat16``."""
    return f"{device.type}, {str(amp).removeprefix('torch.') if amp else 'float32'}"


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_as_one(out: Path, files: dict[str, str]) -> None:
    """Write ``files`` into ``out`` as one unit: a sibling folder filled, then swapped in.

    A kill leaves either the old tables or the new ones, never a mix (the leftover
    temporary folder is removed by the next evaluation).
    """
    parent = out.parent
    for stale in parent.glob(f"{TMP_PREFIX}{out.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    fresh = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}-", dir=parent))
    for name, text in files.items():
        (fresh / name).write_text(text)
    old = None
    if out.exists():
        old = parent / f"{TMP_PREFIX}{out.name}-old"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    fresh.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_run_id(run: Path, checkpoint: Path, state: dict) -> None:
    """Refuse a checkpoint that another run wrote (copied into this run's folder)."""
    meta = run / "meta.json"
    mine = None
    if meta.is_file():
        try:
            mine = json.loads(meta.read_text()).get("run_id")
        except (OSError, ValueError):
            mine = None
    theirs = state.get("run_id")
    if mine and theirs and mine != theirs:
        raise ValueError(
            f"{checkpoint} was written by run {theirs}, not by {run} (run {mine}): its tables "
            f"would be filed under another run; evaluate the checkpoint's own run folder"
        )


def _check_same_dataset(
    data_root: Path, description: DatasetDescription, cfg: ExperimentConfig
) -> None:
    """Refuse another dataset than the run's: its tables would be filed under the run.

    The same dataset moved elsewhere is fine (its description is the same, or the
    original folder is gone).
    """
    original = cfg.dataset_root()
    if not (original / "dataset.json").is_file() or original.resolve() == data_root.resolve():
        return
    mine, theirs = load_description(original).to_json(), description.to_json()
    if mine != theirs:
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise ValueError(
            f"{data_root} is another dataset than the run's {original} ({', '.join(differ[:3])} "
            f"differ in dataset.json); the tables would be filed under the run as its own"
        )


def _check_same_run(run: Path, checkpoint: Path, cfg: ExperimentConfig) -> None:
    """Refuse a checkpoint of another run: its tables would be filed under ``run``."""
    if checkpoint.resolve().parent == run.resolve():
        return
    own = run / "config.json"
    if not own.is_file():
        raise ValueError(
            f"{checkpoint} is not in {run} and {run} has no config.json to compare it with; "
            f"evaluate the checkpoint's own run folder"
        )
    mine = ExperimentConfig.from_file(own).to_dict()
    theirs = cfg.to_dict()
    differ = sorted(
        f"{section}.{key}"
        for section in mine
        for key in mine[section]
        if (section, key) not in PLACE_KEYS and mine[section][key] != theirs[section].get(key)
    )
    if differ:
        raise ValueError(
            f"{checkpoint} belongs to another run than {run} ({', '.join(differ[:3])} "
            f"differ); evaluate the checkpoint's own run folder"
        )


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    split: str | None = None,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    hd95_convention: str | None = None,
    max_cases: int | None = None,
    settings: EvalConfig | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Evaluate a training run's checkpoint on its test split; write the tables.

    ``settings`` (``eval.*``) replace the run's stored evaluation settings; the settings
    used, the checkpoint's run id and content hash are recorded in ``settings.json`` next
    to the tables, which are written as one unit (a folder renamed into place).

    Returns:
        Paths of ``per_case.csv``, ``summary.csv`` and ``summary.md`` under
        ``<run_dir>/eval/<split>/``.
    """
    loaded = load_run(run_dir, checkpoint=checkpoint, data_root=data_root, device=device)
    cfg, state, backbone, dev = loaded.cfg, loaded.state, loaded.backbone, loaded.device
    if settings is not None:
        cfg = dataclasses.replace(cfg, eval=settings)
    if max_cases is not None and max_cases < 0:
        raise ValueError(f"--max-cases must be >= 0, got {max_cases}")
    if dev.type == "cpu":
        reuse_freed_memory()  # the windows' 15 mask rows are not faulted in again per window
    run = Path(run_dir)
    if checkpoint is not None:
        _check_same_run(run, Path(checkpoint), cfg)
    _check_run_id(run, Path(checkpoint) if checkpoint else run / "checkpoint_last.pt", state)
    if data_root is not None:
        _check_same_dataset(Path(data_root), loaded.description, cfg)
    split = check_name(split or cfg.data.test_split, "the split")
    dataset = PreparedDataset(loaded.root, split, setting="full")
    inside(run, "eval", split, what="the evaluation folder of split")
    out = run / "eval" / split
    check_writable(out, "the evaluation tables")  # before minutes of computing
    with RunLock(run, "an evaluation of this run"):  # one process writes its tables
        remove_stale_temps(out)
        started = time.perf_counter()
        per_case = evaluate_cases(
            backbone,
            dataset,
            window=cfg.eval.window,
            overlap=cfg.eval.overlap,
            sw_batch_size=cfg.eval.sw_batch_size,
            chunk=cfg.eval.mask_chunk,
            hd95_convention=hd95_convention or cfg.eval.hd95,
            etpro_threshold=cfg.eval.etpro_threshold,
            device=dev,
            amp=loaded.amp,
            max_cases=cfg.eval.max_cases if max_cases is None else max_cases,
            progress=progress,
        )
        summary = summarize(per_case)
        cases = per_case["case_id"].nunique()
        seconds = time.perf_counter() - started
        title = (
            f"{cfg.run_name()}: {cases} {split} cases, epoch {state['epoch']}, "
            f"HD95 convention {hd95_convention or cfg.eval.hd95}, {seconds:.0f} s"
        )
        record = {
            "eval": _used_settings(cfg.eval, hd95_convention, max_cases),
            "computed_on": _computed_on(dev, loaded.amp),
            "run_id": state.get("run_id"),
            "checkpoint_sha256": _sha256(checkpoint or run / "checkpoint_last.pt"),
            "epoch": state["epoch"],
        }
        tables = {
            "per_case.csv": per_case.to_csv(index=False),
            "summary.csv": summary.to_csv(index=False),
            "summary.md": f"# {title}\n\n{markdown_table(summary)}\n",
            "settings.json": json.dumps(record, indent=2),
        }
        _write_as_one(out, tables)
        return {
            "per_case": out / "per_case.csv",
            "summary": out / "summary.csv",
            "markdown": out / "summary.md",
        }
