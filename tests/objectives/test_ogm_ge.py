"""OGM-GE: coefficients, gradient modulation, and a short RFNet run."""

from __future__ import annotations

import math

import pytest
import torch
from balance_helpers import BACKBONES, ToyBackbone, dominance_batch, train_backbone
from torch import nn

from passion_kit.balancing.common import comparable, relative_confidence
from passion_kit.balancing.ogm_ge import modulate_gradients, ogm_coefficients
from passion_kit.method.students import true_class_confidence
from passion_kit.models import available_backbones
from passion_kit.objectives import build_objective


def test_confidence_is_class_balanced():
    # 9 background voxels at p = 0.9, one lesion voxel at p = 0.2 (of its true class).
    probs = torch.tensor([[0.9] * 9 + [0.8], [0.1] * 9 + [0.2]]).view(1, 2, 10, 1, 1)
    y = torch.zeros(1, 2, 10, 1, 1)
    y[0, 0, :9], y[0, 1, 9] = 1, 1
    assert true_class_confidence(probs, y).item() == pytest.approx((0.9 + 0.2) / 2)
    rows = torch.cat((probs, probs.flip(1)))  # two rows (students) of the same sample
    assert true_class_confidence(rows, y).tolist() == pytest.approx([0.55, 0.45])


def test_relative_confidence_compares_within_samples():
    conf = torch.tensor([[0.9, 0.3, 0.0, 0.6], [0.8, 0.0, 0.4, 0.0], [0.5, 0.0, 0.0, 0.0]])
    compared = torch.tensor(
        [[True, True, False, True], [True, False, True, False], [False] * 4]  # 3rd: alone
    )
    ratio, valid = relative_confidence(conf, compared)
    # m0: (0.9 + 0.8) / (mean(0.3, 0.6) + 0.4); m1: 0.3 / mean(0.9, 0.6); m2: 0.4 / 0.8
    expected = torch.tensor([1.7 / 0.85, 0.3 / 0.75, 0.5, 0.6 / 0.6])
    assert torch.allclose(ratio, expected)
    assert valid.tolist() == [True, True, True, True]
    ratio, valid = relative_confidence(conf[:, :2], torch.tensor([[True, False]] * 3))
    assert valid.tolist() == [False, False] and ratio.tolist() == [1.0, 1.0]


def test_coefficients_slow_only_the_dominant_modality():
    ratio = torch.tensor([3.0, 0.5, 1.0, 2.0])
    valid = torch.tensor([True, True, True, False])
    k = ogm_coefficients(ratio, valid, alpha=0.1)
    assert k[0] == pytest.approx(1 - math.tanh(0.3))
    assert k[1:].tolist() == [1.0, 1.0, 1.0]  # weak, even, and undefined: untouched
    assert ogm_coefficients(ratio, valid, alpha=0.8)[0] < k[0]  # larger alpha, slower


def test_dominant_modality_gets_its_gradient_scaled_down():
    net = ToyBackbone()
    objective = build_objective("ogm_ge", num_modalities=2, num_classes=2, noise=False)
    result = objective(dominance_batch([3.0, 0.2]), net)
    k = result.per_modality["coefficient"]
    ratio = result.per_modality["ratio"]
    assert ratio[0] > 1 > ratio[1]
    assert k[0] == pytest.approx(1 - math.tanh(0.1 * float(ratio[0]))) and k[1] == 1
    result.loss.backward()
    before = [(e.weight.grad.clone(), e.bias.grad.clone()) for e in net.encoders]
    objective.after_backward(net)
    assert torch.allclose(net.encoders[0].weight.grad, k[0] * before[0][0])
    assert torch.equal(net.encoders[1].weight.grad, before[1][0])
    assert all(torch.equal(e.bias.grad, b) for e, (_, b) in zip(net.encoders, before, strict=True))
    with pytest.raises(RuntimeError, match="needs a step first"):
        objective.after_backward(net)
    record = objective.end_epoch()
    assert record["coefficient"][0] < 1 and record["coefficient"][1] == 1
    assert record["confidence"][0] > record["confidence"][1]


@pytest.mark.parametrize("confidence", ["fused", "separate"])
def test_both_confidence_sources_find_the_dominant_modality(confidence):
    objective = build_objective("ogm_ge", num_modalities=2, num_classes=2, confidence=confidence)
    result = objective(dominance_batch([0.2, 3.0]), ToyBackbone())
    assert result.per_modality["coefficient"].tolist()[0] == 1
    assert result.per_modality["coefficient"][1] < 1


def test_noise_has_the_gradient_std_and_spares_absent_modalities():
    torch.manual_seed(0)
    net = nn.Module()
    net.encoders = nn.ModuleList(nn.Linear(200, 200) for _ in range(2))
    for enc in net.encoders:
        enc.weight.grad = 3.0 * torch.randn(200, 200)
        enc.bias.grad = torch.zeros(200)
    g0, g1 = (enc.weight.grad.clone() for enc in net.encoders)
    modulate_gradients(net, torch.tensor([0.5, 1.0]), torch.tensor([True, False]), noise=True)
    residual = net.encoders[0].weight.grad - 0.5 * g0
    assert residual.std() == pytest.approx(g0.std().item(), rel=0.02)
    assert abs(residual.mean()) < 0.05
    assert torch.equal(net.encoders[1].weight.grad, g1)  # absent: neither scaled nor noised
    assert (net.encoders[0].bias.grad == 0).all()  # biases are not modulated


def test_absent_modality_encoder_gets_no_noise():
    net = ToyBackbone(num_modalities=3)
    objective = build_objective("ogm_ge", num_modalities=3, num_classes=2)
    batch = dominance_batch([3.0, 0.2, 1.0], [[True, True, False], [True, True, False]])
    objective(batch, net).loss.backward()
    objective.after_backward(net)
    assert (net.encoders[2].weight.grad == 0).all()  # absent everywhere: still no update
    assert (net.encoders[1].weight.grad != 0).all()


def test_no_modulation_outside_the_window():
    net = ToyBackbone()
    objective = build_objective(
        "ogm_ge", num_modalities=2, num_classes=2, noise=False, modulation_start=1
    )
    result = objective(dominance_batch([3.0, 0.2]), net)
    assert result.per_modality["coefficient"].tolist() == [1.0, 1.0]
    result.loss.backward()
    grad = net.encoders[0].weight.grad.clone()
    objective.after_backward(net)
    assert torch.equal(net.encoders[0].weight.grad, grad)
    record = objective.end_epoch()  # same keys every epoch; NaN = not measured
    assert record["coefficient"] == [1.0, 1.0] and set(record) == {
        "coefficient",
        "confidence",
        "ratio",
    }
    assert all(math.isnan(x) for x in record["confidence"])
    assert objective.modulating


def test_state_round_trip_and_argument_checks():
    objective = build_objective("ogm_ge", num_modalities=2, num_classes=2)
    objective(dominance_batch([3.0, 0.2]), ToyBackbone())
    objective.end_epoch()
    other = build_objective("ogm_ge", num_modalities=2, num_classes=2)
    other.state.load_state_dict(objective.state.state_dict())
    assert other.state.epoch == 1
    with pytest.raises(ValueError, match="confidence must be"):
        build_objective("ogm_ge", num_modalities=2, num_classes=2, confidence="sep")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        build_objective("ogm_ge", num_modalities=2, num_classes=2, alpha=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_trains_three_steps(backbone):
    objective, _, results = train_backbone("ogm_ge", backbone)
    assert objective.name == "ogm_ge"
    assert set(results[0].terms) == {"fuse", "deep", "sep"}
    assert results[0].per_modality["coefficient"].shape == (4,)
    record = objective.end_epoch()
    assert len(record["coefficient"]) == 4
    assert all(0 < c <= 1 for c in record["coefficient"])  # every modality was present


def test_the_backbone_list_covers_the_registry():
    assert set(BACKBONES) == set(available_backbones())


def test_a_reducer_makes_the_ratio_that_of_the_global_batch():
    """Two "ranks" holding half a batch each get the whole batch's ratio (DDP)."""
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(8, 4, generator=g)
    compared = comparable(torch.rand(8, 4, generator=g) > 0.3)
    whole = relative_confidence(conf, compared)
    shared = []
    relative_confidence(conf[4:], compared[4:], lambda t: shared.append(t) or t)
    half = relative_confidence(conf[:4], compared[:4], lambda t: t + shared[0])
    assert torch.allclose(half[0], whole[0]) and torch.equal(half[1], whole[1])
    assert not torch.allclose(relative_confidence(conf[:4], compared[:4])[0], whole[0])


def test_seeded_noise_ignores_the_global_generator():
    """The noise of a step depends on the seed only, so every DDP rank draws the same."""

    def noised(seed: int, global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        net = nn.Module()
        net.encoders = nn.ModuleList(nn.Linear(50, 50) for _ in range(2))
        for enc in net.encoders:
            enc.weight.grad = torch.linspace(-1, 1, 2500).view(50, 50).clone()
        modulate_gradients(
            net, torch.tensor([0.5, 1.0]), torch.ones(2, dtype=torch.bool), noise=True, seed=seed
        )
        return [enc.weight.grad for enc in net.encoders]

    a, b, c = noised(7, 0), noised(7, 1), noised(8, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    assert not torch.equal(a[0], a[1] * 0.5)  # noise was added
