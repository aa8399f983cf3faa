"""PMR: the prototype classifier, its coefficients, and a short RFNet run."""

from __future__ import annotations

import math

import pytest
import torch
from balance_helpers import BACKBONES, ToyBackbone, dominance_batch, train_backbone

from passion_kit.balancing.pmr import pmr_rebalance, prototype_terms
from passion_kit.objectives import build_objective


def _two_clusters(s: float):
    """One sample, 1-D features: class 1 voxels at +s, class 0 voxels at -s."""
    label = torch.zeros(1, 4, 4, 2, dtype=torch.long)
    label[:, :2] = 1
    feats = (s * (2 * label - 1).float()).unsqueeze(1)  # (1, 1, 4, 4, 2)
    y = torch.nn.functional.one_hot(label, 2).movedim(-1, 1).float()
    return feats, y


@pytest.mark.parametrize("s", [0.2, 1.5])
def test_prototype_terms_match_hand_computed_values(s):
    # Prototypes are +-s, so a voxel is 0 from its own and 2s from the other: p_y = sigmoid(2s).
    feats, y = _two_clusters(s)
    pce, conf, ent = prototype_terms(feats, y)
    p = 1 / (1 + math.exp(-2 * s))
    assert conf.item() == pytest.approx(p, rel=1e-5)
    assert pce.item() == pytest.approx(-math.log(p), rel=1e-5)
    assert ent.item() == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)), rel=1e-4)


def test_prototypes_are_constants_and_rows_share_their_sample_target():
    feats, y = _two_clusters(0.5)
    feats = feats.repeat(2, 1, 1, 1, 1).requires_grad_()  # two students of one sample
    pce, conf, _ = prototype_terms(feats, y)
    assert torch.allclose(pce[0], pce[1]) and torch.allclose(conf[0], conf[1])
    pce.sum().backward()
    # Every voxel sits exactly on its class prototype (+-0.5): the gradient stays finite
    # there, and descent pushes each class away from the other's constant prototype.
    assert torch.isfinite(feats.grad).all()
    assert (feats.grad[:, 0, :2] < 0).all() and (feats.grad[:, 0, 2:] > 0).all()


def test_rebalance_speeds_up_the_weak_and_slows_the_dominant():
    ratio = torch.tensor([2.0, 0.5, 1.0, 0.8, 1.5])
    valid = torch.tensor([True, True, True, True, False])
    stimulate, suppress = pmr_rebalance(ratio, valid)
    assert stimulate.tolist() == pytest.approx([0, 1, 0, 0.25, 0])
    assert suppress.tolist() == pytest.approx([1, 0, 0, 0, 0])


def test_dominant_modality_is_slowed_and_weak_one_sped_up():
    objective = build_objective("pmr", num_modalities=2, num_classes=2)
    result = objective(dominance_batch([3.0, 0.2]), ToyBackbone())
    p = result.per_modality
    assert p["ratio"][0] > 1 > p["ratio"][1]
    assert p["coefficient"][0] < 1 < p["coefficient"][1]
    assert p["pce_weight"].tolist()[0] == 0 and p["pce_weight"][1] > 0
    assert p["entropy_weight"][0] > 0 and p["entropy_weight"].tolist()[1] == 0
    t = result.terms
    expected = t["fuse"] + t["deep"] + t["sep"] + t["pce"] - t["entropy"]
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert t["pce"] == pytest.approx(float(p["pce_weight"][1] * p["pce"][1]), rel=1e-5)
    record = objective.end_epoch()
    assert record["coefficient"][0] < 1 < record["coefficient"][1]


def test_entropy_term_only_in_the_early_epochs():
    objective = build_objective("pmr", num_modalities=2, num_classes=2, entropy_epochs=1)
    objective.end_epoch()  # now in epoch 1
    p = objective(dominance_batch([3.0, 0.2]), ToyBackbone()).per_modality
    assert p["entropy_weight"].tolist() == [0.0, 0.0]
    assert p["coefficient"][0] == 1 and p["coefficient"][1] > 1


def test_missing_and_single_modalities_are_left_alone():
    net = ToyBackbone(num_modalities=3)
    objective = build_objective("pmr", num_modalities=3, num_classes=2)
    masks = [[True, True, False], [True, False, False]]  # m2 absent, sample 1 single
    p = objective(dominance_batch([3.0, 0.2, 1.0], masks), net).per_modality
    assert p["coefficient"][2] == 1 and p["pce"][2] == 0 and p["entropy"][2] == 0
    single = build_objective("pmr", num_modalities=2, num_classes=2)(
        dominance_batch([3.0, 0.2], [[True, False]]), ToyBackbone()
    )
    assert "pce" not in single.terms
    assert single.per_modality["coefficient"].tolist() == [1.0, 1.0]


def test_outside_the_window_it_is_the_baseline():
    objective = build_objective("pmr", num_modalities=2, num_classes=2, modulation_start=1)
    result = objective(dominance_batch([3.0, 0.2]), ToyBackbone())
    assert set(result.terms) == {"fuse", "deep", "sep"}
    assert result.loss.item() == pytest.approx(sum(result.terms.values()), rel=1e-5)


def test_argument_checks():
    with pytest.raises(ValueError, match="mu must be >= 0"):
        build_objective("pmr", num_modalities=2, num_classes=2, mu=-1)
    with pytest.raises(ValueError, match="reduction must be"):
        build_objective("pmr", num_modalities=2, num_classes=2, reduction="max")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_trains_three_steps(backbone):
    objective, _, results = train_backbone("pmr", backbone)
    assert {"pce", "entropy"} <= set(results[0].terms)
    record = objective.end_epoch()
    assert {"coefficient", "ratio", "pce_weight", "entropy_weight"} <= set(record)
    assert all(0 <= c <= 2 for c in record["coefficient"])
