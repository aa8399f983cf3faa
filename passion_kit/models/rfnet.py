"""RFNet (Ding et al., ICCV 2021) as used by PASSION (docs/method.md B.1), behind the backbone
interface.

Per-modality U-Net encoders; a fusion decoder that, at each level, predicts a
probabilistic region map (PRM) and fuses the modalities region by region
(region-aware modal fusion, RFM); a shared unimodal ("sep") decoder.

At the paper's setting (width 8, 4 modalities, 4 classes) it has 2.38 M parameters,
the same layer for layer as the official model.

Usage (CPU)::

    net = RFNet(num_modalities=4, num_classes=4, width=8)
    feats = net.encode(torch.randn(1, 4, 32, 32, 32))
    out = net.fuse(feats, torch.tensor([[True, False, True, True]]))
    out.logits.shape  # (1, 4, 32, 32, 32)

Implementation notes (same maths as the official code, computed differently):
- Masked concatenations followed by a 1x1 conv project each modality once and mix
  per mask row (:class:`MaskedModalityConv`), so the teacher and the students of a
  sample share that work.
- The RFM never builds the (B, M, K, C, *sp) tensor of every modality in every
  region: descriptors are one batched matmul against the region maps, and the
  weighted sum over modalities is taken before multiplying by the region map
  (sum_k w_ik (x_k * p_i) = p_i * sum_k w_ik x_k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from passion_kit.models.base import Backbone, Features, FusionOut, rows_per_sample
from passion_kit.models.blocks import (
    ConvNormAct,
    MaskedModalityConv,
    Upsample,
    kaiming_init,
)

__all__ = ["RFNet"]

LEVELS = 4


class Encoder(nn.Module):
    """One modality: level 1 at full resolution, levels 2-4 halve the size and double C."""

    def __init__(self, width: int) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(LEVELS)]
        self.stages = nn.ModuleList()
        for level, out_ch in enumerate(chans):
            in_ch = 1 if level == 0 else chans[level - 1]
            stride = 1 if level == 0 else 2
            self.stages.append(
                nn.ModuleList(
                    [
                        ConvNormAct(in_ch, out_ch, stride=stride),
                        ConvNormAct(out_ch, out_ch),
                        ConvNormAct(out_ch, out_ch),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for down, c2, c3 in self.stages:
            x = down(x)
            x = x + c3(c2(x))  # residual pair
            out.append(x)
        return out


class SepDecoder(nn.Module):
    """The shared unimodal U-Net decoder (``decoder_sep``); returns logits."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(LEVELS)]
        self.up_convs = nn.ModuleList()
        self.upsample = Upsample()
        self.merge_convs = nn.ModuleList()
        self.out_convs = nn.ModuleList()
        for level in range(LEVELS - 1, 0, -1):  # 3, 2, 1 (0-based target level 2, 1, 0)
            hi, lo = chans[level], chans[level - 1]
            self.up_convs.append(ConvNormAct(hi, lo))
            self.merge_convs.append(ConvNormAct(2 * lo, lo))
            self.out_convs.append(ConvNormAct(lo, lo, kernel=1))
        self.seg = nn.Conv3d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i, skip in enumerate(reversed(feats[:-1])):
            x = self.up_convs[i](self.upsample(x, skip.shape[2:]))
            x = self.out_convs[i](self.merge_convs[i](torch.cat((x, skip), dim=1)))
        return self.seg(x)


class PRMGenerator(nn.Module):
    """Probabilistic region map logits of one level from the masked modality stack.

    The coarsest level sees only the stack; finer levels also see the decoder stream.
    """

    def __init__(self, num_modalities: int, ch: int, num_classes: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.embed_in = MaskedModalityConv(num_modalities, ch, ch // 4)
        self.embed_rest = nn.Sequential(
            nn.InstanceNorm3d(ch // 4),
            nn.LeakyReLU(0.2, inplace=True),
            ConvNormAct(ch // 4, ch // 4, kernel=3),
            ConvNormAct(ch // 4, ch, kernel=1),
        )
        self.head = nn.Sequential(
            ConvNormAct(ch if first else 2 * ch, 16, kernel=1),
            nn.Conv3d(16, num_classes, 1),
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, stream: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.embed_rest(self.embed_in(x, mask))
        if not self.first:
            emb = torch.cat((stream, emb), dim=1)
        return self.head(emb)


class RegionAwareFusion(nn.Module):
    """RFM: per region, modality weights from region descriptors, then fused features.

    Output has ``ch`` channels: half from the region branch, half from a shortcut on
    the masked modality stack.
    """

    def __init__(self, num_modalities: int, ch: int, num_classes: int) -> None:
        super().__init__()
        self.m = num_modalities
        self.k = num_classes
        # One MLP per region on [descriptors of all modalities, mean region probability]
        # (1x1 convs on a 1-voxel input in the official code).
        self.weight_mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(num_modalities * ch + 1, 128),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(128, num_modalities),
            )
            for _ in range(num_classes)
        )
        self.region_fusion = nn.Sequential(
            ConvNormAct(num_classes * ch, ch, kernel=1),
            ConvNormAct(ch, ch, kernel=3),
            ConvNormAct(ch, ch // 2, kernel=1),
        )
        self.shortcut_in = MaskedModalityConv(num_modalities, ch, ch)
        self.shortcut_rest = nn.Sequential(
            nn.InstanceNorm3d(ch),
            nn.LeakyReLU(0.2, inplace=True),
            ConvNormAct(ch, ch, kernel=3),
            ConvNormAct(ch, ch // 2, kernel=1),
        )

    def forward(self, x: torch.Tensor, prm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, M, C, *sp); prm: (B*S, K, *sp) probabilities; mask: (B*S, M)."""
        b, m, c = x.shape[:3]
        spatial = x.shape[3:]
        rows = mask.shape[0] // b
        k = self.k
        xv = x.reshape(b, m * c, -1)  # (B, M*C, V)
        pv = prm.reshape(b, rows * k, -1)  # (B, S*K, V)
        nvox = xv.shape[-1]
        maskf = mask.to(x.dtype).view(b, rows, 1, m)

        # Region descriptors d[r, i, k, c] = GAP(x_k * p_i) / (GAP(p_i) + 1e-7), absent k -> 0.
        region_mean = pv.mean(-1).view(b, rows, k) + 1e-7  # (B, S, K)
        gap = torch.bmm(xv, pv.transpose(1, 2)) / nvox  # (B, M*C, S*K)
        gap = gap.view(b, m, c, rows, k).permute(0, 3, 4, 1, 2)  # (B, S, K, M, C)
        desc = gap * maskf.unsqueeze(-1) / region_mean[..., None, None]
        mlp_in = torch.cat((desc.reshape(b, rows, k, m * c), region_mean.unsqueeze(-1)), -1)
        weights = torch.stack(
            [torch.sigmoid(self.weight_mlps[i](mlp_in[:, :, i])) for i in range(k)], dim=2
        )  # (B, S, K, M)
        weights = weights * maskf  # absent modalities contribute nothing (their features are 0)

        # r_i = p_i * sum_k w_ik x_k, for every row and region: (B*S, K*C, *sp)
        mixed = torch.bmm(weights.reshape(b, rows * k, m), x.reshape(b, m, -1))
        mixed = mixed.view(b * rows, k, c, nvox) * prm.reshape(b * rows, k, 1, nvox)
        region = self.region_fusion(mixed.view(b * rows, k * c, *spatial))
        short = self.shortcut_rest(self.shortcut_in(x, mask))
        return torch.cat((region, short), dim=1)


class FusionDecoder(nn.Module):
    """Coarse-to-fine decoder with a PRM and an RFM at each of the 4 levels."""

    def __init__(self, num_modalities: int, width: int, num_classes: int) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(LEVELS)]
        self.prm = nn.ModuleList(
            PRMGenerator(num_modalities, ch, num_classes, first=(level == LEVELS - 1))
            for level, ch in enumerate(chans)
        )
        self.rfm = nn.ModuleList(RegionAwareFusion(num_modalities, ch, num_classes) for ch in chans)
        # up_convs[i]: level i+1 -> i after upsampling; merge/out at levels 0..2
        self.upsample = Upsample()
        self.up_convs = nn.ModuleList(
            ConvNormAct(chans[i + 1], chans[i]) for i in range(LEVELS - 1)
        )
        self.merge_convs = nn.ModuleList(ConvNormAct(2 * ch, ch) for ch in chans[:-1])
        self.out_convs = nn.ModuleList(ConvNormAct(ch, ch, kernel=1) for ch in chans[:-1])
        self.seg = nn.Conv3d(width, num_classes, 1)

    def forward(self, feats: Features, mask: torch.Tensor) -> FusionOut:
        deep: list[torch.Tensor] = [None] * LEVELS  # type: ignore[list-item]
        top = LEVELS - 1
        deep[top] = self.prm[top](feats[top], mask)
        # The RFM sees the region map without gradient (official: softmax(prm).detach()).
        x = self.rfm[top](feats[top], F.softmax(deep[top], 1).detach(), mask)
        for level in range(top - 1, -1, -1):
            stream = self.up_convs[level](self.upsample(x, feats[level].shape[3:]))
            deep[level] = self.prm[level](feats[level], mask, stream)
            fused = self.rfm[level](feats[level], F.softmax(deep[level], 1).detach(), mask)
            x = self.out_convs[level](self.merge_convs[level](torch.cat((fused, stream), dim=1)))
        return FusionOut(logits=self.seg(x), deep=deep, feature=x)


class RFNet(Backbone):
    """RFNet backbone.

    Args:
        num_modalities: M (4 for BraTS, 3 for MyoPS).
        num_classes: K including background.
        width: channels at full resolution (8 in the paper, 16 in the original RFNet).
        patch_size: training patch size; each side a multiple of 8 and >= 16.
    """

    name = "rfnet"

    def __init__(
        self,
        *,
        num_modalities: int = 4,
        num_classes: int = 4,
        width: int = 8,
        patch_size: int | tuple[int, int, int] = 80,
    ) -> None:
        super().__init__(num_modalities=num_modalities, num_classes=num_classes, width=width)
        if width % 4:
            raise ValueError(f"width must be a multiple of 4 for RFNet, got {width}")
        size = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
        step = 2 ** (LEVELS - 1)
        # The coarsest level needs >= 2 voxels per axis for its reflect-padded 3x3x3 convs.
        if len(size) != 3 or any(s < 2 * step or s % step for s in size):
            raise ValueError(
                f"patch_size must be a multiple of {step} and >= {2 * step} per axis, "
                f"got {patch_size!r}"
            )
        self.patch_size = size
        self.encoders = nn.ModuleList(Encoder(width) for _ in range(num_modalities))
        self.decoder = FusionDecoder(num_modalities, width, num_classes)
        self.sep_decoder = SepDecoder(width, num_classes)
        kaiming_init(self)

    def encode(self, image: torch.Tensor) -> Features:
        self.check_image(image)
        per_mod = [enc(image[:, i : i + 1]) for i, enc in enumerate(self.encoders)]
        return [torch.stack(level, dim=1) for level in zip(*per_mod, strict=True)]

    def fuse(self, feats: Features, mask: torch.Tensor) -> FusionOut:
        rows_per_sample(feats[0].shape[0], mask)
        return self.decoder(feats, mask)

    def separate(self, level_feats: list[torch.Tensor]) -> torch.Tensor:
        return self.sep_decoder(level_feats)
