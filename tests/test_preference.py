"""The beta update, eta schedule and task-wise gate on hand-made sequences."""

from __future__ import annotations

import math

import pytest
import torch

from passion_kit.method import preference as pref


def test_update_beta_by_hand():
    beta = torch.tensor([1.0, 1.0, 1.0, 1.0])
    rp = torch.tensor([0.5, -0.5, 0.0, 0.2])  # modality 0 dominant, 1 lagging
    b = [1 - 0.1 * 0.5, 1 + 0.1 * 0.5, 1.0, 1 - 0.1 * 0.2]
    norm = math.sqrt(sum(v * v for v in b))
    got = pref.update_beta(beta, rp, 0.1)
    assert got.tolist() == pytest.approx([2 * v / norm for v in b], rel=1e-6)
    assert got.norm().item() == pytest.approx(2.0, rel=1e-6)
    assert got[0] < got[2] < got[1]  # dominant slowed down, lagging sped up


def test_update_beta_clamps_before_renormalising():
    got = pref.update_beta(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([100.0, -100.0, 0.0]), 1.0)
    b = [0.1, 4.0, 1.0]
    norm = math.sqrt(sum(v * v for v in b))
    assert got.tolist() == pytest.approx([math.sqrt(3) * v / norm for v in b], rel=1e-6)


def test_update_beta_sequence_moves_toward_lagging_modality():
    beta = torch.ones(4)
    rp = torch.tensor([0.3, 0.1, -0.1, -0.3])
    for epoch in range(20):
        beta = pref.update_beta(beta, rp, pref.eta_for_epoch(epoch))
    assert torch.all(beta[:-1] < beta[1:])  # strictly ordered by lag
    for epoch in range(20, 300):
        beta = pref.update_beta(beta, rp, pref.eta_for_epoch(epoch))
    # long runs pin dominant modalities near the floor; the norm stays sqrt(M)
    assert beta[0].item() == pytest.approx(beta[1].item()) and beta[0] < 0.11
    assert beta.argmax().item() == 3
    assert beta.norm().item() == pytest.approx(2.0, rel=1e-5)


def test_eta_schedule_matches_the_official_values():
    assert pref.eta_for_epoch(0) == pytest.approx(0.015)
    assert pref.eta_for_epoch(99) == pytest.approx(0.015)
    assert pref.eta_for_epoch(100) == pytest.approx(0.0225)
    assert pref.eta_for_epoch(299) == pytest.approx(0.03375)


def test_iteration_preference_and_gate_by_hand():
    d = torch.tensor([[0.2, 0.4, 0.0, 0.6], [0.3, 0.1, 0.2, 0.0]])
    a = torch.tensor([[True, True, False, True], [True, True, True, False]])
    # sample 0: mean 0.4 -> ratios -0.5, 0, ., 0.5 ; sample 1: mean 0.2 -> 0.5, -0.5, 0, .
    score = pref.iteration_preference(d, a)
    assert score.tolist() == pytest.approx([0.0, -0.5, 0.0, 0.5], abs=1e-6)
    assert pref.task_gate(score).tolist() == [False, False, False, True]


def test_single_student_sample_does_not_poison_the_batch():
    d = torch.tensor([[0.2, 0.6, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    a = torch.tensor([[True, True, False, False], [False, False, True, False]])
    fixed = pref.iteration_preference(d, a)
    assert torch.isfinite(fixed).all()
    assert pref.task_gate(fixed).tolist() == [False, True, False, False]
    official = pref.iteration_preference(d, a, skip_degenerate=False)
    assert torch.isnan(official).all()  # docs/method.md G.2: 0/0 spreads to every modality
    assert not pref.task_gate(official).any()


def test_epoch_relative_preference():
    rp = pref.epoch_relative_preference(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert rp.tolist() == pytest.approx([0.6, 0.2, -0.2, -0.6], rel=1e-6)
    assert pref.epoch_relative_preference(torch.zeros(3)).tolist() == [0, 0, 0]


def test_availability_weights_mr2468_counts():
    counts = [90, 135, 184, 43]  # present cases [FLAIR, T1c, T1, T2] of BraTS2020 mr2468
    masks = torch.zeros(219, 4, dtype=torch.bool)
    for m, n in enumerate(counts):
        masks[:n, m] = True
    got = pref.availability_weights(masks)
    assert got.tolist() == pytest.approx([219 / n for n in counts], rel=1e-6)
    assert [round(v, 2) for v in got.tolist()] == [2.43, 1.62, 1.19, 5.09]


def test_state_end_epoch_and_round_trip():
    state = pref.PreferenceState(4)
    state.record(
        torch.tensor([0.1, 0.2, 0.3, 0.0]),
        torch.tensor([1.0, 1.0, 1.0, 0.0]),
        torch.tensor([0.0, 0.0, 1.0, 0.0]),
    )
    state.record(
        torch.tensor([0.1, 0.2, 0.3, 0.0]),
        torch.tensor([1.0, 1.0, 1.0, 0.0]),
        torch.tensor([0.0, 1.0, 1.0, 0.0]),
    )
    saved = state.state_dict()
    record = state.end_epoch()
    assert record["distance"] == pytest.approx([0.1, 0.2, 0.3, 0.0])
    # modality 3 had no student: it neither sets the mean nor moves
    assert record["relative_preference"] == pytest.approx([0.5, 0.0, -0.5, 0.0], abs=1e-6)
    assert record["gate_rate"] == pytest.approx([0.0, 0.5, 1.0, 0.0])
    assert record["eta"][0] == pytest.approx(0.015)
    expected = pref.update_beta(torch.ones(4), torch.tensor([0.5, 0.0, -0.5, 0.0]), 0.015)
    assert record["beta"] == pytest.approx(expected.tolist(), rel=1e-6)
    assert state.epoch == 1 and state.iterations == 0
    restored = pref.PreferenceState(4)
    restored.load_state_dict(saved)
    assert restored.end_epoch() == record


def test_warmup_freezes_beta():
    state = pref.PreferenceState(2, warmup_epochs=1)
    state.record(torch.tensor([0.1, 0.3]), torch.ones(2), torch.zeros(2))
    assert state.end_epoch()["beta"] == [1.0, 1.0]
    state.record(torch.tensor([0.1, 0.3]), torch.ones(2), torch.zeros(2))
    assert state.end_epoch()["beta"] != [1.0, 1.0]


def test_synchronize_sums_the_epoch_statistics_over_processes():
    """Two ranks that saw different modalities update beta as one batch would (DDP)."""
    ranks = [pref.PreferenceState(3), pref.PreferenceState(3)]
    ranks[0].record(torch.tensor([0.2, 0.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), torch.zeros(3))
    ranks[1].record(torch.tensor([0.0, 0.4, 0.9]), torch.tensor([0.0, 1.0, 1.0]), torch.zeros(3))
    whole = pref.PreferenceState(3)
    whole.record(torch.tensor([0.2, 0.4, 0.9]), torch.tensor([1.0, 1.0, 1.0]), torch.zeros(3))
    stats = [torch.stack([s.distance_sum, s.distance_count]) for s in ranks]
    for state in ranks:
        state.synchronize(lambda t: stats[0] + stats[1])
    expected = whole.end_epoch()
    for state in ranks:
        assert state.end_epoch()["beta"] == pytest.approx(expected["beta"])
    assert expected["beta"] != pytest.approx([1.0, 1.0, 1.0])


def _eta_sequence(epochs: int, scale: float) -> list[float]:
    """The step size each epoch of a run uses, with a constant preference."""
    state = pref.PreferenceState(2, eta_scale=scale)
    etas = []
    for _ in range(epochs):
        state.record(torch.tensor([0.1, 0.3]), torch.ones(2), torch.zeros(2))
        etas.append(state.end_epoch()["eta"][0])
    return etas


def test_eta_scale_one_is_the_paper_schedule():
    assert _eta_sequence(301, 1.0) == pytest.approx([pref.eta_for_epoch(e) for e in range(301)])


@pytest.mark.parametrize("epochs", [30, 40, 35, 24])
def test_a_short_run_walks_the_whole_paper_schedule(epochs):
    """eta_scale = 300 / E: E epochs move beta as far as the paper's 300 (same eta sum)."""
    paper = sum(pref.eta_for_epoch(e) for e in range(300))
    short = _eta_sequence(epochs, 300 / epochs)
    assert sum(short) == pytest.approx(paper, rel=0.03)
    assert short == sorted(short)  # the schedule only steps up
    assert short[-1] == pytest.approx(pref.eta_for_epoch(299) * 300 / epochs)


def test_eta_epochs_in_the_config_scales_the_objective():
    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.train import build_objective_from

    cfg = ExperimentConfig.preset("cpu").override(["train.epochs=30", "objective.eta_epochs=300"])
    assert build_objective_from(cfg, 4, 4).state.eta_scale == pytest.approx(10.0)
    paper = ExperimentConfig.preset("brats2020-paper")
    assert paper.objective.eta_epochs == 0
    assert build_objective_from(paper, 4, 4).state.eta_scale == 1.0
    with pytest.raises(ValueError, match="eta_epochs"):
        build_objective_from(cfg.override(["objective.eta_epochs=-1"]), 4, 4)


def test_the_epoch_distance_per_modality_or_per_iteration():
    """A modality drawn in 2 of 4 iterations: the same mean D, half the official PDT one."""
    stats = {}
    for mean in ("modality", "iteration"):
        state = pref.PreferenceState(2, distance_mean=mean)
        for i in range(4):
            drawn = torch.tensor([float(i % 2 == 0), 1.0])
            state.record(drawn * 0.8, drawn, torch.zeros(2))
        stats[mean] = state.mean_distance().tolist()
    assert stats["modality"] == pytest.approx([0.8, 0.8])
    assert stats["iteration"] == pytest.approx([0.4, 0.8])
    with pytest.raises(ValueError, match="distance_mean must be"):
        pref.PreferenceState(2, distance_mean="sample")


def test_epoch_distance_is_a_config_key():
    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.train import build_objective_from

    cfg = ExperimentConfig.preset("cpu").override(["objective.epoch_distance=iteration"])
    assert build_objective_from(cfg, 4, 4).state.distance_mean == "iteration"
    assert build_objective_from(ExperimentConfig(), 4, 4).state.distance_mean == "modality"
