"""Small building blocks shared by the backbones, in plain PyTorch.

Faster kernels for some of them are swapped in by :func:`passion_kit.fast.speed_up`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvNormAct",
    "MaskedModalityConv",
    "SkipDecoder",
    "Upsample",
    "kaiming_init",
    "as_kernel",
]

Kernel = int | tuple[int, int, int]


def as_kernel(kernel: Kernel) -> tuple[int, int, int]:
    return (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)


class ConvNormAct(nn.Sequential):
    """``conv -> InstanceNorm (affine=False) -> LeakyReLU(0.2)`` (post-norm, RFNet's unit).

    Padding is "same" for odd kernels, reflect by default as in the official RFNet.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: Kernel = 3,
        stride: int | tuple[int, int, int] = 1,
        padding_mode: str = "reflect",
    ) -> None:
        k = as_kernel(kernel)
        super().__init__(
            nn.Conv3d(
                in_ch,
                out_ch,
                k,
                stride=stride,
                padding=tuple(s // 2 for s in k),
                padding_mode=padding_mode,
                bias=True,
            ),
            nn.InstanceNorm3d(out_ch),
            nn.LeakyReLU(0.2, inplace=True),
        )


class MaskedModalityConv(nn.Module):
    """A 1x1x1 conv over the concatenation of M masked modality features.

    Equivalent to zeroing the features of absent modalities, concatenating them along
    channels (M*C) and applying ``Conv3d(M*C, out_ch, 1)`` for every mask row, which is
    what the official ``MaskModal`` + conv does. Computed as ``sum_k mask[r, k] W_k x_k``:
    each modality is projected once per sample and the projections are mixed per row,
    so S mask rows per sample (teacher plus students) do not pay S full convolutions.

    Args:
        num_modalities: M.
        in_ch: C, channels per modality.
        out_ch: output channels.
    """

    def __init__(self, num_modalities: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.in_ch = in_ch
        self.conv = nn.Conv3d(num_modalities * in_ch, out_ch, 1, bias=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, M, C, *sp); mask: (B * S, M) bool -> (B * S, out_ch, *sp)."""
        b, m, c = x.shape[:3]
        spatial = x.shape[3:]
        rows = mask.shape[0] // b
        maskf = mask.to(x.dtype)
        if rows == 1:
            y = x * maskf.view(b, m, 1, *([1] * len(spatial)))
            return self.conv(y.reshape(b, m * c, *spatial))
        out_ch = self.conv.out_channels
        # W (O, M*C) -> per-modality blocks (M, O, C); project each modality once: (B, M, O, V)
        w = self.conv.weight.view(out_ch, m, c).transpose(0, 1)
        proj = torch.einsum("moc,bmcv->bmov", w, x.reshape(b, m, c, -1))
        mixed = torch.bmm(maskf.view(b, rows, m), proj.reshape(b, m, -1))  # (B, S, O*V)
        mixed = mixed.view(b * rows, out_ch, *spatial)
        return mixed + self.conv.bias.view(1, out_ch, *([1] * len(spatial)))


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal weights for every conv (and the RFM's 1x1 MLPs), as the official code."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.Linear):
            nn.init.kaiming_normal_(m.weight)


class Upsample(nn.Module):
    """Trilinear interpolation to ``size`` with ``align_corners=True``, as the official code.

    A module (not a function call) so that :func:`passion_kit.fast.speed_up` can swap it.
    """

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)


class SkipDecoder(nn.Module):
    """A U-Net decoder from the coarsest of ``levels`` feature maps to full resolution.

    At each level, coarsest first: upsample, ``up`` unit, concatenate the skip, ``merge``
    unit, ``out`` unit (1x1); then a 1x1 conv to logits. Index i of each ModuleList
    decodes into level i (0 = full resolution). mmFormer's and M2FTrans's unimodal
    decoders are this with their own conv unit.

    Args:
        width: channels of level 0 (level l has ``width * 2**l``).
        num_classes: K.
        levels: number of feature levels.
        unit: ``unit(in_ch, out_ch, kernel)`` builds one conv unit; ``kernel`` is
            ``kernel`` for the up and merge units and 1 for the out units.
        kernel: kernel of the up and merge units.
    """

    def __init__(
        self,
        width: int,
        num_classes: int,
        levels: int,
        unit: Callable[[int, int, Kernel], nn.Module],
        kernel: Kernel = 3,
    ) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(levels)]
        ups = (unit(chans[i + 1], chans[i], kernel) for i in range(levels - 1))
        self.up_convs = nn.ModuleList(ups)
        self.merge_convs = nn.ModuleList(unit(2 * c, c, kernel) for c in chans[:-1])
        self.out_convs = nn.ModuleList(unit(c, c, 1) for c in chans[:-1])
        self.upsample = Upsample()
        self.seg = nn.Conv3d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """``feats``: one map per level, finest first -> logits at the finest size."""
        x = feats[-1]
        for level in range(len(feats) - 2, -1, -1):
            skip = feats[level]
            x = self.up_convs[level](self.upsample(x, skip.shape[2:]))
            x = self.out_convs[level](self.merge_convs[level](torch.cat((x, skip), dim=1)))
        return self.seg(x)
