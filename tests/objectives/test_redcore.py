"""RedCore-style weighting: relative advantage, the epoch update, and a short RFNet run."""

from __future__ import annotations

import math

import pytest
import torch
from balance_helpers import BACKBONES, ToyBackbone, dominance_batch, train_backbone

from passion_kit.balancing.redcore import relative_advantage
from passion_kit.objectives import build_objective


def test_relative_advantage_by_hand():
    ra = relative_advantage(torch.tensor([0.5, 1.0, 1.5, math.nan]))
    assert ra.tolist() == pytest.approx([0.5, 0.0, -0.5, 0.0])  # unseen: no advantage
    assert relative_advantage(torch.full((3,), math.nan)).tolist() == [0.0, 0.0, 0.0]


def test_advantaged_modality_is_slowed_after_the_epoch():
    objective = build_objective("redcore", num_modalities=2, num_classes=2)
    net = ToyBackbone()
    for _ in range(2):
        objective(dominance_batch([3.0, 0.2]), net)
    record = objective.end_epoch()
    loss = torch.tensor(record["loss"])
    assert loss[0] < loss[1]  # modality 0's unimodal prediction is the better one
    ra = torch.tensor(record["relative_advantage"])
    assert ra[0] > 0 > ra[1]
    # beta = sqrt(M) b / ||b||, b = clamp(1 - eta ra), eta = 0.01 * 1.5 at epoch 0
    b = (1 - 0.015 * ra).clamp(0.1, 4.0)
    expected = math.sqrt(2) * b / b.norm()
    assert record["coefficient"] == pytest.approx(expected.tolist(), rel=1e-6)
    assert record["coefficient"][0] < 1 < record["coefficient"][1]
    assert record["eta"] == [pytest.approx(0.015)] * 2
    assert objective.state.coefficient.tolist() == pytest.approx(record["coefficient"])


def test_loss_weights_each_unimodal_term_by_beta():
    objective = build_objective("redcore", num_modalities=2, num_classes=2)
    objective.state.coefficient = torch.tensor([0.5, 1.5])
    result = objective(dominance_batch([3.0, 0.2]), ToyBackbone())
    p, t = result.per_modality, result.terms
    expected = t["fuse"] + t["deep"] + float((p["coefficient"] * p["sep"]).sum())
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert p["coefficient"].tolist() == [0.5, 1.5]


def test_a_modality_unseen_all_epoch_does_not_move_the_others():
    objective = build_objective("redcore", num_modalities=3, num_classes=2)
    masks = [[True, True, False], [True, True, False]]
    objective(dominance_batch([1.0, 1.0, 1.0], masks), ToyBackbone(num_modalities=3))
    record = objective.end_epoch()
    assert math.isnan(record["loss"][2]) and record["relative_advantage"][2] == 0
    assert record["coefficient"] == pytest.approx([1.0, 1.0, 1.0])  # equal losses: no change


def test_state_round_trip_and_argument_checks():
    objective = build_objective("redcore", num_modalities=2, num_classes=2)
    objective(dominance_batch([3.0, 0.2]), ToyBackbone())
    objective.end_epoch()
    other = build_objective("redcore", num_modalities=2, num_classes=2)
    other.state.load_state_dict(objective.state.state_dict())
    assert torch.equal(other.state.coefficient, objective.state.coefficient)
    assert other.state.epoch == 1
    with pytest.raises(ValueError, match="unknown RedCoreState keys"):
        other.state.load_state_dict({"beta": torch.ones(2)})
    with pytest.raises(ValueError, match="beta_range must be"):
        build_objective("redcore", num_modalities=2, num_classes=2, beta_range=(2.0, 4.0))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_trains_three_steps(backbone):
    objective, _, results = train_backbone("redcore", backbone)
    assert set(results[0].terms) == {"fuse", "deep", "sep"}
    record = objective.end_epoch()
    assert torch.tensor(record["coefficient"]).norm().item() == pytest.approx(2.0, rel=1e-5)
    assert all(math.isfinite(x) for x in record["loss"])  # every modality seen in 3 steps


def test_synchronize_sums_every_key_even_unrecorded_ones():
    """Each rank makes one reduction per key, recorded or not, so collectives match."""
    objective = build_objective("redcore", num_modalities=2, num_classes=2)
    objective(dominance_batch([3.0, 0.2]), ToyBackbone())
    before = objective.state.means()["loss"].clone()
    calls = []
    objective.state.synchronize(lambda t: calls.append(t) or 2 * t)
    assert len(calls) == len(objective.state.keys)
    assert torch.allclose(objective.state.means()["loss"], before)  # sums and weights doubled
    assert torch.allclose(objective.state.weights["loss"], 2 * calls[0][1])
    empty = build_objective("pmr", num_modalities=2, num_classes=2)
    calls.clear()
    empty.state.synchronize(lambda t: calls.append(t) or t)
    assert len(calls) == len(empty.state.keys) and all(not c.any() for c in calls)
