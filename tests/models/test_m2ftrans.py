"""M2FTrans specifics: sizes, the masked bottleneck, what fuse re-runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from passion_kit.models import build_backbone
from passion_kit.models.m2ftrans import M2FTrans

SMALL = {"patch_size": 32, "width": 4, "mlp_dim": 64, "heads": 4}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_at_paper_setting():
    """Spec B table: 13.19 M in total, and the per-component counts."""
    with torch.device("meta"):
        net = build_backbone("m2ftrans")  # width 8, 4 modalities, 4 classes, 80^3
    assert round(count(net) / 1e6, 2) == 13.19
    assert count(net) == 13_194_788  # the official model's exact count
    assert all(count(e) == 1_473_216 for e in net.encoders)
    assert count(net.bottleneck.layers) == 3_356_928
    assert net.bottleneck.pos.numel() + net.bottleneck.fusion_tokens.numel() == 96_000
    assert count(net.decoder) == 3_255_640
    assert count(net.decoder.cross_top) == 1_316_992  # CT5
    assert count(net.decoder.cross) == 396_352  # CT4
    assert count(net.sep_decoder) == 593_356


def test_token_grid_follows_the_patch():
    with torch.device("meta"):
        net = M2FTrans(patch_size=(32, 48, 64), num_modalities=3)
    assert net.token_grid == (2, 3, 4)
    assert net.bottleneck.pos.shape == (4, 24, 128)  # 3 modality blocks + the fusion block


def test_modality_weights_are_zero_exactly_for_absent_modalities():
    """The fusion queries' attention to an absent modality's block is masked out."""
    torch.manual_seed(0)
    net = M2FTrans(**SMALL).train()  # attention dropout on as well
    feats = net.encode(torch.randn(2, 4, 32, 32, 32))
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    modal, fusion, weights = net.bottleneck(feats[-1], mask, rows=2)
    assert modal.shape == (2, 4, 64, 2, 2, 2)
    assert fusion.shape == (4, 64, 2, 2, 2)
    assert weights.shape == (4, 4, 2, 2, 2)
    assert (weights[~mask] == 0).all()
    assert (weights[mask] > 0).all()


def test_modality_tokens_do_not_depend_on_the_mask():
    net = M2FTrans(**SMALL).eval()
    x5 = net.encode(torch.randn(1, 4, 32, 32, 32))[-1]
    with torch.no_grad():
        a = net.bottleneck(x5, torch.ones(1, 4, dtype=torch.bool), rows=1)[0]
        b = net.bottleneck(x5, torch.eye(4, dtype=torch.bool)[2:3], rows=1)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fuse_never_reruns_encoders():
    net = M2FTrans(**SMALL)
    feats = net.encode(torch.randn(1, 4, 32, 32, 32))
    calls = []
    for encoder in net.encoders:
        encoder.register_forward_hook(lambda *_: calls.append(1))
    net.bottleneck.register_forward_hook(lambda *_: calls.append(2))
    net.fuse(feats, torch.eye(4, dtype=torch.bool))
    assert calls == [2]  # the bottleneck once for all rows, no encoder


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": 40}, "patch_size"),
        ({"patch_size": 16}, "patch_size"),
        ({"patch_size": (32, 32)}, "patch_size"),
        ({"depth": 0}, "depth"),
        ({"heads": 3}, "heads"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        M2FTrans(**{**SMALL, **kwargs})


def test_invalid_inputs_are_named():
    net = M2FTrans(**SMALL)
    with pytest.raises(ValueError, match="patch_size"):
        net.encode(torch.randn(1, 4, 32, 32, 48))
    feats = net.encode(torch.randn(1, 4, 32, 32, 32))
    with pytest.raises(ValueError, match="at least one modality"):
        net.fuse(feats, torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="feats"):
        net.fuse(feats[:4], torch.ones(1, 4, dtype=torch.bool))
