"""Command line: ``python -m passion_kit <command>``.

Commands:
    info        versions, device and data root.
    train       train a run (``--preset cpu``, ``--config FILE``, then ``section.key=value``).
    evaluate    evaluate a run over every modality combination of its dataset.
    reproduce   run the training/evaluation notebook over a grid with papermill.
    explorer-checkpoint
                train the explorer's run and pack it as the package's shipped files.
    quickstart  a few PASSION training steps on CPU with RFNet on a built-in toy volume,
                printing each modality's distance to the teacher, gate and beta.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _info(_: argparse.Namespace) -> int:
    from passion_kit.engine.runtime import environment

    for key, value in environment().items():
        print(f"{key:>14}: {value}")
    return 0


def _toy_batch(size: int, masks: list[list[bool]]):
    """Spheres of three tumour regions seen differently by four modalities (flair, t1c, t1, t2)."""
    import torch

    grid = torch.stack(torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij")).float()
    r = (grid - (size - 1) / 2).norm(dim=0) / size
    label = torch.zeros(size, size, size, dtype=torch.long)
    label[r < 0.35] = 2  # edema
    label[r < 0.22] = 3  # enhancing
    label[r < 0.12] = 1  # necrotic core
    flair = (label > 0).float()
    t1c = (label == 3).float() - 0.5 * (label == 1).float()
    t1 = 0.1 * (label > 0).float()
    t2 = (label == 2).float() + 0.7 * (label == 1).float()
    g = torch.Generator().manual_seed(0)
    image = torch.stack([flair, t1c, t1, t2]) + 0.3 * torch.randn(4, size, size, size, generator=g)
    mask = torch.tensor(masks, dtype=torch.bool)
    b = mask.shape[0]
    return {
        "image": image.expand(b, -1, -1, -1, -1) * mask[:, :, None, None, None],
        "label": label.expand(b, -1, -1, -1),
        "mask": mask,
    }


def _quickstart(args: argparse.Namespace) -> int:
    import torch

    import passion_kit as pk
    from passion_kit.data.modalities import BRATS
    from passion_kit.fast import speed_up

    torch.manual_seed(args.seed)
    net = speed_up(pk.build_backbone("rfnet", patch_size=args.patch_size))  # faster kernels
    objective = pk.objectives.build_objective("passion", num_modalities=4, num_classes=4)
    speed_up(objective.upsample)  # the losses' Up too
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-4, amsgrad=True)
    masks = [BRATS.mask(i) for i in (14, 12, 10, 9)]  # all, flair+t1c+t2, flair+t1c+t1, flair+t1c
    print(
        f"RFNet ({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters), "
        f"PASSION, {args.epochs} epochs of {len(masks)} steps on a {args.patch_size}^3 toy volume"
    )
    header = "epoch  loss   " + "  ".join(
        f"{'D_' + m:>8} {'beta_' + m:>10}" for m in BRATS.modalities
    )
    print(header)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        losses = []
        for mask in masks:
            optimizer.zero_grad(set_to_none=True)
            result = objective(_toy_batch(args.patch_size, [mask]), net)
            result.loss.backward()
            optimizer.step()
            losses.append(result.loss.item())
        record = objective.end_epoch()
        cells = "  ".join(
            f"{d:>8.4f} {b:>10.3f}" for d, b in zip(record["distance"], record["beta"], strict=True)
        )
        print(f"{epoch:>5}  {sum(losses) / len(losses):.3f}  {cells}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.train import fit

    if args.config:
        cfg = ExperimentConfig.from_file(args.config, args.overrides)
    else:
        cfg = ExperimentConfig.preset(args.preset).override(args.overrides)
    run_dir = fit(cfg)
    print(f"run directory: {run_dir}")
    if args.evaluate and int(os.environ.get("RANK", "0")) == 0:
        from passion_kit.engine.evaluate import evaluate_run

        paths = evaluate_run(  # with the eval.* settings asked for, not the stored ones
            run_dir, device=cfg.train.device, progress=cfg.train.progress, settings=cfg.eval
        )
        print(paths["markdown"].read_text())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from passion_kit.engine.evaluate import evaluate_run

    paths = evaluate_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        split=args.split,
        data_root=args.data_root,
        device=args.device,
        hd95_convention=args.hd95,
        max_cases=args.max_cases,
    )
    print(paths["markdown"].read_text())
    for name, path in paths.items():
        print(f"{name}: {_shown(path)}")
    return 0


def _shown(path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _explorer_checkpoint(args: argparse.Namespace) -> int:
    from passion_kit.engine.train import fit
    from passion_kit.lessons.explorer import (
        SHIPPED_EXPLORER,
        explorer_config,
        pack_explorer_checkpoint,
    )

    data_root = args.data_root or os.environ.get("PASSION_KIT_DATA", "data")
    cfg = explorer_config(data_root, args.run_dir, device=args.device)
    cfg.train.progress = True
    run = fit(cfg)
    out = pack_explorer_checkpoint(run, args.out or SHIPPED_EXPLORER)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 2**20
    print(f"run directory: {run}\nexplorer checkpoint: {out} ({size:.1f} MB)")
    return 0


# The grids of passion_kit.reproduce.GRIDS (listed here to keep the CLI's start light).
GRID_NAMES = ["default", "balancing", "imbalance", "paper"]


def _reproduce(args: argparse.Namespace) -> int:
    import pandas as pd

    from passion_kit.reproduce import (
        GRIDS,
        auto_jobs,
        format_effect,
        grid_points,
        reproduce,
        run_machines,
        run_overview,
        with_overrides,
    )

    def listed(text: str | None, cast=str):
        return [cast(v) for v in text.split(",") if v] if text else None

    grid = with_overrides(
        GRIDS[args.grid],
        backbones=listed(args.backbones),
        objectives=listed(args.objectives),
        missing_rates=listed(args.missing_rates),
        seeds=listed(args.seeds, int),
    )
    extra = dict(grid.parameters)
    for item in args.parameters:
        key, _, value = item.partition("=")
        extra[key] = _literal(value)
    grid.parameters = extra
    jobs = args.jobs
    if jobs == "auto":
        jobs = auto_jobs(grid)
    elif not jobs.isdigit() or int(jobs) < 1:
        print(f"error: --jobs must be a positive integer or auto, got {jobs!r}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    paths = reproduce(grid, out=args.out, jobs=int(jobs))
    points = grid_points(grid)
    overview = run_overview(args.out, points)
    print("\nEvery run (test split): Dice with all modalities, mean Dice over the combinations,")
    print("and the last epoch's largest and smallest beta (PASSION) or coefficient:\n")
    print(overview.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for stem in ("gap", "effect"):  # IDT minus PDT, PASSION minus baseline
        if stem in paths:
            print()
            print(format_effect(pd.read_csv(paths[stem])))
    for line in run_machines(args.out, points):
        print(f"machine: {line}")
    print(f"finished in {time.perf_counter() - started:.0f} s")
    for name, path in paths.items():
        print(f"{name}: {_shown(path)}")
    return 0


def _literal(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _count(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer >= 0 expected, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"an integer >= 0 expected, got {value}")
    return value


def _device(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps (argparse type; whether it exists is checked later)."""
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"auto, cpu, cuda, cuda:N or mps expected, got {text!r}")
    return text


def _seeds(text: str) -> str:
    """Comma-separated integers >= 0 (argparse type; kept as text for the grid)."""
    for part in filter(None, text.split(",")):
        _count(part)
    return text


def _toy_patch(text: str) -> int:
    """The quickstart's volume edge: 16 to 128 voxels, a multiple of 16 (argparse type)."""
    value = _count(text)
    if not 16 <= value <= 128 or value % 16:
        raise argparse.ArgumentTypeError(f"16 to 128, a multiple of 16, expected, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m passion_kit", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device and data root").set_defaults(func=_info)
    quick = sub.add_parser("quickstart", help="a few PASSION steps on a toy volume (CPU)")
    quick.add_argument("--epochs", type=int, default=3)
    quick.add_argument("--patch-size", type=_toy_patch, default=32, help="16-128, a multiple of 16")
    quick.add_argument("--seed", type=int, default=0)
    quick.set_defaults(func=_quickstart)
    train = sub.add_parser("train", help="train (or resume) a run")
    train.add_argument(
        "--preset",
        default="cpu",
        help="cpu | brats2020-paper | myops2020-paper | brats2020-official | myops2020-official",
    )
    train.add_argument("--config", help="a JSON or YAML config file (may name a preset)")
    train.add_argument("--evaluate", action="store_true", help="evaluate the run afterwards")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=2")
    train.set_defaults(func=_train)
    evaluate = sub.add_parser("evaluate", help="evaluate a run on every modality combination")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--checkpoint", help="default: <run_dir>/checkpoint_last.pt")
    evaluate.add_argument("--split", help="default: the run's data.test_split")
    evaluate.add_argument("--data-root", help="default: the run's prepared dataset")
    evaluate.add_argument("--device", default="auto", type=_device)
    evaluate.add_argument(
        "--hd95",
        choices=["official", "brats", "monai"],
        help="HD95 convention: definition and empty-set value (default: the run's eval.hd95)",
    )
    evaluate.add_argument(
        "--max-cases", type=_count, help="evaluate only the first N cases (N >= 0)"
    )
    evaluate.set_defaults(func=_evaluate)
    ship = sub.add_parser(
        "explorer-checkpoint", help="train the explorer's run and pack it as the shipped files"
    )
    ship.add_argument("--data-root", help="default: $PASSION_KIT_DATA, else ./data")
    ship.add_argument("--run-dir", default="runs")
    ship.add_argument("--device", default="auto", type=_device)
    ship.add_argument("--out", help="default: the package's resources/explorer folder")
    ship.set_defaults(func=_explorer_checkpoint)
    rep = sub.add_parser("reproduce", help="run the notebooks over a grid (papermill)")
    rep.add_argument("--grid", default="default", choices=GRID_NAMES)
    rep.add_argument("--backbones", help="comma-separated, e.g. rfnet,mmformer")
    rep.add_argument("--objectives", help="comma-separated, e.g. baseline,passion")
    rep.add_argument("--missing-rates", help="comma-separated split names, e.g. mr2468,mr1379")
    rep.add_argument("--seeds", type=_seeds, help="comma-separated, e.g. 0,1,2")
    rep.add_argument("--out", default="outputs/reproduce")
    rep.add_argument(
        "--jobs", default="auto", help="points run at once (auto: cores + 1 for CPU grids, else 1)"
    )
    rep.add_argument("parameters", nargs="*", help="notebook parameters, e.g. epochs=8")
    rep.set_defaults(func=_reproduce)
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    args = parser.parse_args(argv)
    from passion_kit.io import report_errors

    # A bad file, key or value prints one line naming it (exit 2 for a bad argument, 1
    # otherwise); --debug shows where it was raised.
    return report_errors(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
