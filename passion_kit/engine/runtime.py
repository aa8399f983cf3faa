"""The machine a run uses: its device, precision, memory reuse and a one-line summary."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

import torch

__all__ = [
    "amp_dtype",
    "cpu_has_native_bf16",
    "cpu_summary",
    "environment",
    "machine_summary",
    "reuse_freed_memory",
    "select_device",
]

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


# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) from which it runs bf16 in hardware.
_ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512_AMX"}
_ONEDNN_ALL = {"", "ALL", "DEFAULT"}
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # /proc/cpuinfo: x86 AVX-512 BF16, AMX; Arm


def _onednn_isa() -> str:
    """The ISA cap set for oneDNN (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_``), upper case."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()


def _precision(amp: torch.dtype | None) -> str:
    return "fp32" if amp is None else f"{str(amp).removeprefix('torch.')} autocast"


def _cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from ``/proc/cpuinfo`` (Linux; else empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return model or platform.machine(), flags


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX-512 BF16 or AMX, Arm BF16) and
    the kernels may use it.

    Elsewhere bf16 autocast is emulated and can be far slower than fp32, so
    ``train.amp="fast"`` stays in fp32 there. ``ONEDNN_MAX_CPU_ISA`` below
    ``AVX512_CORE_BF16`` or ``ATEN_CPU_CAPABILITY`` below ``avx512`` (how an ordinary CPU is
    emulated on a newer one) counts as no bf16 units. Reads ``/proc/cpuinfo`` (Linux);
    False where it cannot tell.
    """
    if not _cpu_flags()[1] & _BF16_FLAGS:
        return False
    if _onednn_isa() not in _ONEDNN_ALL | _ONEDNN_BF16_ISAS:
        return False
    return os.environ.get("ATEN_CPU_CAPABILITY", "").lower() not in ("default", "avx2")


def cpu_summary(amp: torch.dtype | None = None) -> str:
    """One line: the CPU, its vector units, the kernels torch runs and the precision.

    For example ``Intel(R) Xeon(R) Processor: AVX2, AVX-512, bf16 units; kernels ATen
    AVX2, oneDNN up to AVX2 (emulating an ordinary CPU); fp32``.
    """
    model, flags = _cpu_flags()
    units = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512")) if flag in flags]
    units.append("bf16 units" if flags & _BF16_FLAGS else "no bf16 units")
    aten = torch.backends.cpu.get_cpu_capability()
    isa = _onednn_isa()
    onednn = f"oneDNN up to {isa}" if isa not in _ONEDNN_ALL else "oneDNN all ISAs"
    capped = aten in ("DEFAULT", "AVX2") and "avx512f" in flags
    emulated = " (emulating an ordinary CPU)" if capped or isa == "AVX2" else ""
    return (
        f"{model}: {', '.join(units)}; kernels ATen {aten}, {onednn}{emulated}; "
        f"{_precision(amp)}, {torch.get_num_threads()} thread(s)"
    )


def machine_summary(device: torch.device, amp: torch.dtype | None = None) -> str:
    """:func:`cpu_summary` on CPU; the GPU's name and the precision on CUDA or MPS."""
    if device.type == "cpu":
        return cpu_summary(amp)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name}; {_precision(amp)}"


def select_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. An explicit request that cannot be met is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"train.device must be auto, cpu, cuda, cuda:N or mps, got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    count = torch.cuda.device_count()
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise ValueError(f"train.device={name!r} but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device='mps' but MPS is not available; use 'auto' or 'cpu'")
    return device


def amp_dtype(setting: str, device: torch.device, key: str = "train.amp") -> torch.dtype | None:
    """The autocast dtype of an amp setting (``train.amp``, ``eval.amp``) on ``device``.

    ``off``: None (fp32). ``auto``: bf16 on CUDA where supported, else fp16; fp32 elsewhere.
    ``fast``: as ``auto``, and bf16 on a CPU that computes bf16 in hardware.
    ``bf16`` / ``fp16``: that dtype (fp16 only on CUDA).
    """
    if setting not in ("auto", "fast", "off", "bf16", "fp16"):
        raise ValueError(f"{key} must be auto, fast, off, bf16 or fp16, got {setting!r}")
    if setting == "fast" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if setting == "off" or (setting in ("auto", "fast") and device.type != "cuda"):
        return None
    if setting in ("auto", "fast"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "fp16" and device.type != "cuda":
        raise ValueError(f"{key}='fp16' needs a CUDA device; use 'bf16' on CPU")
    return torch.bfloat16 if setting == "bf16" else torch.float16
