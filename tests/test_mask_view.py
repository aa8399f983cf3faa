"""What a mask does, read off real tensors: split pictures and each backbone's fusion."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from passion_kit.data import BRATS2020, rates_from_name, read_split
from passion_kit.data.modalities import BRATS
from passion_kit.data.splits import shipped
from passion_kit.lessons import mask_view
from passion_kit.models.m2ftrans import M2FTrans
from passion_kit.models.mmformer import MMFormer
from passion_kit.models.rfnet import RFNet

NO_FLAIR = torch.tensor([[True, True, True, True], [False, True, True, True]])


def test_pattern_probabilities_match_the_published_split_counts():
    rates = rates_from_name("mr2468")
    probs = mask_view.pattern_probabilities(rates, BRATS)
    assert len(probs) == 15 and probs.index.name == "mask_id"
    assert probs[14] == pytest.approx(0.8 * 0.6 * 0.4 * 0.2)  # all present
    assert probs[3] == pytest.approx(0.4 * 0.4 * 0.2 * 0.8)  # flair only
    assert probs.sum() == pytest.approx(1 - 0.2 * 0.4 * 0.6 * 0.8)
    split = read_split(shipped("brats2020/Brats2020_imb_split_mr2468.csv"), BRATS)
    ids = split.mask_ids()
    realized = np.array([ids.count(i) for i in range(15)])
    allotted = np.maximum(1, np.floor(len(split) * probs.to_numpy()))
    assert (realized >= allotted).all()  # redrawn all-missing rows only add cases
    # docs/method.md A.3: 204 rows allotted, 15 redrawn
    assert realized.sum() - allotted.sum() == 15
    with pytest.raises(ValueError, match="each of"):
        mask_view.pattern_probabilities({"flair": 0.5}, BRATS)


def test_plot_split_weights_draws_the_matrix_and_the_shares():
    split = read_split(shipped("brats2020/Brats2020_imb_split_mr2468.csv"), BRATS)
    omega = [2.43, 1.62, 1.19, 5.09]
    fig = mask_view.plot_split_weights(split, omega, title="mr2468")
    left, right = fig.axes[:2]
    assert left.images[0].get_array().shape == (219, 4)
    heights = [p.get_height() for p in right.patches]
    assert heights == pytest.approx([90 / 219, 135 / 219, 184 / 219, 43 / 219])
    notes = [t.get_text() for t in right.texts]
    assert notes == [f"omega = {w:.2f}" for w in omega]
    with pytest.raises(ValueError, match="omega must have 4"):
        mask_view.plot_split_weights(split, [1.0, 2.0])


def _encoded(net, size=16, seed=0):
    torch.manual_seed(seed)
    net.eval()
    with torch.no_grad():
        return net.encode(torch.randn(1, 4, size, size, size))


def test_rfnet_fusion_weights_zero_for_absent_and_independent_of_its_features():
    torch.manual_seed(0)
    net = RFNet(patch_size=16)
    feats = _encoded(net)
    weights, out = mask_view.rfnet_fusion_weights(net, feats, NO_FLAIR, level=1)
    assert weights.shape == (2, 4, 4) and out.logits.shape[0] == 2
    assert (weights[1, :, 0] == 0).all() and (weights[0] > 0).all() and (weights <= 1).all()
    changed = [f.clone() for f in feats]
    for f in changed:
        f[:, 0] = 5 * torch.randn_like(f[:, 0])
    again, out2 = mask_view.rfnet_fusion_weights(net, changed, NO_FLAIR, level=1)
    assert torch.allclose(again[1], weights[1], atol=1e-6)  # FLAIR absent: nothing moves
    assert not torch.allclose(again[0], weights[0], atol=1e-3)  # FLAIR present: it does
    assert torch.allclose(out2.logits[1], out.logits[1], atol=1e-5)
    assert all(not mlp._forward_hooks for mlp in net.decoder.rfm[1].weight_mlps)
    with pytest.raises(ValueError, match="rfnet"):
        mask_view.rfnet_fusion_weights(MMFormer(patch_size=32, embed_dim=32), feats, NO_FLAIR)


def test_mmformer_attention_is_the_layers_own_and_absent_tokens_are_the_embedding():
    torch.manual_seed(0)
    net = MMFormer(patch_size=32, embed_dim=32, mlp_dim=64, heads=4)
    with torch.no_grad():
        net.pos.normal_()  # as after training: absent tokens become their embedding
    feats = _encoded(net, size=32)
    attn, tokens = mask_view.mmformer_inter_attention(net, feats, NO_FLAIR)
    n = 8  # (32 / 16)^3 tokens per modality
    assert attn.shape == (2, 4, 4 * n, 4 * n) and tokens.shape == (2, 4 * n, 32)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 4, 4 * n))
    assert torch.equal(tokens[1, :n], net.pos[0])  # FLAIR absent: only its embedding
    assert not torch.equal(tokens[0, :n], net.pos[0])
    q, k, v = net.inter.heads(tokens)
    expected = net.inter.attend(q, k, v)
    assert torch.allclose((attn @ v).transpose(1, 2).flatten(2), expected, atol=1e-5)
    blocks = mask_view.attention_by_modality(attn, 4)
    assert blocks.shape == (2, 4, 4) and torch.allclose(blocks.sum(-1), torch.ones(2, 4))
    assert (blocks[1, :, 0] > 0).all()  # zeroed, not masked out of the softmax


def test_attention_by_modality_on_a_hand_made_matrix():
    attn = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.5, 0.0], [0.0, 0.4, 0.6]])
    attn = attn.repeat(2, 1).reshape(1, 1, 3, 6)  # not square: refused
    with pytest.raises(ValueError, match="M\\*N"):
        mask_view.attention_by_modality(attn, 2)
    square = torch.tensor([[[[0.3, 0.7], [1.0, 0.0]]]])  # M = 2, N = 1
    assert torch.equal(mask_view.attention_by_modality(square, 2), square[:, 0])
    four = torch.full((1, 2, 4, 4), 0.25)  # M = 2, N = 2, uniform
    assert torch.allclose(mask_view.attention_by_modality(four, 2), torch.full((1, 2, 2), 0.5))


def test_m2ftrans_fusion_attention_is_exactly_zero_for_an_absent_modality():
    torch.manual_seed(0)
    net = M2FTrans(patch_size=32, width=4, depth=1, heads=4, mlp_dim=64)
    feats = _encoded(net, size=32)
    share = mask_view.m2ftrans_fusion_attention(net, feats, NO_FLAIR)
    assert share.shape == (2, 4)
    assert share[1, 0] == 0.0 and (share[1, 1:] > 0).all() and (share[0] > 0).all()
    assert (share.sum(1) < 1).all()  # the fusion tokens keep a share for themselves
    assert not net.bottleneck._forward_hooks


def test_plot_weight_tables_and_region_maps():
    table = pd.DataFrame([[0.0, 1.0], [0.5, 0.25]], index=["r0", "r1"], columns=["a", "b"])
    fig = mask_view.plot_weight_tables({"full": table, "half": table / 2}, title="t")
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.00", "1.00", "0.50", "0.25"]
    assert [t.get_text() for t in fig.axes[1].texts][1] == "0.50"
    assert fig.axes[1].images[0].get_clim() == (0.0, 1.0)
    with pytest.raises(ValueError, match="empty"):
        mask_view.plot_weight_tables({})
    maps = np.random.default_rng(0).random((3, 5, 6))
    fig = mask_view.plot_region_maps({"full": maps, "no flair": maps}, ["bg", "a", "b"])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 6 and images[1].get_array().shape == (6, 5)  # transposed slice
    with pytest.raises(ValueError, match="K=2"):
        mask_view.plot_region_maps({"full": maps}, ["bg", "a"])


def test_trained_run_prefers_the_main_jobs_finished_run(tmp_path, monkeypatch):
    import passion_kit.lessons.explorer

    monkeypatch.setattr(
        passion_kit.lessons.explorer, "explorer_run", lambda d, r: tmp_path / "shipped"
    )
    run = tmp_path / "job" / "runs" / "phantom_rfnet_passion_mr2468_s0"
    assert mask_view.trained_run(tmp_path / "job", "data", "runs") == tmp_path / "shipped"
    run.mkdir(parents=True)
    (run / "checkpoint_last.pt").write_bytes(b"")
    (run / "meta.json").write_text(json.dumps({"status": "running"}))
    assert mask_view.trained_run(tmp_path / "job", "data", "runs") == tmp_path / "shipped"
    (run / "meta.json").write_text(json.dumps({"status": "complete"}))
    assert mask_view.trained_run(tmp_path / "job", "data", "runs") == run


def test_the_rates_of_a_split_name_are_the_generators():
    rates = rates_from_name("mr2468", BRATS2020)
    probs = mask_view.pattern_probabilities(rates, BRATS)
    assert math.isclose(probs[BRATS.mask_id((False, False, True, False))], 0.8 * 0.6 * 0.4 * 0.8)


def test_mask_tables_and_names():
    masks = torch.tensor([[True, True, True, True], [False, True, True, True]])
    assert mask_view.mask_names(masks, BRATS) == ["all", "t1c+t1+t2"]
    values = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    tables = mask_view.mask_tables(values, masks, BRATS, ["a", "b", "c"])
    assert list(tables) == ["all", "t1c+t1+t2"]
    assert tables["t1c+t1+t2"].loc["b", "t1c"] == values[1, 1, 1]
    assert list(tables["all"].columns) == list(BRATS.modalities)
    with pytest.raises(ValueError, match="S=2"):
        mask_view.mask_tables(values[0], masks, BRATS, ["a", "b", "c"])


def test_feature_sensitivity_is_zero_exactly_where_the_modality_is_absent():
    torch.manual_seed(0)
    net = RFNet(patch_size=16)
    feats = _encoded(net)
    before = [f.clone() for f in feats]
    masks = torch.tensor(
        [[True, True, True, True], [False, True, True, True], [True] + [False] * 3]
    )
    moved = mask_view.feature_sensitivity(net, feats, masks, modality=0)
    assert moved.shape == (3,) and moved[1] < 1e-5 and moved[0] > 1e-3 and moved[2] > 1e-3
    assert all(torch.equal(a, b) for a, b in zip(feats, before, strict=True))  # not modified
    t1c = mask_view.feature_sensitivity(net, feats, masks, modality=1)
    assert t1c[2] < 1e-5 and t1c[0] > 1e-3
