"""Run a benchmark script as a user would, from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(script: str, *args: str) -> str:
    """stdout of ``python benchmarks/<script> <args>``; a non-zero exit fails the test."""
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout


def load_benchmark(script: str):
    """``benchmarks/<script>`` imported as a module (its ``main`` is not run)."""
    import importlib.util

    path = ROOT / "benchmarks" / script
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
