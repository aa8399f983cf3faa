"""The CPU allocator setting that ``fit`` and ``evaluate_run`` apply (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Allocates a 256 MB tensor and frees it. Prints whether the setting is on, whether the
# tensor lay in malloc's heap (not in an mmap of its own) and the heap's size once freed.
PROBE = """
import sys, torch
from passion_kit.engine.runtime import reuse_freed_memory
reused = reuse_freed_memory() if sys.argv[1] == "reuse" else False

def heap():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            return lo, hi
    return 0, 0

x = torch.ones(2**26)
lo, hi = heap()
in_heap = lo <= x.data_ptr() < hi
del x
lo, hi = heap()
print(int(reused), int(in_heap), hi - lo)
"""

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the setting exists for glibc's malloc only",
)


def probe(mode: str, **env: str) -> tuple[bool, bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "1", out[1] == "1", int(out[2])


SIZE = 2**28  # bytes of the probe's tensor


@glibc_only
def test_freed_memory_stays_in_the_heap_for_the_next_tensor():
    reused, in_heap, heap_after_free = probe("reuse")
    assert reused and in_heap and heap_after_free >= SIZE  # kept, not returned
    reused, in_heap, heap_after_free = probe("system")
    assert not reused and not in_heap and heap_after_free < SIZE  # glibc: its own mmap


@glibc_only
def test_the_environment_variable_leaves_glibc_alone():
    reused, in_heap, _ = probe("reuse", PASSION_KIT_MALLOC="system")
    assert not reused and not in_heap
