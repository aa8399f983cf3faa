"""What this machine offers the kit: versions, device, data root, registered components."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

__all__ = ["environment", "reuse_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_KEEP_BYTES = 2**31 - 1  # the largest trim threshold mallopt takes (an int)
_reusing = False


def reuse_freed_memory() -> bool:
    """Let freed tensor memory serve the next tensors (glibc's malloc); True when in effect.

    glibc gives every allocation over 32 MB a fresh ``mmap`` and returns it to the kernel
    when freed, so a CPU step that builds such tensors (the decoder's full-resolution
    activations at 80^3, four mask rows for PASSION) faults them in page by page on every
    step: at 80^3 that was half of a PASSION step's time, spent in the kernel. This keeps
    large blocks in malloc's heap (``M_MMAP_MAX`` = 0) and returns free memory at its top
    only past 2 GB (``M_TRIM_THRESHOLD``). The process then keeps its peak memory between
    steps; the maths is unchanged. ``fit`` calls it on CPU, and the benchmarks do.

    Does nothing (returns False) outside Linux with glibc, or when the environment
    variable ``PASSION_KIT_MALLOC`` is ``system``.
    """
    global _reusing
    if _reusing:
        return True
    if os.environ.get("PASSION_KIT_MALLOC", "") == "system":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _reusing = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    return _reusing


def environment(device: str = "auto", data_root: str = "") -> dict[str, str]:
    """A dict of versions, the selected device, CPU count and where data lives."""
    import monai
    import numpy

    import passion_kit
    from passion_kit.objectives import available_objectives
    from passion_kit.train import select_device

    chosen = select_device(device)
    name = torch.cuda.get_device_name(chosen) if chosen.type == "cuda" else chosen.type
    return {
        "passion_kit": passion_kit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "device": f"{chosen} ({name})",
        "cpus": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "data root": data_root or os.environ.get("PASSION_KIT_DATA", "./data"),
        "backbones": ", ".join(passion_kit.available_backbones()),
        "objectives": ", ".join(available_objectives()),
    }
