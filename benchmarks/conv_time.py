"""Time the backbones' convolutions on CPU: the native kernels against the kit's paths.

For each shape (batch, in -> out channels, kernel, stride, output size), forward and
backward (input and weight gradients) of ``F.conv3d`` on contiguous (NCDHW) tensors,
against :class:`passion_kit.fast.kernels.FastConv3d`, which computes a 1x1x1 convolution
as one matrix product per sample and a larger kernel in the channels-last layout. The
shapes are those of an RFNet step at 80^3 (batch 4: the teacher and 3 students).

Usage::

    python benchmarks/conv_time.py
    python benchmarks/conv_time.py --size 48 --repeats 5

Each row prints the medians in ms and the kit's speed-up (native / kit, forward plus
backward). The values agree to float rounding (``tests/test_fast.py``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

# (batch, in, out, kernel, stride, output edge as a fraction of --size)
SHAPES = [
    (4, 8, 4, 1, 1, 1),
    (4, 32, 8, 1, 1, 1),
    (4, 8, 8, 1, 1, 1),
    (4, 16, 16, 1, 1, 1),
    (1, 1, 8, 3, 1, 1),
    (1, 8, 8, 3, 1, 1),
    (4, 8, 8, 3, 1, 1),
    (4, 16, 8, 3, 1, 1),
    (1, 8, 16, 3, 2, 2),
    (1, 16, 16, 3, 1, 2),
    (4, 32, 16, 3, 1, 2),
    (1, 32, 32, 3, 1, 4),
    (1, 64, 64, 3, 1, 8),
]


def _time(fn, x, w, b, grad, repeats: int) -> tuple[float, float]:
    fwd, bwd = [], []
    for _ in range(repeats + 1):  # the first is a warm-up
        x.grad = w.grad = b.grad = None
        start = time.perf_counter()
        y = fn(x, w, b)
        mid = time.perf_counter()
        y.backward(grad)
        end = time.perf_counter()
        fwd.append(mid - start)
        bwd.append(end - mid)
    return statistics.median(fwd[1:]) * 1e3, statistics.median(bwd[1:]) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=80, help="full-resolution edge")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from passion_kit.engine.runtime import reuse_freed_memory
    from passion_kit.fast.kernels import FastConv3d as Conv3d

    reuse_freed_memory()
    torch.manual_seed(0)
    print(
        f"size {args.size}^3, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'batch':>5} {'in':>3} {'out':>3} {'k':>2} {'s':>2} {'edge':>5}"
        f" {'native fwd':>11} {'bwd':>8} {'kit fwd':>8} {'bwd':>8} {'speed-up':>9}"
    )
    for batch, cin, cout, k, stride, frac in SHAPES:
        edge = args.size // frac
        pad = k // 2
        conv = Conv3d(cin, cout, k, stride=stride, padding=pad, padding_mode="zeros")
        size = (edge - 1) * stride + 1
        x = torch.randn(batch, cin, size, size, size, requires_grad=True)
        grad = torch.randn(batch, cout, edge, edge, edge)
        w, b = conv.weight, conv.bias

        def native(x, w, b, stride=stride, pad=pad):
            return F.conv3d(x, w, b, stride, pad)

        def kit(x, w, b, conv=conv):
            return conv._conv_forward(x, w, b)

        nf, nb = _time(native, x, w, b, grad, args.repeats)
        kf, kb = _time(kit, x, w, b, grad, args.repeats)
        print(
            f"{batch:>5} {cin:>3} {cout:>3} {k:>2} {stride:>2} {edge:>5}"
            f" {nf:>11.1f} {nb:>8.1f} {kf:>8.1f} {kb:>8.1f} {(nf + nb) / (kf + kb):>9.2f}"
        )


if __name__ == "__main__":
    main()
