"""mmFormer specifics: sizes, token layout, thin inputs, what fuse re-runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from passion_kit.models import build_backbone
from passion_kit.models.mmformer import MMFormer, tokens_to_grid

SMALL = {"patch_size": 32, "width": 4, "embed_dim": 32, "mlp_dim": 64, "heads": 4}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_at_paper_setting():
    """Spec B table: 35.60 M in total, and the per-component counts."""
    with torch.device("meta"):
        net = build_backbone("mmformer")  # width 8, 4 modalities, 4 classes, 80^3
    assert round(count(net) / 1e6, 2) == 35.60
    assert count(net) == 35_599_184  # the official model's exact count
    assert all(count(e) == 1_473_216 for e in net.encoders)
    assert all(count(t) == 5_250_048 for t in net.intra)
    assert count(net.inter) == 5_250_048
    assert all(count(p) == 66_048 for p in net.token_proj)
    assert count(net.inter_proj) == 1_049_088
    assert net.pos.numel() == 256_000  # 4 x 125 tokens x 512
    assert count(net.decoder) == 1_293_444
    assert count(net.sep_decoder) == 593_356


def test_myops_setting_sizes_embeddings_from_the_patch():
    with torch.device("meta"):
        net = MMFormer(num_modalities=3, num_classes=6, patch_size=(256, 256, 1), kernel=(3, 3, 1))
    assert net.token_grid == (16, 16, 1)
    assert net.pos.shape == (3, 256, 512)
    assert net.inter_proj.weight.shape[:2] == (3 * 128, 3 * 512)


def test_tokens_to_grid_layouts():
    """Official: token t -> position t // M, block t % M. Spatial: (mod j, pos p) -> p, j."""
    m, grid, dim = 2, (1, 1, 3), 1
    n = 3
    # token of modality j at position p carries the value 10 * j + p
    tokens = torch.tensor([[10.0 * j + p for j in range(m) for p in range(n)]]).view(1, m * n, dim)
    official = tokens_to_grid(tokens, m, grid, "official").reshape(m, n)  # (block, position)
    spatial = tokens_to_grid(tokens, m, grid, "spatial").reshape(m, n)
    # position 0 gets tokens 0 and 1 (both modality 0), position 1 tokens 2 (mod 0) and 3 (mod 1)
    assert official.T.tolist() == [[0.0, 1.0], [2.0, 10.0], [11.0, 12.0]]
    assert spatial.T.tolist() == [[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]]


def test_token_layout_option_changes_the_model():
    torch.manual_seed(0)
    net = MMFormer(**SMALL).eval()
    mask = torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        feats = net.encode(torch.randn(1, 4, 32, 32, 32))
        official = net.fuse(feats, mask).logits
        net.token_layout = "spatial"
        spatial = net.fuse(feats, mask).logits
    assert not torch.allclose(official, spatial, atol=1e-4)


def test_thin_inputs_with_in_plane_kernels():
    """MyoPS-style (3, 3, 1) kernels on 64 x 64 x 1 slices: no downsampling along depth."""
    torch.manual_seed(0)
    net = MMFormer(
        num_modalities=3, num_classes=6, width=4, patch_size=(64, 64, 1), kernel=(3, 3, 1),
        embed_dim=32, mlp_dim=64, heads=4,
    )  # fmt: skip
    kernels = {m.kernel_size for m in net.modules() if isinstance(m, nn.Conv3d)}
    assert kernels == {(3, 3, 1), (1, 1, 1)}
    feats = net.encode(torch.randn(2, 3, 64, 64, 1))
    sizes = [tuple(f.shape[3:]) for f in feats]
    assert sizes == [(64, 64, 1), (32, 32, 1), (16, 16, 1), (8, 8, 1), (4, 4, 1), (4, 4, 1)]
    masks = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)][1:]).bool()
    out = net.fuse(feats, masks.repeat(2, 1))  # 2 samples x 7 rows
    assert out.logits.shape == (14, 6, 64, 64, 1)
    assert [tuple(d.shape[2:]) for d in out.deep] == [
        (32, 32, 1),
        (16, 16, 1),
        (8, 8, 1),
        (4, 4, 1),
    ]
    out.logits.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_fuse_never_reruns_encoders_or_intra_transformers():
    net = MMFormer(**SMALL)
    feats = net.encode(torch.randn(1, 4, 32, 32, 32))
    calls = {"encoder": 0, "intra": 0, "inter": 0}

    def counter(key):
        def hook(*_):
            calls[key] += 1

        return hook

    for module in (*net.encoders, *net.token_proj):
        module.register_forward_hook(counter("encoder"))
    for module in net.intra:
        module.register_forward_hook(counter("intra"))
    net.inter.register_forward_hook(counter("inter"))
    net.fuse(feats, torch.eye(4, dtype=torch.bool))  # 4 students
    assert calls == {"encoder": 0, "intra": 0, "inter": 1}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"token_layout": "corrected"}, "token_layout"),
        ({"kernel": (3, 3)}, "kernel"),
        ({"kernel": 2}, "kernel"),
        ({"patch_size": 40}, "patch_size"),
        ({"patch_size": 16}, "patch_size"),
        ({"patch_size": (32, 32, 1)}, "patch_size"),  # thin axis needs kernel 1 there
    ],
)
def test_invalid_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MMFormer(**{**SMALL, **kwargs})


def test_invalid_inputs_are_named():
    net = MMFormer(**SMALL)
    with pytest.raises(ValueError, match="patch_size"):
        net.encode(torch.randn(1, 4, 48, 48, 48))
    feats = net.encode(torch.randn(1, 4, 32, 32, 32))
    with pytest.raises(ValueError, match="at least one modality"):
        net.fuse(feats, torch.tensor([[True, True, True, True], [False, False, False, False]]))
    with pytest.raises(ValueError, match="level_feats"):
        net.separate([f[:, 0] for f in feats[:5]])
