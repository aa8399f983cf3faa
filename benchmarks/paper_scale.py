"""Paper scale, end to end: full-size BraTS-like files through every stage of a paper run.

Generates a few synthetic BraTS2020 cases (``data_scripts/make_brats_like.py``, 240 x 240
x 155, the phantom written as BraTS files: timings only, never a result) in a temporary
folder and runs the ``brats2020-paper`` path on them, timing each stage:

- preparation (``prepare_brats2020``: reading the NIfTI files, crop, z-score, writing);
- the training set as ``fit`` builds it (``PreparedDataset``, IDT, ``mr2468``, the
  paper's augmentation with 80^3 crops) in a torch DataLoader, samples per second for
  each ``--workers`` count;
- training steps of RFNet (``--backbone``) with PASSION off (baseline) and on: the
  preset's objective, AdamW (amsgrad), batch 1, with the DataLoader in the loop (the
  largest ``--workers`` count) and with batches loaded beforehand; both walk the cases in
  the same order (one step each by default) and the mean is reported, because a step's
  cost depends on the case's availability mask (PASSION has a student per present
  modality when at least two are present);
- the 15-combination evaluation of a full-size case, as ``evaluate_cases`` does it:
  the prediction (MONAI's sliding window, 80^3 windows at 0.5 overlap) and the metrics
  (Dice, HD95, ETPro of every combination), timed apart; the model has taken only a few
  steps, so the metrics' time is that of untrained predictions;
- the NIfTI export of a prediction (``save_prediction_nifti``: the run's checkpoint read,
  one combination predicted, un-cropped and written);
- peak memory (RSS; CUDA memory allocated on a GPU);

then projects the paper's schedule at those rates: 300 epochs of 219 steps (batch 1),
and the evaluation of the 100 test cases once at the end (the preset validates nothing
during training), and says how many loader workers keep up with the step measured here
and with the GPU steps of ``--gpu-steps`` (by default the H200 RFNet figures of
``docs/benchmarks.md``), one worker's rate being the one measured with one worker.

The generated cases take the numbers of cases of the official training list, so their
rows of the official ``mr2468`` split apply: the first case with 2 present modalities
(the split's commonest count), then with 1, 3 and 4 (three cases: 2, 1 and 3 present, a
mean of 2.0 against the split's 2.07). The prepared dataset's ``train`` list and
``mr2468`` file are cut to those cases.

Usage::

    python benchmarks/paper_scale.py --device cpu          # a few minutes on 2 cores
    python benchmarks/paper_scale.py --device cuda
    python benchmarks/paper_scale.py --device cpu --smoke  # tiny sizes: seconds

It prints a ``machine: ...`` line and the load average first, then one table.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SMOKE_SIZE = (48, 48, 32)
SMOKE_WINDOW = 32  # 4 windows of a smoke case; the patch is the backbone's smallest
TEST_CASES = 100  # the official test list, evaluated once after training


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _make_brats_like():
    path = HERE.parent / "data_scripts" / "make_brats_like.py"
    spec = importlib.util.spec_from_file_location("make_brats_like", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _workers(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"--workers must list counts >= 0 like 0,1,2,4: {text!r}")
    return counts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def _loader(dataset, cfg, workers: int, device: torch.device, *, samples=0, order=()):
    """A DataLoader as ``fit`` builds one: ``samples`` random draws, or the indices ``order``."""
    from torch.utils.data import DataLoader, RandomSampler

    if order:
        sampler = list(order)
    else:
        generator = torch.Generator().manual_seed(workers)
        sampler = RandomSampler(dataset, replacement=True, num_samples=samples, generator=generator)
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _loader_rate(dataset, cfg, workers: int, samples: int, device: torch.device) -> float:
    """Samples per second drawn through a DataLoader, worker start-up included."""
    started = time.perf_counter()
    count = 0
    for batch in _loader(dataset, cfg, workers, device, samples=samples):
        count += batch["image"].shape[0]
    return count / (time.perf_counter() - started)


def _case_numbers(count: int) -> list[int]:
    """Numbers of ``count`` cases of the official training list whose ``mr2468`` masks
    follow the split's mix: the first case with 2 present modalities (the commonest
    count), then with 1, 3 and 4, then the next cases of the list."""
    from passion_kit.data.description import BRATS2020
    from passion_kit.data.splits import read_split, shipped

    split = read_split(shipped("brats2020/Brats2020_imb_split_mr2468.csv"), BRATS2020.modalities)
    chosen: list[str] = []
    for present in (2, 1, 3, 4):
        chosen += [c for c in split.case_ids if sum(split.mask_of(c)) == present][:1]
    chosen = chosen[:count]
    chosen += [c for c in split.case_ids if c not in chosen][: count - len(chosen)]
    return sorted(int(c.rsplit("_", 1)[1]) for c in chosen)


def _training_parts(cfg, dataset, device: torch.device):
    """Model, objective and optimizer as ``fit`` sets them up."""
    from passion_kit.engine.runs import build_model
    from passion_kit.engine.train import build_objective_from

    description = dataset.description
    m, k = description.num_modalities, len(description.classes)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, m, k).to(device)
    objective = build_objective_from(cfg, m, k)
    if cfg.data.setting in ("idt", "idt_drop") and hasattr(objective, "set_omega"):
        counts, total = dataset.availability()
        omega = torch.where(counts > 0, total / counts.clamp_min(1).double(), 0.0).float()
        objective.set_omega(omega)
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True
    )
    return model, objective, optimizer


def _time_steps(cfg, dataset, device, amp, steps: int, loop_workers: int) -> dict:
    """Mean step seconds with preloaded batches and with the loader in the loop.

    Both walk the cases in the same order (case ``i % N`` at step ``i``, after one
    warm-up step on case 0), so both see the same availability masks: PASSION's cost
    depends on the number of present modalities (its students).
    """
    model, objective, optimizer = _training_parts(cfg, dataset, device)
    model.train()

    def step(batch: dict) -> None:
        batch = _to(batch, device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            result = objective(batch, model)
        result.loss.backward()
        if hasattr(objective, "after_backward"):
            objective.after_backward(model)
        optimizer.step()
        _sync(device)

    n = len(dataset)
    order = [0, *(i % n for i in range(steps))]  # the warm-up, then the timed steps
    preloaded = list(_loader(dataset, cfg, 0, device, order=range(n)))
    times: dict[str, list[float]] = {"preloaded": [], "loop": []}
    step(preloaded[0])
    for index in order[1:]:
        started = time.perf_counter()
        step(preloaded[index])
        times["preloaded"].append(time.perf_counter() - started)
    batches = iter(_loader(dataset, cfg, loop_workers, device, order=order))
    step(next(batches))  # worker start-up included
    for _ in order[1:]:
        started = time.perf_counter()
        step(next(batches))
        times["loop"].append(time.perf_counter() - started)
    return {"model": model, **{k: statistics.mean(v) for k, v in times.items()}}


def _evaluate(model, root, case_ids, cfg, device) -> tuple[float, float]:
    """Seconds per case of the 15-combination prediction and of its metrics, as
    ``evaluate_cases`` computes them (the loop is written out to time the two apart)."""
    from passion_kit.data import PreparedDataset
    from passion_kit.engine.evaluate import case_metrics, predict_case
    from passion_kit.engine.runtime import amp_dtype

    dataset = PreparedDataset(root, list(case_ids), setting="full")
    description = dataset.description
    masks = description.modalities.mask_tensor()
    amp = amp_dtype(cfg.eval.amp, device, "eval.amp")
    model.eval()
    predict_s = metrics_s = 0.0
    for index in range(len(dataset)):
        sample = dataset[index]
        started = time.perf_counter()
        labels = predict_case(
            model,
            sample["image"],
            masks,
            window=cfg.eval.window,
            overlap=cfg.eval.overlap,
            sw_batch_size=cfg.eval.sw_batch_size,
            chunk=cfg.eval.mask_chunk,
            device=device,
            amp=amp,
        ).numpy()
        _sync(device)
        predict_s += time.perf_counter() - started
        started = time.perf_counter()
        target = sample["label"].numpy()
        for mask_id in range(len(masks)):
            case_metrics(
                labels[mask_id],
                target,
                description.regions,
                spacing=description.spacing,
                hd95_convention=cfg.eval.hd95,
                etpro_threshold=cfg.eval.etpro_threshold,
            )
        metrics_s += time.perf_counter() - started
    return predict_s / len(dataset), metrics_s / len(dataset)


def _rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: kilobytes


def _format(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


# RFNet steps at 80^3, batch 1, fp32, on one H200 (docs/benchmarks.md, gpu_check.py).
H200_STEPS = {0.146: "H200 RFNet baseline step", 0.207: "H200 RFNet PASSION step"}


def _seconds(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected seconds > 0 separated by commas, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cases", type=int, default=3, help="synthetic cases generated")
    parser.add_argument("--workers", type=_workers, default=[0, 1, 2, 4], help="e.g. 0,1,2,4")
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps per row, cycling the cases (0: one each)"
    )
    parser.add_argument("--samples", type=int, default=16, help="loader samples per count")
    parser.add_argument("--eval-cases", type=int, default=1, help="cases evaluated")
    parser.add_argument("--backbone", default="rfnet")
    parser.add_argument("--amp", default="off", choices=("off", "bf16"), help="train and eval")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--tmp", default=None, help="parent of the temporary folder")
    parser.add_argument(
        "--gpu-steps",
        type=_seconds,
        default=list(H200_STEPS),
        help="GPU step seconds to feed, e.g. 0.146,0.207 (default: the H200 RFNet steps)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="48x48x32 cases, smallest patch, 1 step, workers 0,1, 1 thread",
    )
    args = parser.parse_args(argv)
    if args.cases < 1 or args.steps < 0 or args.samples < 1 or args.eval_cases < 1:
        parser.error("--cases, --samples and --eval-cases must be >= 1, --steps >= 0")
    args.steps = args.steps or args.cases
    if args.smoke:  # plumbing only; one thread, so that a busy machine does not stall it
        args.steps, args.workers, args.samples = 1, [0, 1], 2
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    # More workers than cores is measured on purpose.
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    from passion_kit.config import ExperimentConfig
    from passion_kit.data import PreparedDataset, augment_for, load_description
    from passion_kit.data.brats import prepare_brats2020
    from passion_kit.data.prepared import list_cases, read_case_ids, write_case_ids
    from passion_kit.data.splits import MissingRateSplit, read_split, shipped, write_split
    from passion_kit.engine.evaluate import save_prediction_nifti
    from passion_kit.engine.runtime import (
        machine_summary,
        reuse_freed_memory,
        select_device,
    )
    from passion_kit.io import atomic_torch_save

    device = select_device(args.device)
    if device.type == "cpu":
        reuse_freed_memory()  # as fit and evaluation run on CPU
    amp = torch.bfloat16 if args.amp == "bf16" else None
    print(f"machine: {machine_summary(device, amp)}")
    load = os.getloadavg()
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)")

    official_train = read_case_ids(shipped("brats2020/train.txt"))
    make = _make_brats_like()
    size = SMOKE_SIZE if args.smoke else make.BRATS_SIZE
    numbers = _case_numbers(args.cases)
    overrides = [f"model.backbone={args.backbone}", f"train.device={args.device}"]
    overrides += [f"train.amp={args.amp}", f"eval.amp={args.amp}", "train.progress=false"]
    if args.smoke:
        patch = 16 if args.backbone == "rfnet" else SMOKE_WINDOW  # the smallest each takes
        overrides += [f"data.patch_size={patch}", f"eval.window={SMOKE_WINDOW}"]

    with tempfile.TemporaryDirectory(prefix="passion-kit-paper-scale-", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        raw, root = tmp / "raw", tmp / "brats2020"
        _log(f"writing {len(numbers)} synthetic case(s) of {'x'.join(map(str, size))} ...")
        started = time.perf_counter()
        make.make_brats_like(raw, numbers=numbers, size=size, seed=0)
        generate_s = (time.perf_counter() - started) / len(numbers)
        _log("preparing them ...")
        started = time.perf_counter()
        prepare_brats2020(root, raw_root=raw, workers=1, progress=False, layout="brats2020")
        prepare_s = (time.perf_counter() - started) / len(numbers)

        # The train list and mr2468 cut to the generated cases (their official rows).
        ids = list_cases(root)
        description = load_description(root)
        rates = root / "splits" / "missing_rates" / "mr2468.csv"
        official = read_split(rates, description.modalities)
        rows = MissingRateSplit(description.modalities, ids, [official.mask_of(i) for i in ids])
        write_split(rows, rates, overwrite=True)
        write_case_ids(root / "splits" / "train.txt", ids)
        present = ", ".join(str(sum(rows.mask_of(i))) for i in ids)

        cfg = ExperimentConfig.preset("brats2020-paper").override([*overrides, f"data.root={root}"])
        dataset = PreparedDataset(
            root,
            cfg.data.train_split,
            setting=cfg.data.setting,
            missing_rates=cfg.data.missing_rates,
            augment=augment_for(
                description,
                tuple(cfg.data.patch_size),
                jitter=cfg.data.jitter,
                image_fill=cfg.data.image_fill,
            ),
        )

        rates_by_workers = {}
        for w in args.workers:
            _log(f"loader with {w} worker(s) ...")
            rates_by_workers[w] = _loader_rate(dataset, cfg, w, args.samples, device)
        loop_workers = max(args.workers)
        rss_worker = _rss_mb(resource.RUSAGE_CHILDREN)  # workers forked from a small parent

        steps = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for name in ("baseline", "passion"):
            _log(f"{name} steps ...")
            cfg_o = copy.deepcopy(cfg).override([f"objective.name={name}"])
            steps[name] = _time_steps(cfg_o, dataset, device, amp, args.steps, loop_workers)
        rss_train = _rss_mb()
        cuda_train = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0

        model = steps["passion"].pop("model").eval()
        steps["baseline"].pop("model")
        eval_ids = ids[: args.eval_cases]
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _log(f"evaluating {len(eval_ids)} case(s), 15 combinations ...")
        predict_s, metrics_s = _evaluate(model, root, eval_ids, cfg, device)
        cuda_eval = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0

        _log("exporting a prediction as NIfTI ...")
        run_dir = tmp / "run"
        state = {
            "format": 1,
            "epoch": 0,
            "config": cfg.to_dict(),
            "backbone": cfg.model.backbone,
            "num_modalities": model.num_modalities,
            "num_classes": model.num_classes,
            "model": model.state_dict(),
        }
        atomic_torch_save(state, run_dir / "checkpoint_last.pt")
        started = time.perf_counter()
        written = save_prediction_nifti(
            run_dir,
            ids[0],
            tmp / "export" / "prediction.nii.gz",
            data_root=root,
            device=args.device,
        )
        export_s = time.perf_counter() - started
        import nibabel as nib

        exported = nib.load(str(written))
        if tuple(exported.shape) != tuple(size):
            raise RuntimeError(f"{written}: shape {exported.shape}, expected {size}")
        rss_all = _rss_mb()

    epochs = cfg.train.epochs
    per_epoch = cfg.train.iterations_per_epoch or math.ceil(
        len(official_train) / cfg.train.batch_size
    )
    # One loader worker's rate: measured with one worker where that count ran.
    single = rates_by_workers.get(1) or rates_by_workers[min(rates_by_workers)]
    sample_s = cfg.train.batch_size / single  # one worker's seconds per batch
    patch = "x".join(map(str, cfg.data.patch_size))
    table: list[tuple[str, float]] = [
        ("synthetic case written (s/case)", generate_s),
        ("preparation, prepare_brats2020 (s/case)", prepare_s),
    ]
    for w, rate in rates_by_workers.items():
        table.append((f"loader, {patch} crops, {w} worker(s) (samples/s)", rate))
    for name, label in (("baseline", "baseline"), ("passion", "PASSION")):
        table.append((f"step {label}, batches loaded beforehand (s)", steps[name]["preloaded"]))
        table.append(
            (f"step {label}, loader in the loop, {loop_workers} worker(s) (s)", steps[name]["loop"])
        )
    table.append(("evaluation, 15 combinations: prediction (s/case)", predict_s))
    table.append(("evaluation, 15 combinations: metrics (s/case)", metrics_s))
    table.append(("NIfTI export, save_prediction_nifti (s/case)", export_s))
    table.append(("peak RSS, through the training steps (MB)", rss_train))
    table.append(("peak RSS, through evaluation and export (MB)", rss_all))
    if loop_workers:
        table.append(("peak RSS of a loader worker, shared pages included (MB)", rss_worker))
    if device.type == "cuda":
        table.append(("peak CUDA memory allocated, training steps (MB)", cuda_train))
        table.append(("peak CUDA memory allocated, evaluation (MB)", cuda_eval))
    evaluation_h = TEST_CASES * (predict_s + metrics_s) / 3600
    for name, label in (("baseline", "baseline"), ("passion", "PASSION")):
        need = max(1, math.ceil(sample_s / steps[name]["preloaded"]))
        for kind, words in (("preloaded", "loader kept up"), ("loop", "loader in the loop")):
            hours = epochs * per_epoch * steps[name][kind] / 3600 + evaluation_h
            table.append((f"paper schedule, {label}, {words} (h)", hours))
        table.append((f"loader workers to keep up with the {label} step", need))
    for step_s in args.gpu_steps:
        name = H200_STEPS.get(step_s, "given with --gpu-steps")
        need = max(1, math.ceil(sample_s / step_s))
        table.append((f"loader workers to keep up with a {step_s:g} s step ({name})", need))
        hours = epochs * per_epoch * step_s / 3600
        table.append((f"paper schedule at a {step_s:g} s step, training only (h)", hours))

    print(
        f"{args.backbone}, patch {patch}, batch {cfg.train.batch_size}, {args.device}, "
        f"{'bf16' if amp else 'fp32'}, {len(numbers)} case(s) of {'x'.join(map(str, size))}, "
        f"present modalities {present}, {args.steps} timed step(s) per row (mean) after one "
        f"warm-up, {args.samples} loader samples per count, {torch.get_num_threads()} torch "
        f"thread(s), torch {torch.__version__}"
    )
    print(
        f"paper schedule: {epochs} epochs x {per_epoch} steps, then {TEST_CASES} test cases "
        f"evaluated once ({evaluation_h:.2f} h of it); no validation during training"
    )
    print()
    print("| measure | value |")
    print("|---|---|")
    for what, value in table:
        shown = f"{value:d}" if isinstance(value, int) else _format(value)
        print(f"| {what} | {shown} |")
    load = os.getloadavg()
    print()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)")
    return dict(table)


if __name__ == "__main__":
    main()
