"""Transformer pieces shared by mmFormer and M2FTrans, with dropout shared across mask rows.

Both backbones run the mask-dependent part of their network on B * S rows at once:
row ``r`` is sample ``r // S`` under its own availability mask (the teacher and the
PASSION students of that sample). In training mode an ordinary ``nn.Dropout`` would
give every row its own dropout mask, so a student whose mask equals the teacher's
would still disagree with it (the official code has this behaviour, docs/method.md G
"teacher and student dropout"). Here every dropout in a row-expanded tensor draws
one mask per *sample* and broadcasts it over that sample's S rows
(:func:`row_dropout`): rows differ only through their availability masks.

The layer is the pre-norm ViT layer of the official code::

    x = x + Drop(Drop(proj(Attention(LN(x)))))      # attention dropout inside, 8 heads
    x = x + Drop(fc2(Drop(GELU(fc1(LN(x))))))

(the double dropout after the projection is the official ``proj_drop`` followed by
``PreNormDrop``). Attention is computed explicitly (not with a fused kernel) because
M2FTrans reads the attention weights and the dropout must be shared across rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeedForward", "TransformerLayer", "row_dropout"]


def row_dropout(x: torch.Tensor, p: float, rows: int, training: bool) -> torch.Tensor:
    """Dropout whose mask is shared by the ``rows`` consecutive rows of each sample.

    Args:
        x: (B * rows, ...) tensor; rows ``s * rows .. s * rows + rows - 1`` belong to
            sample ``s``.
        p: drop probability in [0, 1).
        rows: S, mask rows per sample (1: plain dropout).
        training: apply dropout only when True.

    Returns:
        A tensor shaped like ``x``, scaled by 1 / (1 - p) where kept.
    """
    if not training or p == 0.0:
        return x
    if rows == 1:
        return F.dropout(x, p, training=True)
    per_sample = x.shape[0] // rows
    keep = torch.empty((per_sample, 1, *x.shape[1:]), dtype=x.dtype, device=x.device)
    keep.bernoulli_(1.0 - p).div_(1.0 - p)
    return (x.reshape(per_sample, rows, *x.shape[1:]) * keep).reshape(x.shape)


class FeedForward(nn.Module):
    """``fc1 -> GELU -> Drop -> fc2 -> Drop`` with row-shared dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, rows: int = 1) -> torch.Tensor:
        x = row_dropout(F.gelu(self.fc1(x)), self.dropout, rows, self.training)
        return row_dropout(self.fc2(x), self.dropout, rows, self.training)


class TransformerLayer(nn.Module):
    """One pre-norm transformer layer (multi-head self-attention, then an MLP).

    The attention step is exposed in parts (:meth:`heads`, :meth:`attend`,
    :meth:`finish`) so that M2FTrans can let its fusion tokens attend to keys that
    are computed once per sample.

    Args:
        dim: token dimension; must be divisible by ``heads``.
        heads: attention heads.
        mlp_dim: hidden size of the MLP.
        dropout: dropout rate of the attention weights, the projection and the MLP.

    Raises:
        ValueError: if ``dim`` is not divisible by ``heads`` or ``dropout`` is not in
            [0, 1).
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim, dropout)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(R, N, dim) layer input -> q, k, v, each (R, heads, N, dim // heads)."""
        r, n, dim = x.shape
        qkv = self.qkv(self.norm1(x)).view(r, n, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int = 1
    ) -> torch.Tensor:
        """Plain softmax attention: (R, h, N, d) each -> (R, N, h * d)."""
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)  # (R, h, N, N)
        attn = row_dropout(attn, self.dropout, rows, self.training)
        out = attn @ v
        return out.transpose(1, 2).flatten(2)

    def finish(self, x: torch.Tensor, attended: torch.Tensor, rows: int = 1) -> torch.Tensor:
        """Residual after the attention, then the MLP residual: (R, N, dim)."""
        y = row_dropout(self.proj(attended), self.dropout, rows, self.training)
        x = x + row_dropout(y, self.dropout, rows, self.training)
        return x + self.mlp(self.norm2(x), rows)

    def forward(self, x: torch.Tensor, rows: int = 1) -> torch.Tensor:
        """x: (B * rows, N, dim) -> (B * rows, N, dim)."""
        q, k, v = self.heads(x)
        return self.finish(x, self.attend(q, k, v, rows), rows)
