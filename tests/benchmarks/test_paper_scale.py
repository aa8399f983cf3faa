from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.benchmarks.bench_helpers import ROOT, run_benchmark


@pytest.mark.slow
def test_paper_scale_smoke_prints_every_row_with_positive_numbers():
    out = run_benchmark("paper_scale.py", "--device", "cpu", "--smoke")
    lines = out.strip().splitlines()
    assert lines[0].startswith("machine: ")
    assert lines[1].startswith("load average at the start: ")
    rows = {}
    for line in lines:
        found = re.fullmatch(r"\| (.+) \| ([\d.e+-]+) \|", line)
        if found:
            rows[found.group(1)] = float(found.group(2))
    expected = [
        "preparation, prepare_brats2020 (s/case)",
        "loader, 16x16x16 crops, 0 worker(s) (samples/s)",
        "loader, 16x16x16 crops, 1 worker(s) (samples/s)",
        "step baseline, batches loaded beforehand (s)",
        "step baseline, loader in the loop, 1 worker(s) (s)",
        "step PASSION, batches loaded beforehand (s)",
        "step PASSION, loader in the loop, 1 worker(s) (s)",
        "evaluation, 15 combinations: prediction (s/case)",
        "evaluation, 15 combinations: metrics (s/case)",
        "NIfTI export, save_prediction_nifti (s/case)",
        "peak RSS, through the training steps (MB)",
        "peak RSS, through evaluation and export (MB)",
        "paper schedule, baseline, loader kept up (h)",
        "paper schedule, PASSION, loader in the loop (h)",
        "loader workers to keep up with the PASSION step",
        "loader workers to keep up with a 0.207 s step (H200 RFNet PASSION step)",
        "paper schedule at a 0.207 s step, training only (h)",
    ]
    missing = [row for row in expected if row not in rows]
    assert not missing, out
    assert all(value > 0 for value in rows.values()), rows
    assert rows["loader workers to keep up with the PASSION step"] == int(
        rows["loader workers to keep up with the PASSION step"]
    )
    assert "300 epochs x 219 steps, then 100 test cases" in out


def test_paper_scale_refuses_bad_gpu_steps():
    done = subprocess.run(
        [sys.executable, "benchmarks/paper_scale.py", "--gpu-steps", "0.2,-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--gpu-steps" in done.stderr and "expected seconds > 0" in done.stderr
