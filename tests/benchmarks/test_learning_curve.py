from __future__ import annotations

import pytest

from tests.benchmarks.bench_helpers import run_benchmark


@pytest.mark.slow
def test_learning_curve_profiles_and_compares_the_cpu_options(tmp_path):
    out = run_benchmark(
        "learning_curve.py",
        "--no-curve",
        "--profile",
        "--switches",
        "--ops",
        "--steps",
        "1",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        "data.patch_size=16",
        "data.phantom_cases=6",
        "data.phantom_size=32",
        f"data.root={tmp_path / 'phantom'}",
    )
    assert "where a training step's time goes (baseline" in out
    for part in ("encoders (forward)", "fusion decoder (forward)", "backward", "total"):
        assert part in out
    assert "machine: " in out and "bf16 autocast native on this CPU: " in out
    assert "op by op" in out and "conv backward" in out
    assert "fp32, PyTorch's one-sample conv kernel" in out
    assert "fp32, plain PyTorch modules (train.fast_kernels=false)" in out
    from passion_kit.engine.runtime import cpu_has_native_bf16

    # emulated bf16 is timed only where asked: it can be 30x slower than fp32
    for variant in ("bf16 autocast, channels-last", "bf16 autocast, plain PyTorch modules"):
        assert (variant in out) == cpu_has_native_bf16()
