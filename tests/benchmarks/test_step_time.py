from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_step_time_prints_both_objectives_and_the_ratio():
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/step_time.py",
            "--patch-size",
            "16",
            "--steps",
            "1",
            "--warmup",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    lines = out.strip().splitlines()
    assert any(line.startswith("baseline ") for line in lines)
    assert any(line.startswith("passion ") for line in lines)
    assert re.fullmatch(r"passion/baseline step ratio: \d+\.\d\d", lines[-1])
