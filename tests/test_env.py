"""The CPU allocator setting that ``fit`` and ``evaluate_run`` apply (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Frees and rebuilds a 256 MB tensor; prints the page faults of the rebuilds after two
# (malloc's heap settles in the first two).
PROBE = """
import resource, sys, torch
from passion_kit.env import reuse_freed_memory
reused = reuse_freed_memory() if sys.argv[1] == "reuse" else False
for _ in range(2):
    x = torch.ones(2**26); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    x = torch.ones(2**26); del x
print(int(reused), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the setting exists for glibc's malloc only",
)


def probe(mode: str, **env: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "1", int(out[1])


@glibc_only
def test_freed_memory_serves_the_next_tensor_without_page_faults():
    pages = 3 * 2**28 // 4096  # three 256 MB tensors in 4 KB pages
    reused, faults = probe("reuse")
    assert reused and faults < pages // 20
    reused, faults = probe("system")
    assert not reused and faults > pages // 2  # glibc's default maps and unmaps each one


@glibc_only
def test_the_environment_variable_leaves_glibc_alone():
    reused, faults = probe("reuse", PASSION_KIT_MALLOC="system")
    assert not reused and faults > 3 * 2**28 // 4096 // 2
