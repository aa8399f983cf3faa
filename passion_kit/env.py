"""What this machine offers the kit: versions, device, data root, registered components."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["environment"]


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
