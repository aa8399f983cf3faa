"""How fast a backbone learns the phantom on this machine: Dice against steps and seconds.

Trains one run with the kit's trainer (the ``cpu`` preset unless told otherwise, plus any
``section.key=value`` overrides), keeps a checkpoint at every ``--eval-every`` epochs and
evaluates each on the phantom's test split: Dice for WT, TC and ET with all modalities
present and the mean over the 15 combinations. The learning rate follows the run's
schedule over all its epochs, so an early row is a snapshot of the full run, not a shorter
run. Then, with ``--profile``, where a training step's time goes (data loading and
augmentation, encoders, fusion, unimodal decoders, losses, backward, optimizer), and with
``--switches``, the step time of each CPU option measured side by side in this process.

Usage::

    python benchmarks/learning_curve.py --backbone rfnet --device cpu
    python benchmarks/learning_curve.py --objective baseline --profile --switches
    python benchmarks/learning_curve.py data.setting=pdt train.lr=2e-3 --eval-every 5

Seconds depend on the machine and its load (state it next to a figure); steps do not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _curve(cfg, every: int, device: str, log) -> list[dict]:
    import pandas as pd

    from passion_kit.data import PreparedDataset
    from passion_kit.engine.evaluate import evaluate_cases, load_run, summarize
    from passion_kit.engine.train import fit

    epochs = cfg.train.epochs
    marks = sorted({*range(every, epochs + 1, every), epochs})
    cfg.train.keep_epochs = marks
    started = time.perf_counter()
    run = fit(cfg)
    log(f"trained {epochs} epochs in {time.perf_counter() - started:.0f} s ({run})")
    history = pd.read_csv(run / "history_epoch.csv")
    steps = history["iterations"].cumsum().to_numpy()
    seconds = history["time_s"].cumsum().to_numpy()
    rows = []
    for mark in marks:
        loaded = load_run(run, checkpoint=run / f"checkpoint_epoch{mark}.pt", device=device)
        dataset = PreparedDataset(loaded.root, cfg.data.test_split, setting="full")
        per_case = evaluate_cases(
            loaded.backbone,
            dataset,
            window=cfg.eval.window,
            overlap=cfg.eval.overlap,
            device=loaded.device,
            amp=loaded.amp,
            progress=False,
        )
        summary = summarize(per_case).set_index("combination")
        ms = loaded.description.modalities
        full = summary.loc[ms.name(ms.num_combinations - 1)]  # every modality present
        mean = summary.loc["mean"]
        rows.append(
            {"epoch": mark, "steps": int(steps[mark - 1]), "train_s": float(seconds[mark - 1])}
            | {f"all_{r}": float(full[f"dice_{r}"]) for r in ("WT", "TC", "ET")}
            | {f"mean15_{r}": float(mean[f"dice_{r}"]) for r in ("WT", "TC", "ET")}
        )
    return rows


class _Timer:
    """Wraps a bound method and adds the seconds of each call to ``totals[key]``."""

    def __init__(self, totals: dict, key: str, fn) -> None:
        self.totals, self.key, self.fn = totals, key, fn

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.totals[self.key] = self.totals.get(self.key, 0.0) + time.perf_counter() - start


def _profile(cfg, steps: int, log, ops: bool = False):
    """Mean seconds per step of each part of a training step (the trainer's own objects),
    and with ``ops`` the op-by-op table of :func:`_op_table` (else None)."""
    import torch

    from passion_kit.data import PreparedDataset, augment_for, load_description
    from passion_kit.engine.runs import build_model
    from passion_kit.engine.runtime import amp_dtype, select_device
    from passion_kit.engine.train import build_objective_from

    device = select_device(cfg.train.device)
    root = cfg.dataset_root()
    description = load_description(root)
    dataset = PreparedDataset(
        root,
        cfg.data.train_split,
        setting=cfg.data.setting,
        missing_rates=cfg.data.missing_rates if cfg.data.setting != "pdt" else None,
        augment=augment_for(description, tuple(cfg.data.patch_size), jitter=cfg.data.jitter),
    )
    m, k = description.num_modalities, len(description.classes)
    torch.manual_seed(0)
    net = build_model(cfg, m, k).to(device).train()
    objective = build_objective_from(cfg, m, k)
    counts, total = dataset.availability()
    if hasattr(objective, "set_omega") and cfg.data.setting != "pdt":
        objective.set_omega(total / counts.clamp_min(1).double())
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, amsgrad=True)
    amp = amp_dtype(cfg.train.amp, device)
    totals: dict[str, float] = {}
    for name in ("encode", "fuse", "separate"):
        setattr(net, name, _Timer(totals, name, getattr(net, name)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True)
    it = iter(loader)

    def one() -> dict:
        nonlocal it
        parts: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        totals.clear()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            result = objective(batch, net)
        t2 = time.perf_counter()
        result.loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        parts["data loading and augmentation"] = t1 - t0
        parts["encoders (forward)"] = totals.get("encode", 0.0)
        parts["fusion decoder (forward)"] = totals.get("fuse", 0.0)
        parts["unimodal decoders (forward)"] = totals.get("separate", 0.0)
        parts["losses and PASSION terms (forward)"] = (t2 - t1) - sum(totals.values())
        parts["backward"] = t3 - t2
        parts["optimizer"] = t4 - t3
        objective.state.reset_epoch_stats() if hasattr(objective, "state") else None
        return parts

    for _ in range(2):  # warm-up
        one()
    records = [one() for _ in range(steps)]
    keys = list(records[0])
    means = [(key, statistics.mean(r[key] for r in records)) for key in keys]
    log(f"profiled {steps} steps after 2 warm-up steps")
    if not ops:
        return means, None
    from torch.profiler import profile

    with profile(record_shapes=True) as prof:
        for _ in range(steps):
            one()
    return means, _op_table(prof.key_averages(group_by_input_shape=True), steps)


# Op name -> the group it is charged to in the op-by-op table (--ops).
_OP_GROUPS = {
    "optimizer (AdamW)": ("Optimizer", "_foreach", "addcdiv", "lerp", "maximum"),
    "norms (instance norm, forward and backward)": ("batch_norm", "instance_norm", "var_mean"),
    "activations (LeakyReLU, sigmoid)": ("leaky_relu", "sigmoid"),
    "softmax, log and losses": ("softmax", "log", "nll", "exp", "clamp", "kl_div", "sqrt"),
    "matrix products (1x1x1 convs, upsampling, RFM)": ("aten::mm", "bmm", "addmm", "matmul"),
    "padding": ("pad", "reflection"),
    "copies, concatenation, layout": ("copy_", "cat", "contiguous", "clone", "stack", "to"),
    "fills and allocation": ("fill_", "zero_", "empty", "zeros", "ones"),
    "elementwise arithmetic": ("mul", "add", "div", "sub", "neg", "pow", "where", "sum", "mean"),
}


def _op_table(events, steps: int) -> list[tuple[str, float]]:
    """Self CPU seconds per step: convolutions by shape and direction, the rest by group."""
    totals: dict[str, float] = {}
    for e in events:
        name, seconds = e.key, e.self_cpu_time_total / 1e6 / steps
        if seconds <= 0:
            continue
        if "conv" in name.lower() and e.input_shapes and len(e.input_shapes) > 2:
            backward = "backward" in name
            x, w = e.input_shapes[1 if backward else 0], e.input_shapes[2 if backward else 1]
            if len(x) == 5 and len(w) == 5:
                kind = "backward" if backward else "forward"
                size = "x".join(str(v) for v in x[2:])  # the input, padded if it is
                key = f"conv {kind} {w[1]}->{w[0]} k{w[2]}, input {x[0]}x{size}"
                totals[key] = totals.get(key, 0.0) + seconds
                continue
        group = next(
            (g for g, keys in _OP_GROUPS.items() if any(k in name for k in keys)), "other ops"
        )
        totals[group] = totals.get(group, 0.0) + seconds
    return sorted(totals.items(), key=lambda kv: -kv[1])


def _step_fn(net, objective, optimizer, batch, amp):
    """One timed forward, backward and optimizer step on a fixed batch."""
    import torch

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            result = objective(batch, net)
        result.loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def _without_depth_halves(step):
    """``step`` run with PyTorch's own kernel choice for one-sample fp32 convolutions."""
    from passion_kit.fast import kernels

    def run():
        kernels.CPU_DEPTH_HALVES = False
        try:
            return step()
        finally:
            kernels.CPU_DEPTH_HALVES = True

    return run


def _switches(cfg, steps: int, bf16: bool = True) -> list[tuple[str, float]]:
    """Median step time (model and objective only) of CPU options, measured side by side."""
    import torch

    from passion_kit.fast import speed_up
    from passion_kit.models import build_backbone
    from passion_kit.objectives import build_objective

    p = tuple(cfg.data.patch_size)
    mask = torch.tensor([[True, True, False, True]] * cfg.train.batch_size)
    image = torch.randn(cfg.train.batch_size, 4, *p) * mask[:, :, None, None, None]
    label = torch.randint(0, 4, (cfg.train.batch_size, *p))
    variants = {
        "fp32": dict(amp=None, channels_last=False),
        "fp32, plain PyTorch modules (train.fast_kernels=false)": dict(
            amp=None, channels_last=False, plain=True
        ),
        "fp32, PyTorch's one-sample conv kernel": dict(
            amp=None, channels_last=False, no_halves=True
        ),
    }
    if bf16:  # emulated bf16 can be 30x slower than fp32: only where asked or native
        variants |= {
            "bf16 autocast": dict(amp=torch.bfloat16, channels_last=False),
            "bf16 autocast, channels-last": dict(amp=torch.bfloat16, channels_last=True),
            "bf16 autocast, plain PyTorch modules": dict(
                amp=torch.bfloat16, channels_last=False, plain=True
            ),
        }
    runners = {}
    for name, options in variants.items():
        torch.manual_seed(0)
        net = build_backbone(cfg.model.backbone, width=cfg.model.width, patch_size=p)
        if not options.get("plain"):
            speed_up(net)  # as fit and evaluation do (train.fast_kernels)
        x = image
        if options["channels_last"]:
            net = net.to(memory_format=torch.channels_last_3d)
            x = image.contiguous(memory_format=torch.channels_last_3d)
        objective = build_objective(cfg.objective.name, num_modalities=4, num_classes=4)
        if not options.get("plain"):
            speed_up(objective.upsample)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, amsgrad=True)
        batch = {"image": x, "label": label, "mask": mask}

        step = _step_fn(net, objective, optimizer, batch, options["amp"])
        if options.get("no_halves"):
            step = _without_depth_halves(step)
        runners[name] = step
    times: dict[str, list[float]] = {name: [] for name in runners}
    for step in runners.values():
        step(), step()  # warm-up
    for _ in range(steps):  # interleaved: a busy machine slows every variant alike
        for name, step in runners.items():
            times[name].append(step())
    return [(name, statistics.median(t)) for name, t in times.items()]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--backbone", default="rfnet")
    parser.add_argument("--objective", default="baseline", help="baseline | passion | ...")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=0, help="0: the preset's")
    parser.add_argument("--eval-every", type=int, default=0, help="epochs (0: 5 points)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="", help="run folder parent (default: a temp folder)")
    parser.add_argument("--no-curve", action="store_true", help="skip the training curve")
    parser.add_argument("--profile", action="store_true", help="where a step's time goes")
    parser.add_argument("--switches", action="store_true", help="CPU options side by side")
    parser.add_argument("--steps", type=int, default=10, help="timed steps for the tables")
    parser.add_argument(
        "--ops", action="store_true", help="with --profile: where a step goes, op by op"
    )
    parser.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="--switches: time the bf16 variants on a CPU without bf16 units (slow)",
    )
    args = parser.parse_args(argv)

    import torch

    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.runtime import (
        amp_dtype,
        cpu_has_native_bf16,
        machine_summary,
        reuse_freed_memory,
        select_device,
    )
    from passion_kit.fast import kernels

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = ExperimentConfig.preset(args.preset).override(
            [
                f"model.backbone={args.backbone}",
                f"objective.name={args.objective}",
                f"train.device={args.device}",
                "train.progress=false",
                *([f"train.epochs={args.epochs}"] if args.epochs else []),
                *args.overrides,
            ]
        )
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if select_device(cfg.train.device).type == "cpu":
        reuse_freed_memory()  # as fit does, for the --profile and --switches steps too
    every = args.eval_every or max(1, cfg.train.epochs // 5)
    device = select_device(cfg.train.device)
    amp = amp_dtype(cfg.train.amp, device)
    print(f"machine: {machine_summary(device, amp)}")
    print(
        f"bf16 autocast native on this CPU: {'yes' if cpu_has_native_bf16() else 'no'}; "
        f"train.amp={cfg.train.amp} runs "
        f"{'fp32' if amp is None else str(amp).removeprefix('torch.') + ' autocast'}; "
        f"one-sample fp32 convolutions as depth halves (oneDNN): "
        f"{'on' if kernels.CPU_DEPTH_HALVES else 'off'}"
    )
    print(
        f"{args.backbone}, {cfg.objective.name}, {cfg.data.setting} {cfg.data.missing_rates}, "
        f"phantom {cfg.data.phantom_cases} cases of {cfg.data.phantom_size}^3, patch "
        f"{cfg.data.patch_size[0]}^3, batch {cfg.train.batch_size}, lr {cfg.train.lr}, "
        f"amp {cfg.train.amp}, {cfg.train.epochs} epochs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        out = args.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="curve-"))
        cfg.train.run_dir = str(Path(out) / "runs")
        if not os.environ.get("PASSION_KIT_DATA") and not args.out:
            os.environ["PASSION_KIT_DATA"] = str(Path(out) / "data")
        rows: list[dict] = []
        if not args.no_curve:
            rows = _curve(cfg, every, args.device, lambda s: print(s, flush=True))
            print()
            print(
                f"{'epoch':>5} {'steps':>6} {'train s':>8} | all modalities: "
                f"{'WT':>5} {'TC':>5} {'ET':>5} | mean of 15: {'WT':>5} {'TC':>5} {'ET':>5}"
            )
            for r in rows:
                print(
                    f"{r['epoch']:>5} {r['steps']:>6} {r['train_s']:>8.0f} | {'':>16}"
                    f"{r['all_WT']:>5.3f} {r['all_TC']:>5.3f} {r['all_ET']:>5.3f} | {'':>11}"
                    f"{r['mean15_WT']:>5.3f} {r['mean15_TC']:>5.3f} {r['mean15_ET']:>5.3f}"
                )
        if args.profile:
            if args.no_curve:  # the trainer generates the phantom; without it, do it here
                from passion_kit.engine.runs import ensure_data

                ensure_data(cfg, cfg.dataset_root())
            parts, by_op = _profile(cfg, args.steps, lambda s: print(s, flush=True), ops=args.ops)
            total = sum(v for _, v in parts)
            print(f"\nwhere a training step's time goes ({cfg.objective.name}, mean of steps):")
            for key, value in parts:
                print(f"  {key:<38} {value:>7.3f} s {100 * value / total:>5.1f} %")
            print(f"  {'total':<38} {total:>7.3f} s")
            if by_op:
                op_total = sum(v for _, v in by_op)
                print("\nop by op (self CPU time per step under torch.profiler, which adds")
                print(f"its own overhead: {op_total:.3f} s in all; the 14 largest):")
                for key, value in by_op[:14]:
                    print(f"  {key:<48} {value:>7.3f} s {100 * value / op_total:>5.1f} %")
                conv = sum(v for k, v in by_op if k.startswith("conv "))
                share = 100 * conv / op_total
                print(f"  {'convolutions, every shape':<48} {conv:>7.3f} s {share:>5.1f} %")
        if args.switches:
            print(f"\nCPU options, median step over {args.steps} interleaved steps:")
            bf16 = cpu_has_native_bf16() or args.emulated_bf16
            if not bf16:
                print("  (bf16 variants left out: no bf16 units here; --emulated-bf16 times them)")
            for name, value in _switches(cfg, args.steps, bf16):
                print(f"  {name:<40} {value:>7.3f} s")
    return rows


if __name__ == "__main__":
    main()
