from __future__ import annotations

import re

import pytest

from tests.benchmarks.bench_helpers import run_benchmark


@pytest.mark.slow
def test_step_time_prints_both_objectives_and_the_ratio():
    out = run_benchmark("step_time.py", "--patch-size", "16", "--steps", "1", "--warmup", "0")
    lines = out.strip().splitlines()
    assert any(line.startswith("baseline ") for line in lines)
    assert any(line.startswith("passion ") for line in lines)
    assert re.fullmatch(r"passion/baseline step ratio: \d+\.\d\d", lines[-1])


@pytest.mark.slow
def test_the_profile_charges_each_module_its_forward_and_backward():
    out = run_benchmark(
        "step_time.py", "--patch-size", "16", "--steps", "1", "--warmup", "1", "--profile"
    )
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and re.fullmatch(r"[\d.]+", parts[1]):
            rows[parts[0]] = [float(p) for p in parts[1:]]
    # encoders, the unimodal decoder, the fusion decoder level by level, the rest, AdamW
    assert {"encoders", "sep_decoder", "decoder.rfm[0]", "decoder.prm[3]"} <= set(rows)
    assert rows["encoders"][1] > 0 and rows["encoders"][3] > 0  # backward charged too
    assert rows["decoder.rfm[0]"][3] > 0  # PASSION's students pass the finest RFM
    assert all(v >= 0 for v4 in rows.values() for v in v4)
    assert "rest: losses, masks, glue" in out and "optimizer (AdamW)" in out
    # the estimate from the baseline's fusion-decoder rows, three students (the rows are
    # printed to 1 ms, so their sum is checked to 1 ms a row)
    decoder_rows = [sum(v[:2]) for k, v in rows.items() if k.startswith("decoder")]
    found = re.search(r"one costs \(([\d.]+) s\).* the ratio would be ([\d.]+)", out)
    decoder, estimate = float(found.group(1)), float(found.group(2))
    assert decoder == pytest.approx(sum(decoder_rows), abs=1e-3 * len(decoder_rows))
    total = float(re.search(r"total \(profiled\)\s+([\d.]+)", out).group(1))
    assert estimate == pytest.approx(1 + 3 * decoder / total, rel=0.02)


def test_the_plain_reference_computes_the_same_step_as_the_kit():
    # RFNet has no dropout, so the plain reference (a network pass per mask row) and the
    # kit (shared encoders, batched rows) give the same loss and the same gradients
    # (float64; a conv bias before an instance norm has a zero gradient, which both
    # compute only to rounding, hence the tolerance scaled to the largest gradient).
    import argparse

    import torch

    from tests.benchmarks.bench_helpers import load_benchmark

    step_time = load_benchmark("step_time.py")
    args = argparse.Namespace(
        backbone="rfnet", width=4, patch_size=16, device="cpu", batch_size=2, amp=False
    )
    grads, calls = {}, {}
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for plain in (False, True):
            step = step_time._setup(args, "passion", plain=plain)
            encode, count = step.net.encode, []
            step.net.encode = lambda x, encode=encode, count=count: count.append(1) or encode(x)
            step()
            calls[plain] = len(count)
            grads[plain] = [p.grad.clone() for p in step.net.parameters()]
    finally:
        torch.set_default_dtype(dtype)
    assert calls == {False: 1, True: 1 + 2 * 3}  # plain: each sample's 3 students re-encode
    scale = max(g.abs().max().item() for g in grads[False])
    for a, b in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.slow
def test_step_time_plain_prints_the_reference_and_what_the_kit_saves():
    out = run_benchmark(
        "step_time.py", "--patch-size", "16", "--steps", "1", "--warmup", "0", "--plain"
    )
    lines = out.strip().splitlines()
    assert any(line.startswith("passion, plain ") for line in lines)
    assert re.fullmatch(r"plain/kit PASSION step: \d+\.\d\d", lines[-2])
    assert re.fullmatch(r"passion/baseline step ratio: \d+\.\d\d", lines[-1])
