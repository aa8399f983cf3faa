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
    for variant in ("fp32", "bf16 autocast, channels-last", "bf16 autocast, PyTorch's pad"):
        assert variant in out
