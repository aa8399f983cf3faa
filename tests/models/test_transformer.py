"""Row-shared dropout and the pre-norm transformer layer."""

from __future__ import annotations

import torch

from passion_kit.models.transformer import TransformerLayer, row_dropout


def test_row_dropout_shares_masks_within_a_sample_only():
    torch.manual_seed(0)
    x = torch.ones(3 * 4, 50, 8)  # 3 samples x 4 rows
    y = row_dropout(x, 0.5, rows=4, training=True).view(3, 4, 50, 8)
    assert torch.equal(y[:, 1:], y[:, :1].expand(-1, 3, -1, -1))  # rows of a sample agree
    assert not torch.equal(y[0, 0], y[1, 0])  # samples differ
    assert set(y.unique().tolist()) == {0.0, 2.0}  # inverted dropout scaling
    assert 0.4 < (y == 0).float().mean().item() < 0.6


def test_row_dropout_is_identity_in_eval_or_at_zero_rate():
    x = torch.randn(4, 3)
    assert row_dropout(x, 0.5, rows=2, training=False) is x
    assert row_dropout(x, 0.0, rows=2, training=True) is x


def test_layer_rows_share_dropout_in_training():
    torch.manual_seed(0)
    layer = TransformerLayer(16, heads=4, mlp_dim=32, dropout=0.3).train()
    tokens = torch.randn(2, 1, 10, 16).expand(2, 3, 10, 16).reshape(6, 10, 16)
    out = layer(tokens, rows=3).view(2, 3, 10, 16)
    torch.testing.assert_close(out[:, 1], out[:, 0], rtol=0, atol=0)
    independent = layer(tokens, rows=1).view(2, 3, 10, 16)
    assert not torch.allclose(independent[:, 1], independent[:, 0])


def test_layer_matches_plain_attention_in_eval():
    """Pre-norm MHSA + MLP against torch's reference attention."""
    torch.manual_seed(0)
    layer = TransformerLayer(16, heads=4, mlp_dim=32, dropout=0.1).eval()
    x = torch.randn(2, 10, 16)
    q, k, v = layer.heads(x)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    h = x + layer.proj(ref)
    expected = h + layer.mlp.fc2(torch.nn.functional.gelu(layer.mlp.fc1(layer.norm2(h))))
    torch.testing.assert_close(layer(x), expected)
