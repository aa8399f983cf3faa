"""M2FTrans (Shi et al., 2023) as used by PASSION (docs/method.md B.3), behind the backbone
interface.

Per-modality 5-level post-norm conv encoders; a masked bottleneck transformer over
the modality tokens and learnable fusion tokens; attention-derived modality weights
applied at every scale; a fusion decoder with channel-wise masked cross-attention
("cross tokens") at the two coarsest levels, masked fusion below, and deep
supervision at all 5 levels; the shared unimodal ("sep") decoder.

At the paper's setting (width 8, 4 modalities, 4 classes, 80^3 patches) it has
13.19 M parameters, the same layer for layer as the official model.

Usage (CPU)::

    net = M2FTrans(num_modalities=4, num_classes=4, patch_size=32)
    feats = net.encode(torch.randn(1, 4, 32, 32, 32))
    out = net.fuse(feats, torch.tensor([[True, False, True, True]]))
    out.logits.shape  # (1, 4, 32, 32, 32)

How the masked bottleneck is computed. Modality tokens attend only within their own
modality's block, so they never see the mask: they are computed once per sample
(as M independent blocks). Fusion tokens attend to their own block and to the blocks
of the available modalities; only they run per mask row, against keys and values of
the modality tokens computed once per sample. This is the official attention mask
(``mask_gen_fusion``) computed without the (M+1)N x (M+1)N matrix; the key mask is
built from ``mask`` with tensor ops on its device.

Weight attention (replicated from the official code): the layer-1 attention of the
fusion queries, after dropout and detached, summed over heads and queries per
modality block, gives one map per modality on the token grid. It multiplies the
transformer outputs (level 5) and the encoder skips (levels 1-4, nearest-upsampled).
Absent modalities get weight exactly 0, so in PDT the features of absent modalities
need not be zeroed (as in the official code).

Dropout (0.1 in the bottleneck and after the cross-attention, official): tensors with
one entry per mask row draw their dropout masks per sample and share them across that
sample's rows (:func:`passion_kit.models.transformer.row_dropout`); the modality
tokens run once per sample anyway. A student whose mask equals the teacher's gets
exactly the teacher's output. The official code draws independent masks per pass.

Only cubic-kernel (3-D) inputs are supported; each side of the patch must be a
multiple of 16 and at least 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from passion_kit.models.base import Backbone, Features, FusionOut, expand_rows, rows_per_sample
from passion_kit.models.blocks import (
    ConvNormAct,
    SkipDecoder,
    Upsample,
)
from passion_kit.models.transformer import TransformerLayer, row_dropout

__all__ = ["M2FTrans"]

LEVELS = 5


def _channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel axis of (N, C, *sp)."""
    return norm(x.movedim(1, -1)).movedim(-1, 1)


class DepthwiseBlock(nn.Module):
    """``1x1 -> LN -> GELU -> depthwise 3x3 -> LN -> GELU -> 1x1 -> LN`` (a q/k/v projection)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, in_ch, 1)
        self.norm1 = nn.LayerNorm(in_ch, eps=1e-6)
        self.conv2 = nn.Conv3d(in_ch, in_ch, 3, padding=1, groups=in_ch)
        self.norm2 = nn.LayerNorm(in_ch, eps=1e-6)
        self.conv3 = nn.Conv3d(in_ch, out_ch, 1)
        self.norm3 = nn.LayerNorm(out_ch, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(_channel_norm(self.norm1, self.conv1(x)))
        x = F.gelu(_channel_norm(self.norm2, self.conv2(x)))
        return _channel_norm(self.norm3, self.conv3(x))


class GroupConvFFN(nn.Module):
    """Residual conv FFN: ``C -> 4C -> grouped 3x3 -> C``, each with LN (and GELU), then GELU."""

    def __init__(self, ch: int, expand: int = 4) -> None:
        super().__init__()
        hidden = ch * expand
        self.pw1 = nn.Conv3d(ch, hidden, 1)
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.dw = nn.Conv3d(hidden, hidden, 3, padding=1, groups=ch)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.pw2 = nn.Conv3d(hidden, ch, 1)
        self.norm3 = nn.LayerNorm(ch, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(_channel_norm(self.norm1, self.pw1(x)))
        y = F.gelu(_channel_norm(self.norm2, self.dw(y)))
        return F.gelu(x + _channel_norm(self.norm3, self.pw2(y)))


class ChannelCrossAttention(nn.Module):
    """Channel-wise masked cross-attention from the decoder stream to M modality maps.

    q (R, C, N) . k^T (R, N, M*C) / sqrt(N) -> (R, C, M*C); the channels of absent
    modalities get -inf before the softmax (official ``mask_gen_cross4``).
    """

    def __init__(self, num_modalities: int, ch: int, dropout: float) -> None:
        super().__init__()
        self.query_map = DepthwiseBlock(ch, ch)
        self.key_maps = nn.ModuleList(DepthwiseBlock(ch, ch) for _ in range(num_modalities))
        self.value_maps = nn.ModuleList(DepthwiseBlock(ch, ch) for _ in range(num_modalities))
        self.out_project = DepthwiseBlock(ch, ch)
        self.dropout = dropout

    def forward(
        self, kernels: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, rows: int
    ) -> torch.Tensor:
        """kernels: (R, C, *sp); maps: (R, M, C, *sp); mask: (R, M) -> (R, C, *sp)."""
        c = kernels.shape[1]
        q = self.query_map(kernels).flatten(2)  # (R, C, N)
        k = torch.cat([f(maps[:, i]).flatten(2) for i, f in enumerate(self.key_maps)], 1)
        v = torch.cat([f(maps[:, i]).flatten(2) for i, f in enumerate(self.value_maps)], 1)
        attn = (q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5  # (R, C, M*C)
        keep = mask.repeat_interleave(c, dim=1).unsqueeze(1)  # (R, 1, M*C)
        attn = attn.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        out = self.out_project((attn @ v).view_as(kernels))
        return kernels + row_dropout(out, self.dropout, rows, self.training)


class CrossTokens(nn.Module):
    """``MultiCrossToken``: 2 cross-attention layers; the first also refines the modality maps."""

    def __init__(self, num_modalities: int, ch: int, dropout: float, num_layers: int = 2) -> None:
        super().__init__()
        self.attn = nn.ModuleList(
            ChannelCrossAttention(num_modalities, ch, dropout) for _ in range(num_layers)
        )
        self.ffn_kernels = nn.ModuleList(GroupConvFFN(ch) for _ in range(num_layers))
        self.ffn_maps = nn.ModuleList(GroupConvFFN(ch) for _ in range(num_layers - 1))

    def forward(
        self, maps: torch.Tensor, kernels: torch.Tensor, mask: torch.Tensor, rows: int
    ) -> torch.Tensor:
        """maps: (R, M, C, *sp); kernels: (R, C, *sp) -> (R, C, *sp)."""
        for i, (attn, ffn) in enumerate(zip(self.attn, self.ffn_kernels, strict=True)):
            kernels = ffn(attn(kernels, maps, mask, rows))
            if i < len(self.ffn_maps):
                maps = self.ffn_maps[i](maps.flatten(0, 1)).view_as(maps)
        return kernels


class WeightedFusion(nn.Module):
    """``fusion_postnorm`` on the concatenation of M weighted modality maps: (M*C) -> C -> C -> C.

    The 1x1 conv of ``concat_k(w_k * x_k)`` is ``sum_k w_k * (W_k x_k)``: each
    modality is projected once per sample and mixed per row with its per-voxel weight,
    so the (rows, M*C, *sp) concatenation is never built.
    """

    def __init__(self, num_modalities: int, ch: int) -> None:
        super().__init__()
        self.mix = nn.Conv3d(num_modalities * ch, ch, 1)
        self.rest = nn.Sequential(
            nn.InstanceNorm3d(ch),
            nn.LeakyReLU(0.2, inplace=True),
            ConvNormAct(ch, ch, kernel=3),
            ConvNormAct(ch, ch, kernel=1),
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: (B, M, C, *sp); weights: (B * S, M, *sp), 0 for absent -> (B * S, C, *sp)."""
        b, m, c = x.shape[:3]
        rows = weights.shape[0] // b
        out_ch = self.mix.out_channels
        w = self.mix.weight.view(out_ch, m, c)
        proj = torch.einsum("omc,bmcv->bmov", w, x.reshape(b, m, c, -1))  # (B, M, O, V)
        wts = weights.reshape(b, rows, m, 1, -1)
        mixed = self.mix.bias.view(1, 1, out_ch, 1)
        for i in range(m):  # over modalities, not voxels
            mixed = mixed + wts[:, :, i] * proj[:, None, i]  # (B, S, O, V)
        return self.rest(mixed.reshape(b * rows, out_ch, *x.shape[3:]))


class MaskedBottleneck(nn.Module):
    """Masked transformer over M * N modality tokens and N fusion tokens (``Bottleneck``)."""

    def __init__(
        self,
        num_modalities: int,
        dim: int,
        num_tokens: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(dim, heads, mlp_dim, dropout) for _ in range(depth)
        )
        # Positional embedding of the M modality blocks and the fusion block (zero-init).
        self.pos = nn.Parameter(torch.zeros(num_modalities + 1, num_tokens, dim))
        self.fusion_tokens = nn.Parameter(torch.randn(num_tokens, dim))

    def forward(
        self, x5: torch.Tensor, mask: torch.Tensor, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x5: (B, M, C, *grid); mask: (B * S, M).

        Returns:
            modality outputs (B, M, C, *grid), fusion outputs (B * S, C, *grid) and the
            layer-1 fusion-query attention summed per modality (B * S, M, *grid).
        """
        b, m, dim = x5.shape[:3]
        grid = x5.shape[3:]
        r = b * rows
        mod = (x5.flatten(3).transpose(2, 3) + self.pos[:m]).reshape(b * m, -1, dim)
        n = mod.shape[1]
        fus = (self.fusion_tokens + self.pos[m]).expand(r, n, dim)
        # Fusion queries see the available modality blocks and their own block.
        keep = torch.cat((mask.repeat_interleave(n, dim=1), mask.new_ones(r, n)), dim=1)
        keep = keep.view(b, rows, 1, 1, (m + 1) * n)
        first_attn = None
        for layer in self.layers:
            qm, km, vm = layer.heads(mod)  # (B*M, h, N, d)
            # Modality tokens: attention within their own block, once per sample.
            mod_next = layer.finish(mod, layer.attend(qm, km, vm), rows=1)
            out, attn = self._fusion_attention(layer, fus, km, vm, keep)
            if first_attn is None:
                first_attn = attn.detach()
            fus = layer.finish(fus, out, rows)
            mod = mod_next
        weights = first_attn.sum(dim=(1, 2))[:, : m * n].view(r, m, *grid)
        mod_out = mod.view(b, m, n, dim).transpose(2, 3).reshape(b, m, dim, *grid)
        return mod_out, fus.transpose(1, 2).reshape(r, dim, *grid), weights

    @staticmethod
    def _fusion_attention(
        layer: TransformerLayer,
        fus: torch.Tensor,
        km: torch.Tensor,
        vm: torch.Tensor,
        keep: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked attention of the fusion queries of every row.

        Args:
            layer: the current layer.
            fus: fusion tokens (B * S, N, C), the layer input.
            km, vm: modality keys and values of this layer, (B * M, h, N, d).
            keep: (B, S, 1, 1, (M + 1) * N) bool, False for the absent modalities' keys.

        Returns:
            The attended values (B * S, N, C) and the attention weights after dropout,
            (B * S, h, N, (M + 1) * N).
        """
        b, rows = keep.shape[:2]
        qf, kf, vf = layer.heads(fus)  # (R, h, N, d)
        r, heads, n, d = qf.shape
        m = km.shape[0] // b
        # modality keys/values once per sample, broadcast over its rows: (B, 1, h, M*N, d)
        km = km.view(b, m, heads, n, d).transpose(1, 2).reshape(b, 1, heads, m * n, d)
        vm = vm.view(b, m, heads, n, d).transpose(1, 2).reshape(b, 1, heads, m * n, d)
        qf = qf.view(b, rows, heads, n, d)
        logits = torch.cat(
            (qf @ km.transpose(-2, -1), qf @ kf.view(b, rows, heads, n, d).transpose(-2, -1)),
            dim=-1,
        )  # (B, S, h, N, (M+1)*N)
        logits = logits.masked_fill(~keep, float("-inf")) * layer.scale
        attn = torch.softmax(logits, dim=-1).view(r, heads, n, -1)
        attn = row_dropout(attn, layer.dropout, rows, layer.training)
        split = attn.view(b, rows, heads, n, -1)
        out = split[..., : m * n] @ vm + split[..., m * n :] @ vf.view(b, rows, heads, n, d)
        return out.view(r, heads, n, d).transpose(1, 2).flatten(2), attn


class Encoder(nn.Module):
    """One modality: 5 levels of post-norm units; each later level halves the size, doubles C."""

    def __init__(self, width: int) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(LEVELS)]
        self.stages = nn.ModuleList(
            nn.ModuleList(
                [
                    ConvNormAct(1 if i == 0 else chans[i - 1], c, stride=1 if i == 0 else 2),
                    ConvNormAct(c, c),
                    ConvNormAct(c, c),
                ]
            )
            for i, c in enumerate(chans)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for down, c2, c3 in self.stages:
            x = down(x)
            x = x + c3(c2(x))  # residual pair
            out.append(x)
        return out


class SepDecoder(SkipDecoder):
    """The shared unimodal U-Net decoder over 5 levels (post-norm units); returns logits."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__(width, num_classes, LEVELS, lambda i, o, k: ConvNormAct(i, o, kernel=k))


class FusionDecoder(nn.Module):
    """``Decoder_fusion``: cross tokens at levels 5 and 4, weighted fusion at levels 3-1.

    A deep-supervision head (``prm_fusion``: 1x1 to 16, 1x1 to K) reads the decoder
    stream at every level before that level's fusion.
    """

    def __init__(self, num_modalities: int, width: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(LEVELS)]
        self.deep_heads = nn.ModuleList(
            nn.Sequential(ConvNormAct(c, 16, kernel=1), nn.Conv3d(16, num_classes, 1))
            for c in chans
        )
        self.cross_top = CrossTokens(num_modalities, chans[4], dropout)
        self.cross = CrossTokens(num_modalities, chans[3], dropout)
        self.fuse = nn.ModuleList(WeightedFusion(num_modalities, c) for c in chans[:3])
        self.merge_top = ConvNormAct(2 * chans[4], chans[4])
        self.out_top = ConvNormAct(chans[4], chans[4], kernel=1)
        self.up_convs = nn.ModuleList(ConvNormAct(chans[i + 1], chans[i]) for i in range(4))
        self.upsample = Upsample()
        self.merge_convs = nn.ModuleList(ConvNormAct(2 * c, c) for c in chans[:-1])
        self.out_convs = nn.ModuleList(ConvNormAct(c, c, kernel=1) for c in chans[:-1])
        self.seg = nn.Conv3d(width, num_classes, 1)

    def forward(
        self,
        skips: list[torch.Tensor],
        modal: torch.Tensor,
        fusion: torch.Tensor,
        weights: torch.Tensor,
        mask: torch.Tensor,
    ) -> FusionOut:
        """Decode B * S rows.

        Args:
            skips: encoder levels 1-4, each (B, M, C_l, *sp_l).
            modal: bottleneck modality outputs (B, M, C_5, *grid).
            fusion: bottleneck fusion map (B * S, C_5, *grid).
            weights: modality weights (B * S, M, *grid), 0 for absent modalities.
            mask: (B * S, M).
        """
        rows = mask.shape[0] // modal.shape[0]
        deep: list[torch.Tensor] = [None] * LEVELS  # type: ignore[list-item]
        deep[-1] = self.deep_heads[-1](fusion)
        maps = expand_rows(modal, rows) * weights.unsqueeze(2)  # (R, M, C_5, *grid)
        x = torch.cat((self.cross_top(maps, fusion, mask, rows), fusion), dim=1)
        x = self.out_top(self.merge_top(x))
        for level in range(LEVELS - 2, -1, -1):
            skip = skips[level]
            stream = self.up_convs[level](self.upsample(x, skip.shape[3:]))
            deep[level] = self.deep_heads[level](stream)
            w = F.interpolate(weights, size=skip.shape[3:], mode="nearest")  # (R, M, *sp)
            if level == LEVELS - 2:
                maps = expand_rows(skip, rows) * w.unsqueeze(2)
                fused = self.cross(maps, stream, mask, rows)
            else:
                fused = self.fuse[level](skip, w)
            x = self.out_convs[level](self.merge_convs[level](torch.cat((fused, stream), dim=1)))
        return FusionOut(logits=self.seg(x), deep=deep, feature=x)


class M2FTrans(Backbone):
    """M2FTrans backbone.

    Args:
        num_modalities: M (4 for BraTS).
        num_classes: K including background.
        width: channels at full resolution (8 in PASSION); the bottleneck token
            dimension is 16 * width.
        patch_size: input size, an int or (H, W, D); each side a multiple of 16 and
            at least 32. The token grid is patch / 16 (5^3 = 125 tokens at 80^3).
        depth: bottleneck transformer layers (3).
        heads: attention heads (8); 16 * width must be divisible by it.
        mlp_dim: bottleneck MLP hidden size (4096).
        dropout: dropout of the bottleneck and the cross-token attention output (0.1).

    Raises:
        ValueError: for a patch size, depth or heads outside the allowed values.
    """

    name = "m2ftrans"

    def __init__(
        self,
        *,
        num_modalities: int = 4,
        num_classes: int = 4,
        width: int = 8,
        patch_size: int | tuple[int, int, int] = 80,
        depth: int = 3,
        heads: int = 8,
        mlp_dim: int = 4096,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(num_modalities=num_modalities, num_classes=num_classes, width=width)
        size = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
        scale = 2 ** (LEVELS - 1)
        if len(size) != 3 or any(s % scale or s < 2 * scale for s in size):
            raise ValueError(
                f"patch_size must have 3 sides, each a multiple of {scale} and >= {2 * scale}; "
                f"got {patch_size!r}"
            )
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        self.patch_size = size
        self.token_grid = tuple(s // scale for s in size)
        dim = width * scale
        self.encoders = nn.ModuleList(Encoder(width) for _ in range(num_modalities))
        self.bottleneck = MaskedBottleneck(
            num_modalities, dim, math.prod(self.token_grid), depth, heads, mlp_dim, dropout
        )
        self.decoder = FusionDecoder(num_modalities, width, num_classes, dropout)
        self.sep_decoder = SepDecoder(width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight)

    def encode(self, image: torch.Tensor) -> Features:
        """(B, M, *patch) -> 5 levels (B, M, C_l, *sp_l)."""
        self.check_image(image)
        if tuple(image.shape[2:]) != self.patch_size:
            raise ValueError(
                f"image spatial size {tuple(image.shape[2:])} must equal patch_size "
                f"{self.patch_size} (the positional embeddings are sized from it)"
            )
        per_mod = [enc(image[:, i : i + 1]) for i, enc in enumerate(self.encoders)]
        return [torch.stack(level, dim=1) for level in zip(*per_mod, strict=True)]

    def fuse(self, feats: Features, mask: torch.Tensor) -> FusionOut:
        if len(feats) != LEVELS:
            raise ValueError(f"feats must be the {LEVELS} levels of encode(), got {len(feats)}")
        rows = rows_per_sample(feats[0].shape[0], mask)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every mask row must keep at least one modality")
        modal, fusion, weights = self.bottleneck(feats[-1], mask, rows)
        weights = weights * mask.to(weights.dtype).view(*mask.shape, 1, 1, 1)
        return self.decoder(list(feats[:-1]), modal, fusion, weights, mask)

    def separate(self, level_feats: list[torch.Tensor]) -> torch.Tensor:
        if len(level_feats) != LEVELS:
            raise ValueError(f"level_feats must hold {LEVELS} levels, got {len(level_feats)}")
        return self.sep_decoder(list(level_feats))
