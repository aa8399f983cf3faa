"""DDP with the gloo backend: 2 CPU processes train one run together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["passion", "ogm_ge", "pmr", "redcore"])
def test_two_process_cpu_training(phantom_root, tmp_path, objective):
    """Replicas must stay equal (the trainer checks it at the end): the per-step balance
    statistics, OGM-GE's gradient noise and the epoch statistics are global."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "passion_kit",
        "train",
        "--preset",
        "cpu",
        f"data.root={phantom_root}",
        "data.phantom_cases=0",
        f"train.run_dir={tmp_path}",
        "data.patch_size=16",
        "train.epochs=1",
        "train.progress=false",
        "train.name=ddp",
        "train.batch_size=2",
        f"objective.name={objective}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "ddp" / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["world_size"] == 2
    # 6 training cases over 2 ranks at batch 2: 2 steps per rank per epoch
    assert meta["last_epoch"]["iterations"] == 2
    rows = (tmp_path / "ddp" / "history_modality.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    if objective != "passion":  # every rank's coefficients, as the saved ones (rank 0)
        assert "coefficient" in rows[0].split(",")
