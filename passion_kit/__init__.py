"""passion-kit: learn, reproduce and extend PASSION (Shi et al., ACM MM 2024).

PASSION trains an incomplete multi-modal segmentation network when modalities are
missing at imbalanced rates: the fused (multi-modal) prediction teaches every
single-modality pass of the same network, and each modality's relative preference
drives task-wise and gradient-wise regularization.

Usage (CPU, a few seconds)::

    import torch, passion_kit
    net = passion_kit.build_backbone("rfnet", patch_size=32)
"""

from __future__ import annotations

from passion_kit import objectives
from passion_kit.data.modalities import BRATS, MYOPS, ModalitySet
from passion_kit.method import losses, preference
from passion_kit.models import available_backbones, build_backbone

__version__ = "0.1.0"

__all__ = [
    "BRATS",
    "MYOPS",
    "ModalitySet",
    "available_backbones",
    "build_backbone",
    "losses",
    "objectives",
    "preference",
    "__version__",
]
