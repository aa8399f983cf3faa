"""Time the kit's RFNet training step against the official PASSION code's, side by side.

The official code is not part of the kit: point ``--official-code`` at your own checkout of
github.com/Jun-Jie-Shi/PASSION (the repository or its ``code/`` folder). Its RFNet
(``code/models/rfnet.py``) is imported from there and run on the CPU, with the
``.cuda()`` calls it makes inside ``forward`` turned into no-ops for this process.

A step is forward, backward and an AdamW (amsgrad) update, fp32, batch 1, IDT with T1
missing (FLAIR, T1c and T2 present), with PASSION off (baseline) and on. The official
step sums the loss terms its ``train.py`` combines (fused, PRM and unimodal losses; with
PASSION the KL and prototype losses, here unweighted: the weights change no work). The
four steps are interleaved in one process, so a busy machine slows all alike; medians
are reported, and freed memory is reused for both (``passion_kit.engine.runtime``).

Usage::

    git clone https://github.com/Jun-Jie-Shi/PASSION /tmp/PASSION
    python benchmarks/official_step_time.py --official-code /tmp/PASSION --patch-size 80

The last line is ``kit/official baseline step: X.XX``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import _setup  # noqa: E402 - the kit's step, exactly as step_time.py times it


def _official_root(path: str) -> Path:
    """The folder that holds ``models/rfnet.py`` (the checkout or its ``code/``)."""
    for root in (Path(path), Path(path) / "code"):
        if (root / "models" / "rfnet.py").is_file():
            return root
    sys.exit(
        f"--official-code: {path} has no models/rfnet.py or code/models/rfnet.py "
        "(expected a checkout of github.com/Jun-Jie-Shi/PASSION)"
    )


def _official_step(rfnet, passion: bool, batch: dict):
    model = rfnet.Model(num_cls=4)
    model.is_training, model.use_passion, model.mask_type = True, passion, "idt"
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4, amsgrad=True)
    onehot = F.one_hot(batch["label"], 4).movedim(-1, 1).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(batch["image"], batch["mask"], target=onehot, temp=4.0)
        fused = rfnet.softmax_weighted_loss_bs(out[0], onehot, num_cls=4)
        fused = fused + rfnet.dice_loss_bs(out[0], onehot, num_cls=4)
        loss = fused.sum() + out[1].sum() + out[2].sum()
        if passion:
            loss = loss + out[3].sum() + out[4].sum()
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-code", required=True, help="checkout of the official code")
    parser.add_argument("--patch-size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    root = _official_root(args.official_code)

    from passion_kit.engine.runtime import reuse_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    reuse_freed_memory()
    sys.path.insert(0, str(root))
    torch.Tensor.cuda = lambda self, *a, **k: self  # the official forward calls .cuda()
    rfnet = importlib.import_module("models.rfnet")
    p = args.patch_size
    rfnet.H = rfnet.W = rfnet.Z = p  # the official model reads the patch size from these

    kit = argparse.Namespace(
        backbone="rfnet", width=8, patch_size=p, device="cpu", batch_size=1, amp=False
    )
    kit_baseline, kit_passion = _setup(kit, "baseline"), _setup(kit, "passion")
    batch = kit_baseline.batch  # the official steps get the kit's input
    steps = {
        "official baseline": _official_step(rfnet, False, batch),
        "kit baseline": kit_baseline,
        "official PASSION": _official_step(rfnet, True, batch),
        "kit PASSION": kit_passion,
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}

    print(
        f"rfnet, patch {p}^3, batch 1, fp32, cpu, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"official code from {root}"
    )
    print(f"{'step':<18} {'median (s)':>11} {'min (s)':>9}")
    for name, values in times.items():
        print(f"{name:<18} {median[name]:>11.3f} {min(values):>9.3f}")
    ratios = {
        "official PASSION/baseline": median["official PASSION"] / median["official baseline"],
        "kit PASSION/baseline": median["kit PASSION"] / median["kit baseline"],
        "kit/official PASSION step": median["kit PASSION"] / median["official PASSION"],
        "kit/official baseline step": median["kit baseline"] / median["official baseline"],
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    return ratios


if __name__ == "__main__":
    main()
