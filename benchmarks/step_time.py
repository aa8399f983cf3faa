"""Time one training step with PASSION off (baseline) and on, side by side.

A step is forward, backward and an AdamW (amsgrad) update, in the IDT setting, for a
batch of samples that each have three of the four modalities (FLAIR, T1c and T2:
T1 is missing). Each objective runs in its own process so that peak memory is its own.

Usage::

    python benchmarks/step_time.py --backbone rfnet --patch-size 48 --device cpu
    python benchmarks/step_time.py --backbone rfnet --patch-size 80 --device cuda --amp

The last line is ``passion/baseline step ratio: X.XX`` (median step times).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time


def _measure(args: argparse.Namespace, objective_name: str, queue) -> None:
    import torch

    import passion_kit as pk

    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    net = pk.build_backbone(args.backbone, width=args.width, patch_size=args.patch_size).to(device)
    objective = pk.objectives.build_objective(
        objective_name, num_modalities=net.num_modalities, num_classes=net.num_classes
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-4, amsgrad=True)
    size = (args.patch_size,) * 3
    mask = torch.tensor([[True, True, False, True]] * args.batch_size, device=device)
    image = torch.randn(args.batch_size, 4, *size, device=device) * mask[:, :, None, None, None]
    label = torch.randint(0, 4, (args.batch_size, *size), device=device)
    batch = {"image": image, "label": label, "mask": mask}
    amp_dtype = torch.bfloat16 if args.amp else None

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            result = objective(batch, net)
        result.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        memory_kind = "peak GPU memory allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory_kind = "peak process RSS"
    queue.put(
        {
            "objective": objective_name,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "peak_mb": peak_mb,
            "memory_kind": memory_kind,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="rfnet")
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    args = parser.parse_args(argv)

    ctx = mp.get_context("spawn")
    results = {}
    for name in ("baseline", "passion"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(args, name, queue))
        proc.start()
        results[name] = queue.get()
        proc.join()
        if proc.exitcode:
            sys.exit(f"the {name} measurement failed (exit code {proc.exitcode})")

    first = results["baseline"]
    print(
        f"backbone {args.backbone}, patch {args.patch_size}^3, batch {args.batch_size}, "
        f"width {args.width}, device {args.device}{' (bf16 autocast)' if args.amp else ''}, "
        f"{first['threads']} threads, torch {first['torch']}, {platform.processor() or platform.machine()}"
    )
    print(f"{'objective':<10} {'median step (s)':>16} {'min (s)':>9} {first['memory_kind']:>28}")
    for name, r in results.items():
        print(f"{name:<10} {r['median_s']:>16.3f} {r['min_s']:>9.3f} {r['peak_mb']:>25.0f} MB")
    ratio = results["passion"]["median_s"] / results["baseline"]["median_s"]
    summary = {"ratio": ratio, **{k: v for k, v in results.items()}}
    print(f"passion/baseline step ratio: {ratio:.2f}")
    return summary


if __name__ == "__main__":
    main()
