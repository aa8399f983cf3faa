"""One-command check of a CUDA GPU: install, paper-size training steps, full-size evaluation.

Prints one table: for every backbone, the median time and peak memory of one training
step at 80^3, batch 1 (IDT, FLAIR + T1c + T2), with PASSION off and on, in fp32 and
bf16 (CUDA events, after warm-up steps); then the 15-combination evaluation time of one
full-size (240 x 240 x 155) phantom case (80^3 windows, 0.5 overlap, encoders once per
window). With ``--kernels``, two more columns say how busy the GPU is in a PASSION step:
the number of kernels launched and the summed kernel time (a step much longer than its
kernel time is bound by the launches, not by the GPU's arithmetic).

Usage (about 3-6 minutes on one recent GPU)::

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --backbones rfnet --skip-eval --cudnn-benchmark --kernels

Runs without MONAI or nibabel (the kit imports them lazily): the evaluation row then
says it was skipped. Wheels of both can be carried and installed offline instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _step_setup():
    spec = importlib.util.spec_from_file_location("step_time", HERE / "step_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._setup


def _time_steps(setup, backbone: str, objective: str, amp: bool, args) -> tuple[float, float]:
    ns = Namespace(
        backbone=backbone,
        width=8,
        patch_size=args.patch_size,
        device="cuda",
        batch_size=1,
        amp=amp,
        plain_kernels=False,
    )
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step = setup(ns, objective)
    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    peak = torch.cuda.max_memory_allocated() / 2**30
    kernels = _kernel_time(step) if args.kernels and objective == "passion" else None
    del step
    return statistics.median(times), peak, kernels


def _kernel_time(step, steps: int = 3) -> tuple[float, float]:
    """(kernels launched, summed kernel seconds) per step, from the CUDA profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = sum(e.device_time_total for e in kernels) / 1e6
    return len(kernels) / steps, busy / steps


def _eval_case(backbone: str, args) -> str:
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return "skipped (MONAI not installed)"
    import passion_kit as pk
    from passion_kit.data.modalities import BRATS
    from passion_kit.data.phantom import generate_case
    from passion_kit.engine.evaluate import MultiMaskPredictor
    from passion_kit.fast import speed_up

    image, _ = generate_case(0, size=240)
    start = (240 - 155) // 2
    x = torch.from_numpy(image[..., start : start + 155].copy()).unsqueeze(0).cuda()
    net = speed_up(pk.build_backbone(backbone, patch_size=80)).cuda().eval()
    predictor = MultiMaskPredictor(net, BRATS.mask_tensor("cuda"))

    def run() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            sliding_window_inference(x, (80, 80, 80), 1, predictor, overlap=0.5, mode="constant")
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    run()
    seconds = min(run() for _ in range(2))
    return f"{seconds:.2f} s (bf16)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="", help="comma-separated (default: all)")
    parser.add_argument("--patch-size", type=int, default=80)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN pick its convolution kernels"
    )
    parser.add_argument("--kernels", action="store_true", help="kernel count and time per step")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check")
        return 1
    sys.path.insert(0, str(HERE.parent))
    import passion_kit as pk

    backbones = [b for b in args.backbones.split(",") if b] or pk.available_backbones()
    props = torch.cuda.get_device_properties(0)
    print(
        f"passion-kit {pk.__version__}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"python {platform.python_version()}, {props.name} ({props.total_memory / 2**30:.0f} GiB), "
        f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}, "
        f"MONAI {'yes' if importlib.util.find_spec('monai') else 'no'}, "
        f"nibabel {'yes' if importlib.util.find_spec('nibabel') else 'no'}"
    )
    setup = _step_setup()
    header = (
        "| backbone | precision | baseline step (s) | PASSION step (s) | ratio "
        "| baseline peak (GiB) | PASSION peak (GiB) | 15-combination eval, 240x240x155 |"
    )
    if args.kernels:
        header += " PASSION kernels per step | PASSION kernel time (s) |"
    print(
        f"\npatch {args.patch_size}^3, batch 1, median of {args.steps} steps after "
        f"{args.warmup} warm-up steps, CUDA events, cudnn.benchmark {args.cudnn_benchmark}\n"
    )
    print(header)
    print("|" + "---|" * header.count(" |"))
    for backbone in backbones:
        evaluation = "skipped" if args.skip_eval else _eval_case(backbone, args)
        for amp in (False, True):
            base_t, base_m, _ = _time_steps(setup, backbone, "baseline", amp, args)
            pas_t, pas_m, kernels = _time_steps(setup, backbone, "passion", amp, args)
            row = (
                f"| {backbone} | {'bf16' if amp else 'fp32'} | {base_t:.3f} | {pas_t:.3f} "
                f"| {pas_t / base_t:.2f} | {base_m:.2f} | {pas_m:.2f} "
                f"| {evaluation if amp else ''} |"
            )
            if kernels:
                row += f" {kernels[0]:.0f} | {kernels[1]:.3f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
