"""mmFormer (Zhang et al., MICCAI 2022) as used by PASSION (docs/method.md B.2), behind the
interface.

Per-modality hybrid encoders (a 5-level pre-norm conv encoder, then a one-layer
intra-modal transformer on the coarsest level), an inter-modal transformer over the
intra-modal tokens of all M modalities (those of absent modalities zeroed, plus their
positional embedding), a fusion decoder with deep supervision at 4 levels and the
shared unimodal ("sep") decoder.

At the paper's setting (width 8, 4 modalities, 4 classes, 80^3 patches) it has
35.60 M parameters, the same layer for layer as the official model.

Usage (CPU)::

    net = MMFormer(num_modalities=4, num_classes=4, patch_size=32)
    feats = net.encode(torch.randn(1, 4, 32, 32, 32))
    out = net.fuse(feats, torch.tensor([[True, False, True, True]]))
    out.logits.shape  # (1, 4, 32, 32, 32)

    # MyoPS-style thin slices: in-plane kernels, no downsampling along the depth axis
    net = MMFormer(num_modalities=3, num_classes=6, patch_size=(256, 256, 1), kernel=(3, 3, 1))

What ``encode`` returns: the 5 conv levels (B, M, C_l, *sp) followed by a 6th entry,
the intra-modal transformer output (B, M, embed_dim, *token_grid). Both are
mask-independent, so ``fuse`` re-runs only what depends on the mask: masking, the
inter-modal transformer, its projection and the fusion decoder. ``separate`` takes
the same 6 entries for one modality and decodes the 5 conv levels.

Token layout (docs/method.md B.2 quirk). The inter-modal transformer returns M * N tokens,
modality-major. The official code reshapes them to (h, w, d, M * embed_dim), which
puts tokens M*p .. M*p + M - 1 (consecutive tokens of mostly the same modality) at
spatial position p, so the spatial correspondence is scrambled. ``token_layout=
"official"`` (default) keeps this for fidelity with published numbers;
``token_layout="spatial"`` puts the M modality tokens of position p at position p.

Dropout: the transformers use dropout 0.1 (official). The inter-modal transformer
runs on B * S mask rows; its dropout masks are drawn per sample and shared by that
sample's rows (:func:`passion_kit.models.transformer.row_dropout`), so a student
whose mask equals the teacher's gets exactly the teacher's output. The official code
draws independent masks for the teacher and each student.

Other notes: masked concatenations followed by a 1x1 conv use
:class:`MaskedModalityConv` (each modality projected once per sample); the official
pre-norm unit builds its InstanceNorm with the output channel count but applies it to
the input (harmless with ``affine=False``); here it is sized to the input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from passion_kit.models.base import Backbone, Features, FusionOut, expand_rows, rows_per_sample
from passion_kit.models.blocks import (
    Kernel,
    MaskedModalityConv,
    SkipDecoder,
    Upsample,
    as_kernel,
)
from passion_kit.models.transformer import TransformerLayer

__all__ = ["MMFormer", "TOKEN_LAYOUTS", "tokens_to_grid"]

LEVELS = 5
TOKEN_LAYOUTS = ("official", "spatial")


class PreNormConv(nn.Sequential):
    """``InstanceNorm (affine=False) -> LeakyReLU(0.2) -> conv`` (mmFormer's unit)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        padding_mode: str = "reflect",
    ) -> None:
        super().__init__(
            nn.InstanceNorm3d(in_ch),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(
                in_ch,
                out_ch,
                kernel,
                stride=stride,
                padding=tuple(k // 2 for k in kernel),
                padding_mode=padding_mode,
            ),
        )


def tokens_to_grid(
    tokens: torch.Tensor, num_modalities: int, grid: tuple[int, int, int], layout: str
) -> torch.Tensor:
    """Inter-modal tokens (R, M * N, D), modality-major, -> a map (R, M * D, *grid).

    ``"official"``: token t goes to position t // M, channel block t % M (the docs/method.md B.2
    scramble). ``"spatial"``: the token of modality j at position p goes to position p,
    channel block j.
    """
    r, _, dim = tokens.shape
    if layout == "spatial":
        n = math.prod(grid)
        tokens = tokens.view(r, num_modalities, n, dim).transpose(1, 2)  # (R, N, M, D)
    return tokens.reshape(r, *grid, num_modalities * dim).permute(0, 4, 1, 2, 3)


def _strides(kernel: tuple[int, int, int]) -> tuple[int, int, int]:
    """Downsample by 2 along the axes the kernel spans, keep thin axes (kernel 1)."""
    return tuple(2 if k > 1 else 1 for k in kernel)


class Encoder(nn.Module):
    """One modality: 5 levels; each later level halves the size and doubles C."""

    def __init__(self, width: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(LEVELS)]
        self.stem = nn.Conv3d(
            1, width, kernel, padding=tuple(k // 2 for k in kernel), padding_mode="reflect"
        )
        self.downs = nn.ModuleList(
            PreNormConv(chans[i - 1], chans[i], kernel, _strides(kernel)) for i in range(1, LEVELS)
        )
        self.pairs = nn.ModuleList(
            nn.Sequential(PreNormConv(c, c, kernel), PreNormConv(c, c, kernel)) for c in chans
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for level, pair in enumerate(self.pairs):
            x = self.stem(x) if level == 0 else self.downs[level - 1](x)
            x = x + pair(x)  # residual pair
            out.append(x)
        return out


class SepDecoder(SkipDecoder):
    """The shared unimodal U-Net decoder over the 5 conv levels; returns logits."""

    def __init__(self, width: int, num_classes: int, kernel: tuple[int, int, int]) -> None:
        super().__init__(
            width,
            num_classes,
            LEVELS,
            lambda i, o, k: PreNormConv(i, o, as_kernel(k)),
            kernel=kernel,
        )


class MaskedFusion(nn.Module):
    """``fusion_prenorm`` on the masked concatenation of M modalities: (M*C) -> C -> C -> C.

    The first unit's InstanceNorm and LeakyReLU are per channel and map a zeroed
    (absent) modality to zero, so they are applied once per sample before masking; the
    1x1 conv then mixes the modalities per mask row (:class:`MaskedModalityConv`).
    The 3x3 conv pads with zeros, as the official ``fusion_prenorm``.
    """

    def __init__(self, num_modalities: int, ch: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(num_modalities * ch)
        self.mix = MaskedModalityConv(num_modalities, ch, ch)
        self.rest = nn.Sequential(
            PreNormConv(ch, ch, kernel, padding_mode="zeros"),
            PreNormConv(ch, ch),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, M, C, *sp); mask: (B * S, M) -> (B * S, C, *sp)."""
        b, m, c = x.shape[:3]
        act = F.leaky_relu(self.norm(x.reshape(b, m * c, *x.shape[3:])), 0.2)
        return self.rest(self.mix(act.view_as(x), mask))


class FusionDecoder(nn.Module):
    """``Decoder_fuse``: 5 levels, a masked fusion per skip level, 4 deep-supervision heads."""

    def __init__(
        self, num_modalities: int, width: int, num_classes: int, kernel: tuple[int, int, int]
    ) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(LEVELS)]
        top = chans[-1]
        # The bottleneck input is the dense inter-transformer map (M * top channels).
        self.fuse_top = nn.Sequential(
            PreNormConv(num_modalities * top, top),
            PreNormConv(top, top, kernel, padding_mode="zeros"),
            PreNormConv(top, top),
        )
        self.fuse = nn.ModuleList(MaskedFusion(num_modalities, c, kernel) for c in chans[:-1])
        self.up_convs = nn.ModuleList(PreNormConv(chans[i + 1], chans[i], kernel) for i in range(4))
        self.upsample = Upsample()
        self.merge_convs = nn.ModuleList(PreNormConv(2 * c, c, kernel) for c in chans[:-1])
        self.out_convs = nn.ModuleList(PreNormConv(c, c) for c in chans[:-1])
        # deep_heads[i] reads level i + 1 (official seg_d1 .. seg_d4)
        self.deep_heads = nn.ModuleList(nn.Conv3d(c, num_classes, 1) for c in chans[1:])
        self.seg = nn.Conv3d(width, num_classes, 1)

    def forward(
        self, skips: list[torch.Tensor], bottom: torch.Tensor, mask: torch.Tensor
    ) -> FusionOut:
        """skips: 4 x (B, M, C_l, *sp_l); bottom: (B * S, M * C_5, *sp_5); mask: (B * S, M)."""
        deep: list[torch.Tensor] = [None] * (LEVELS - 1)  # type: ignore[list-item]
        x = self.fuse_top(bottom)
        deep[-1] = self.deep_heads[-1](x)
        for level in range(LEVELS - 2, -1, -1):
            stream = self.up_convs[level](self.upsample(x, skips[level].shape[3:]))
            x = torch.cat((self.fuse[level](skips[level], mask), stream), dim=1)
            x = self.out_convs[level](self.merge_convs[level](x))
            if level > 0:
                deep[level - 1] = self.deep_heads[level - 1](x)
        return FusionOut(logits=self.seg(x), deep=deep, feature=x)


class MMFormer(Backbone):
    """mmFormer backbone.

    Args:
        num_modalities: M (4 for BraTS, 3 for MyoPS).
        num_classes: K including background.
        width: channels at full resolution (8 in PASSION, 16 in the original mmFormer).
        patch_size: input size, an int or (H, W, D). Along every axis the kernel spans,
            it must be a multiple of 16 and at least 32; the token grid is patch / 16
            there (5^3 = 125 tokens at 80^3) and the full size along thin axes.
        kernel: conv kernel, 3 or a tuple such as (3, 3, 1) for thin slices (MyoPS);
            axes with kernel 1 are never downsampled.
        token_layout: "official" (scrambled inter-token reshape, default) or
            "spatial" (corrected); see the module docstring.
        embed_dim: transformer token dimension (512).
        mlp_dim: transformer MLP hidden size (4096).
        heads: attention heads (8).
        dropout: transformer dropout (0.1).

    Raises:
        ValueError: for a kernel, patch size or token layout outside the allowed values.
    """

    name = "mmformer"

    def __init__(
        self,
        *,
        num_modalities: int = 4,
        num_classes: int = 4,
        width: int = 8,
        patch_size: int | tuple[int, int, int] = 80,
        kernel: Kernel = 3,
        token_layout: str = "official",
        embed_dim: int = 512,
        mlp_dim: int = 4096,
        heads: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(num_modalities=num_modalities, num_classes=num_classes, width=width)
        k = as_kernel(kernel)
        if len(k) != 3 or any(not isinstance(s, int) or s < 1 or s % 2 == 0 for s in k):
            raise ValueError(
                f"kernel must be an odd int or 3 odd ints, e.g. (3, 3, 1); got {kernel!r}"
            )
        if token_layout not in TOKEN_LAYOUTS:
            raise ValueError(f"token_layout must be one of {TOKEN_LAYOUTS}, got {token_layout!r}")
        size = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
        scale = 2 ** (LEVELS - 1)
        if len(size) != 3 or any(
            s < 1 or (kk > 1 and (s % scale or s < 2 * scale))
            for s, kk in zip(size, k, strict=True)
        ):
            raise ValueError(
                f"patch_size must have 3 sides, each a multiple of {scale} and >= {2 * scale} "
                f"along axes with kernel > 1 (kernel {k}); got {patch_size!r}"
            )
        self.kernel = k
        self.patch_size = size
        self.token_layout = token_layout
        self.token_grid = tuple(s // scale if kk > 1 else s for s, kk in zip(size, k, strict=True))
        num_tokens = math.prod(self.token_grid)
        top = width * 2 ** (LEVELS - 1)

        self.encoders = nn.ModuleList(Encoder(width, k) for _ in range(num_modalities))
        self.token_proj = nn.ModuleList(nn.Conv3d(top, embed_dim, 1) for _ in range(num_modalities))
        # Learnable positional embeddings, zero-init; the inter transformer reuses all M.
        self.pos = nn.Parameter(torch.zeros(num_modalities, num_tokens, embed_dim))
        self.intra = nn.ModuleList(
            TransformerLayer(embed_dim, heads, mlp_dim, dropout) for _ in range(num_modalities)
        )
        self.inter = TransformerLayer(embed_dim, heads, mlp_dim, dropout)
        self.inter_proj = nn.Conv3d(num_modalities * embed_dim, num_modalities * top, 1)
        self.decoder = FusionDecoder(num_modalities, width, num_classes, k)
        self.sep_decoder = SepDecoder(width, num_classes, k)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight)

    def modality_parameters(self, modality: int) -> Iterator[nn.Parameter]:
        """Modality ``modality``'s encoder, token projection and intra-modal transformer.

        The positional embeddings ``pos`` hold one slice per modality in one shared
        tensor; they are left out (a parameter cannot be split).
        """
        super().modality_parameters(modality)  # checks the index
        return itertools.chain(
            self.encoders[modality].parameters(),
            self.token_proj[modality].parameters(),
            self.intra[modality].parameters(),
        )

    def encode(self, image: torch.Tensor) -> Features:
        """(B, M, *patch) -> 5 conv levels (B, M, C_l, *sp_l) + intra map (B, M, D, *grid)."""
        self.check_image(image)
        if tuple(image.shape[2:]) != self.patch_size:
            raise ValueError(
                f"image spatial size {tuple(image.shape[2:])} must equal patch_size "
                f"{self.patch_size} (the positional embeddings are sized from it)"
            )
        per_mod = []
        for i, encoder in enumerate(self.encoders):
            levels = encoder(image[:, i : i + 1])
            tokens = self.token_proj[i](levels[-1]).flatten(2).transpose(1, 2)  # (B, N, D)
            tokens = self.intra[i](tokens + self.pos[i])
            levels.append(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *self.token_grid))
            per_mod.append(levels)
        return [torch.stack(level, dim=1) for level in zip(*per_mod, strict=True)]

    def fuse(self, feats: Features, mask: torch.Tensor) -> FusionOut:
        self._check_feats(feats)
        b, m = feats[0].shape[:2]
        rows = rows_per_sample(b, mask)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every mask row must keep at least one modality")
        intra = feats[-1]  # (B, M, D, *grid)
        dim = intra.shape[2]
        r = b * rows
        keep = mask.to(intra.dtype).view(r, m, 1, 1, 1, 1)
        tokens = (expand_rows(intra, rows) * keep).flatten(3).transpose(2, 3)  # (R, M, N, D)
        n = tokens.shape[2]
        x = self.inter(tokens.reshape(r, m * n, dim) + self.pos.view(1, m * n, dim), rows)
        grid = tokens_to_grid(x, m, self.token_grid, self.token_layout)
        bottom = self.inter_proj(grid)  # (R, M * C_5, *grid)
        return self.decoder(list(feats[: LEVELS - 1]), bottom, mask)

    def separate(self, level_feats: list[torch.Tensor]) -> torch.Tensor:
        """One modality's slice of :meth:`encode` (6 entries) -> sep-decoder logits."""
        if len(level_feats) != LEVELS + 1:
            raise ValueError(
                f"level_feats must be one modality's slice of encode() ({LEVELS + 1} entries: "
                f"{LEVELS} conv levels and the intra-modal map), got {len(level_feats)}"
            )
        return self.sep_decoder(list(level_feats[:LEVELS]))

    def _check_feats(self, feats: Features) -> None:
        if len(feats) != LEVELS + 1:
            raise ValueError(
                f"feats must be the output of encode() ({LEVELS + 1} entries), got {len(feats)}"
            )
