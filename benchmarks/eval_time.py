"""Time the evaluation of every modality combination on one phantom case, two ways.

- ``per mask``: the whole network once per combination (zeroed absent channels, encode
  and fuse), as a plain evaluation loop does.
- ``kit``: :class:`passion_kit.engine.evaluate.MultiMaskPredictor`: every window is encoded once
  and all combinations are fused from those features in batched mask rows.

Both use the same MONAI sliding window (default: one 80^3 case, 80^3 windows, 0.5
overlap). Usage::

    python benchmarks/eval_time.py --backbone rfnet --device cpu

The last line is ``15-combination speed-up: X.XX`` (per-mask time / kit time, medians).
On CPU both run as ``evaluate_run`` runs them, with freed memory reused
(``passion_kit.engine.runtime.reuse_freed_memory``); ``--system-malloc`` leaves glibc's defaults.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="rfnet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=80, help="edge of the phantom case")
    parser.add_argument("--window", type=int, default=80)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=15, help="masks fused per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument(
        "--system-malloc", action="store_true", help="CPU: glibc's defaults, freed memory unmapped"
    )
    args = parser.parse_args(argv)

    from monai.inferers import sliding_window_inference

    import passion_kit as pk
    from passion_kit.data.modalities import BRATS
    from passion_kit.data.phantom import generate_case
    from passion_kit.engine.evaluate import MultiMaskPredictor
    from passion_kit.engine.runtime import reuse_freed_memory
    from passion_kit.fast import speed_up

    device = torch.device(args.device)
    reusing = device.type == "cpu" and not args.system_malloc and reuse_freed_memory()
    torch.manual_seed(0)
    net = pk.build_backbone(args.backbone, width=args.width, patch_size=args.window).to(device)
    speed_up(net).eval()  # as evaluation does (train.fast_kernels)
    image, _ = generate_case(0, size=args.size)
    x = torch.from_numpy(image).unsqueeze(0).to(device)
    masks = BRATS.mask_tensor(device)
    roi = (args.window,) * 3

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def window_run(predictor, inputs) -> torch.Tensor:
        return sliding_window_inference(
            inputs, roi, 1, predictor, overlap=args.overlap, mode="constant"
        )

    @torch.no_grad()
    def per_mask() -> torch.Tensor:
        outs = []
        for mask in masks:
            zeroed = x * mask[None, :, None, None, None]
            outs.append(
                window_run(
                    lambda w, m=mask: torch.softmax(net(w, m.expand(w.shape[0], -1)), 1), zeroed
                )
            )
        return torch.cat(outs, 1)

    kit_predictor = MultiMaskPredictor(net, masks, chunk=args.chunk)

    @torch.no_grad()
    def kit() -> torch.Tensor:
        return window_run(kit_predictor, x)

    def timed(fn) -> tuple[float, torch.Tensor]:
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            out = fn()
        sync()
        return time.perf_counter() - start, out

    timed(kit)  # warm-up
    times: dict[str, list[float]] = {"per mask": [], "kit": []}
    for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
        t_slow, slow = timed(per_mask)
        t_fast, fast = timed(kit)
        times["per mask"].append(t_slow)
        times["kit"].append(t_fast)
    agree = slow.view(15, -1, *slow.shape[2:]).argmax(1) == fast.view(
        15, -1, *fast.shape[2:]
    ).argmax(1)
    print(
        f"backbone {args.backbone}, case {args.size}^3, window {args.window}^3, overlap "
        f"{args.overlap}, device {args.device}{' (bf16)' if args.amp else ''}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs"
        + (f", freed memory reused {'yes' if reusing else 'no'}" if device.type == "cpu" else "")
    )
    print(f"{'method':<10} {'median (s)':>11} {'min (s)':>9}")
    for name, values in times.items():
        print(f"{name:<10} {statistics.median(values):>11.3f} {min(values):>9.3f}")
    print(f"labels identical in {agree.float().mean().item() * 100:.3f}% of voxels x combinations")
    speedup = statistics.median(times["per mask"]) / statistics.median(times["kit"])
    print(f"15-combination speed-up: {speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
