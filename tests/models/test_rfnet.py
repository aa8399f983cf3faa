"""RFNet: size, the rows semantics of fuse, and masking."""

from __future__ import annotations

import pytest
import torch

import passion_kit as pk
from passion_kit.data.modalities import BRATS
from passion_kit.models.rfnet import RFNet


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_at_the_paper_setting():
    net = pk.build_backbone("rfnet", num_modalities=4, num_classes=4, width=8, patch_size=80)
    assert round(_count(net) / 1e6, 2) == 2.38
    assert round(_count(net.encoders[0]) / 1e6, 3) == 0.367
    assert round(_count(net.decoder) / 1e6, 3) == 0.767
    assert round(_count(net.sep_decoder) / 1e6, 3) == 0.147


def test_fuse_shapes_for_every_mask():
    net = RFNet(patch_size=16).eval()
    feats = net.encode(torch.randn(1, 4, 16, 16, 16))
    assert [tuple(f.shape) for f in feats] == [
        (1, 4, 8, 16, 16, 16),
        (1, 4, 16, 8, 8, 8),
        (1, 4, 32, 4, 4, 4),
        (1, 4, 64, 2, 2, 2),
    ]
    out = net.fuse(feats, BRATS.mask_tensor().view(15, 4))  # 15 rows of one sample
    assert out.logits.shape == (15, 4, 16, 16, 16)
    assert [tuple(d.shape[2:]) for d in out.deep] == [(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3]
    assert out.feature.shape == (15, 8, 16, 16, 16)
    assert torch.isfinite(out.logits).all()
    assert len({tuple(out.logits[i].flatten()[:50].tolist()) for i in range(15)}) == 15


def test_rows_equal_separate_calls():
    net = RFNet(patch_size=16).eval()
    feats = net.encode(torch.randn(2, 4, 16, 16, 16))
    rows = torch.tensor(
        [[1, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1], [0, 1, 0, 0], [0, 1, 1, 0]],
        dtype=torch.bool,
    )
    together = net.fuse(feats, rows)
    for r in range(6):
        s = r // 3
        alone = net.fuse([f[s : s + 1] for f in feats], rows[r : r + 1])
        torch.testing.assert_close(together.logits[r : r + 1], alone.logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(together.feature[r : r + 1], alone.feature, rtol=1e-4, atol=1e-4)


def test_absent_modality_features_do_not_matter():
    net = RFNet(patch_size=16).eval()
    feats = net.encode(torch.randn(1, 4, 16, 16, 16))
    mask = torch.tensor([[True, False, True, False]])
    changed = [f.clone() for f in feats]
    for f in changed:
        f[:, 1] = torch.randn_like(f[:, 1]) * 10
        f[:, 3] = 0
    torch.testing.assert_close(net.fuse(feats, mask).logits, net.fuse(changed, mask).logits)


def test_three_modalities_and_bad_arguments():
    net = pk.build_backbone("rfnet", num_modalities=3, num_classes=6, patch_size=(16, 24, 16))
    logits = net(torch.randn(1, 3, 16, 24, 16), torch.tensor([[True, False, True]]))
    assert logits.shape == (1, 6, 16, 24, 16)
    with pytest.raises(ValueError, match="patch_size"):
        RFNet(patch_size=8)
    with pytest.raises(ValueError, match="unknown backbone"):
        pk.build_backbone("unet")
    with pytest.raises(ValueError, match="image must be"):
        net.encode(torch.randn(1, 4, 16, 24, 16))
    with pytest.raises(ValueError, match="multiple of the batch size"):
        net.fuse(net.encode(torch.randn(2, 3, 16, 24, 16)), torch.ones(3, 3, dtype=torch.bool))
