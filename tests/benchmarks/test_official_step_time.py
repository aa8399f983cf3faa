"""The side-by-side benchmark against the official code, on a stand-in for that code."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.benchmarks.bench_helpers import ROOT, run_benchmark

# A stand-in with the official RFNet module's interface (the real one is not shipped).
STAND_IN = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    H = W = Z = 80

    def softmax_weighted_loss_bs(p, t, num_cls):
        return -(t * torch.log(p.clamp_min(1e-6))).mean(dim=(1, 2, 3, 4))

    def dice_loss_bs(p, t, num_cls):
        return 1 - (2 * (p * t).sum(dim=(1, 2, 3, 4)) + 1) / ((p + t).sum(dim=(1, 2, 3, 4)) + 1)

    class Model(nn.Module):
        def __init__(self, num_cls=4):
            super().__init__()
            self.conv = nn.Conv3d(4, num_cls, 3, padding=1)

        def forward(self, x, mask, target=None, temp=1.0):
            assert x.shape[2:] == (H, W, Z) and mask.cuda() is mask
            logits = self.conv(x)
            zero = logits.mean() * 0
            out = (F.softmax(logits, 1), zero, zero)
            return out + (zero, zero, zero) if self.use_passion else out
    """
)


def test_the_kit_and_the_official_steps_run_side_by_side(tmp_path):
    (tmp_path / "code" / "models").mkdir(parents=True)
    (tmp_path / "code" / "models" / "rfnet.py").write_text(STAND_IN)
    out = run_benchmark(
        "official_step_time.py",
        "--official-code",
        str(tmp_path),
        "--patch-size",
        "16",
        "--steps",
        "1",
    )
    for row in ("official baseline", "kit baseline", "official PASSION", "kit PASSION"):
        assert row in out
    assert float(out.strip().splitlines()[-1].split(": ")[1]) > 0  # kit/official baseline step


def test_a_folder_without_the_official_code_is_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/official_step_time.py", "--official-code", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"--official-code: {tmp_path} has no models/rfnet.py or code/models/rfnet.py "
        "(expected a checkout of github.com/Jun-Jie-Shi/PASSION)"
    )
