"""The PASSION objective (and the baseline) over RFNet, on tiny patches."""

from __future__ import annotations

import pytest
import torch

import passion_kit as pk
from passion_kit.data.modalities import BRATS
from passion_kit.method.baseline import Deviations
from passion_kit.models import available_backbones
from passion_kit.objectives import build_objective
from tests.conftest import SMALLEST_PATCH

SIZE = 16


def _batch(masks, *, zero_absent=True, seed=0, size=SIZE):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor(masks, dtype=torch.bool)
    b = mask.shape[0]
    image = torch.randn(b, 4, size, size, size, generator=g)
    if zero_absent:
        image = image * mask[:, :, None, None, None]
    label = torch.zeros(b, size, size, size, dtype=torch.long)
    q = size // 4
    label[:, q : 3 * q, q : 3 * q, q : 3 * q] = 2
    label[:, q + 2 : 3 * q - 2, q + 2 : 3 * q - 2, q + 2 : 3 * q - 2] = 1
    label[:, 2 * q - 1 : 2 * q + 1, 2 * q - 1 : 2 * q + 1, 2 * q - 1 : 2 * q + 1] = 3
    return {"image": image, "label": label, "mask": mask}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return pk.build_backbone("rfnet", patch_size=SIZE)


@pytest.fixture(scope="module", params=available_backbones())
def any_net(request):
    torch.manual_seed(0)
    return pk.build_backbone(request.param, patch_size=SMALLEST_PATCH[request.param])


def _size(backbone) -> int:
    return SMALLEST_PATCH[backbone.name]


@pytest.mark.parametrize("setting", ["idt", "pdt"])
def test_every_mask_trains_without_nan(any_net, setting):
    net = any_net
    objective = build_objective("passion", num_modalities=4, num_classes=4)
    for mask_id in range(15):
        mask = BRATS.mask(mask_id)
        batch = _batch([mask], zero_absent=setting == "idt", seed=mask_id, size=_size(net))
        net.zero_grad()
        result = objective(batch, net)
        result.loss.backward()
        assert torch.isfinite(result.loss), BRATS.name(mask_id)
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        absent = ~torch.tensor(mask)
        for key in ("sep", "pixel", "proto", "distance"):
            assert (result.per_modality[key][absent] == 0).all(), key
        present = torch.tensor(mask)
        assert (result.per_modality["sep"][present] > 0).all()
        if sum(mask) > 1:  # real students: nonzero distillation for each
            assert (result.per_modality["pixel"][present] > 0).all()
            assert (result.per_modality["distance"][present] > 0).all()
        else:  # the only student is the teacher itself
            assert result.per_modality["pixel"].abs().sum() == 0


def test_official_pdt_students_cover_all_modalities(net):
    objective = build_objective(
        "passion", num_modalities=4, num_classes=4, deviations=Deviations(students="all")
    )
    result = objective(_batch([BRATS.mask(9)], zero_absent=False), net)  # flair+t1c
    assert (result.per_modality["sep"] > 0).all()
    assert (result.per_modality["distance"] > 0).all()


def _encoder_grads(net, m):
    return [p.grad for p in net.encoders[m].parameters()]


@pytest.mark.parametrize("name", ["passion", "baseline"])
def test_idt_no_gradient_reaches_missing_encoders(any_net, name):
    net = any_net
    objective = build_objective(name, num_modalities=4, num_classes=4)
    batch = _batch([[True, False, True, False], [True, False, False, True]], size=_size(net))
    net.zero_grad(set_to_none=True)
    objective(batch, net).loss.backward()
    for g in _encoder_grads(net, 1):  # t1c is missing in both samples
        assert g is None or g.abs().max() == 0
    for m in (0, 2, 3):
        assert sum(g.abs().sum() for g in _encoder_grads(net, m) if g is not None) > 0


@pytest.mark.parametrize("batch_size", [1, 4])
def test_single_modality_samples_give_no_nan(any_net, batch_size):
    net = any_net
    masks = [BRATS.mask(2), BRATS.mask(14), BRATS.mask(3), BRATS.mask(12)][:batch_size]
    objective = build_objective("passion", num_modalities=4, num_classes=4)
    result = objective(_batch(masks, size=_size(net)), net)
    assert torch.isfinite(result.loss)
    assert torch.isfinite(result.per_modality["preference_score"]).all()
    if batch_size == 4:  # real students exist, so some modality lags and its gate opens
        assert result.per_modality["gate"].sum() > 0
    official = build_objective(
        "passion", num_modalities=4, num_classes=4, deviations=Deviations(skip_degenerate=False)
    )
    result = official(_batch(masks, size=_size(net)), net)
    assert torch.isfinite(result.loss)
    # docs/method.md G.2 reproduced
    assert torch.isnan(result.per_modality["preference_score"]).all()
    assert result.per_modality["gate"].sum() == 0


def test_loss_is_the_documented_combination(net):
    objective = build_objective("passion", num_modalities=4, num_classes=4)
    objective.state.beta = torch.tensor([0.5, 1.5, 1.0, 0.8])
    objective.set_omega(torch.tensor([2.0, 1.0, 3.0, 1.5]))
    result = objective(_batch([[True, True, True, True], [True, False, True, True]]), net)
    p = result.per_modality
    beta, omega, gate = p["beta"], p["omega"], p["gate"]
    expected = (
        result.terms["fuse"]
        + result.terms["deep"]
        + (gate * beta * omega * p["sep"]).sum()
        + 0.5 * (beta * omega * p["pixel"]).sum()
        + 0.1 * (gate * omega * p["proto"]).sum()
    )
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_baseline_loss_and_batch_reduction(net):
    batch = _batch([[True, True, False, True], [True, False, True, True]])
    mean = build_objective("baseline", num_modalities=4, num_classes=4)(batch, net)
    assert set(mean.per_modality) == {"sep"}
    assert mean.loss.item() == pytest.approx(
        mean.terms["fuse"] + mean.terms["deep"] + mean.terms["sep"], rel=1e-5
    )
    summed = build_objective(
        "baseline", num_modalities=4, num_classes=4, deviations=Deviations(reduction="sum")
    )(batch, net)
    assert summed.loss.item() == pytest.approx(2 * mean.loss.item(), rel=1e-5)


def test_baseline_can_track_distance_without_training_on_it(net):
    objective = build_objective("baseline", num_modalities=4, num_classes=4, track_distance=True)
    result = objective(_batch([[True, True, False, True]]), net)
    assert (result.per_modality["distance"][[0, 1, 3]] > 0).all()
    record = objective.end_epoch()
    assert record["beta"] == [1.0] * 4 and record["distance"][0] > 0


def test_students_reuse_the_encoder_features(net):
    calls = []
    hooks = [e.register_forward_hook(lambda *_: calls.append(1)) for e in net.encoders]
    try:
        build_objective("passion", num_modalities=4, num_classes=4)(_batch([[True] * 4]), net)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 4  # each encoder once: teacher and students share its features


def test_warmup_trains_only_the_unimodal_decoder(net):
    objective = build_objective("passion", num_modalities=4, num_classes=4, warmup_epochs=1)
    net.zero_grad(set_to_none=True)
    result = objective(_batch([[True, True, False, True]]), net)
    result.loss.backward()
    assert set(result.terms) == {"sep"}
    assert all(p.grad is None for p in net.decoder.parameters())


@pytest.mark.parametrize("backbone", available_backbones())
def test_seeded_step_is_reproducible(backbone):
    size = SMALLEST_PATCH[backbone]

    def one_step():
        torch.manual_seed(123)
        net = pk.build_backbone(backbone, patch_size=size)
        objective = build_objective("passion", num_modalities=4, num_classes=4)
        opt = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-4, amsgrad=True)
        loss = objective(_batch([[True, True, False, True]], size=size), net).loss
        loss.backward()
        opt.step()
        return loss.item(), torch.cat([p.detach().flatten() for p in net.parameters()])

    (l1, p1), (l2, p2) = one_step(), one_step()
    assert l1 == l2
    assert torch.equal(p1, p2)


def test_bad_batches_are_named(net):
    objective = build_objective("passion", num_modalities=4, num_classes=4)
    batch = _batch([[True] * 4])
    with pytest.raises(ValueError, match="batch is missing keys"):
        objective({"image": batch["image"]}, net)
    with pytest.raises(ValueError, match="no available modality"):
        objective({**batch, "mask": torch.zeros(1, 4, dtype=torch.bool)}, net)
    with pytest.raises(ValueError, match="label values"):
        objective({**batch, "label": batch["label"] + 4}, net)
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("ogm", num_modalities=4, num_classes=4)


def test_baseline_distance_is_passions_distance(net):
    """The baseline measures D on the same students as PASSION, without re-fusing the teacher."""
    batch = _batch([[True, True, False, True], [False, True, False, False]])
    tracked = build_objective("baseline", num_modalities=4, num_classes=4, track_distance=True)
    passion = build_objective("passion", num_modalities=4, num_classes=4)
    with torch.no_grad():
        d_base = tracked(batch, net).per_modality["distance"]
        d_passion = passion(batch, net).per_modality["distance"]
    torch.testing.assert_close(d_base, d_passion, rtol=1e-4, atol=1e-6)
    assert (d_base[[0, 1, 3]] > 0).all() and d_base[2] == 0


def test_baseline_tracking_every_k_steps_leaves_training_unchanged(net):
    """track_every=2 measures D on calls 1, 3, 5 only; losses and gradients are identical."""
    import copy

    batch = _batch([[True, True, False, True]])
    runs = {}
    for k in (1, 2):
        model = copy.deepcopy(net)
        objective = build_objective(
            "baseline", num_modalities=4, num_classes=4, track_distance=True, track_every=k
        )
        losses, measured = [], []
        for _ in range(4):
            model.zero_grad(set_to_none=True)
            result = objective(batch, model)
            result.loss.backward()
            losses.append(result.loss.item())
            measured.append("distance" in result.per_modality)
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        runs[k] = losses, measured, grads, objective.state.iterations
    assert runs[1][1] == [True] * 4 and runs[2][1] == [True, False, True, False]
    assert runs[1][0] == runs[2][0] and torch.equal(runs[1][2], runs[2][2])
    assert (runs[1][3], runs[2][3]) == (4, 2)  # the epoch's D averages the measured calls
    with pytest.raises(ValueError, match="track_every"):
        build_objective("baseline", num_modalities=4, num_classes=4, track_every=0)


def test_baseline_tracking_skips_a_batch_without_students(net):
    calls = []
    hook = net.decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        objective = build_objective(
            "baseline", num_modalities=4, num_classes=4, track_distance=True
        )
        result = objective(_batch([[False, True, False, False]]), net)
    finally:
        hook.remove()
    assert len(calls) == 1  # the teacher's pass only
    assert (result.per_modality["distance"] == 0).all()


def test_keep_self_students_backpropagates_the_clamped_self_distillation(net):
    """A single-modality sample's self-student: value 0, gradient only through the clamp."""
    import copy

    batch = _batch([[False, True, False, False]])

    def grads(model, **options):
        objective = build_objective("passion", num_modalities=4, num_classes=4, **options)
        model.zero_grad(set_to_none=True)
        result = objective(batch, model)
        result.loss.backward()
        return result, [p.grad.clone() for p in model.decoder.parameters() if p.grad is not None]

    def self_student_effect(model):
        """Largest gradient change of the self-student's terms, relative to the gradient."""
        kept, g_kept = grads(model, deviations=Deviations(keep_self_students=True))
        # the same two-row pass without the self-student's terms
        _, g_off = grads(
            model,
            deviations=Deviations(keep_self_students=True),
            weight_pixel=0.0,
            weight_proto=0.0,
        )
        scale = max(float(g.abs().max()) for g in g_off)
        return kept, max(
            float((a - b).abs().max()) for a, b in zip(g_kept, g_off, strict=True)
        ) / scale

    default, _ = grads(net)
    assert default.terms["pixel"] == 0 and default.terms["proto"] == 0
    kept, plain = self_student_effect(net)
    assert kept.terms["pixel"] == pytest.approx(0.0, abs=1e-6)  # student == teacher
    assert kept.per_modality["distance"][1] == pytest.approx(0.0, abs=1e-6)
    assert plain < 1e-6  # an unsure network: no probability under the clamp, no gradient
    confident = copy.deepcopy(net)
    with torch.no_grad():  # large logits: teacher probabilities at T=4 fall below 0.005
        for head in [confident.decoder.seg, *[p.head[-1] for p in confident.decoder.prm]]:
            head.weight.mul_(300.0)
    kept, effect = self_student_effect(confident)
    assert kept.terms["pixel"] == pytest.approx(0.0, abs=1e-5)
    print(f"self-student gradient change: unsure {plain:.2e}, confident {effect:.2e}")
    assert effect > 1e-3  # the clamp cuts the teacher's small probabilities: a gradient


def test_keep_self_students_changes_nothing_where_every_student_is_real(net):
    batch = _batch([[True, True, False, True]])
    off = build_objective("passion", num_modalities=4, num_classes=4)(batch, net)
    on = build_objective(
        "passion", num_modalities=4, num_classes=4, deviations=Deviations(keep_self_students=True)
    )(batch, net)
    assert on.terms == pytest.approx(off.terms, rel=1e-6)


def test_keep_self_students_is_a_config_key():
    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.train import build_objective_from

    cfg = ExperimentConfig.preset("cpu")
    assert build_objective_from(cfg, 4, 4).deviations.keep_self_students is False
    cfg = cfg.override(["objective.keep_self_students=true"])
    assert build_objective_from(cfg, 4, 4).deviations.keep_self_students is True


@pytest.mark.parametrize("warmup_decay", [False, True])
def test_warmup_decay_lets_the_optimizer_decay_the_fusion_parameters(net, warmup_decay):
    import copy

    model = copy.deepcopy(net)
    objective = build_objective(
        "passion",
        num_modalities=4,
        num_classes=4,
        warmup_epochs=1,
        deviations=Deviations(warmup_decay=warmup_decay),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    before = model.decoder.seg.weight.detach().clone()
    model.zero_grad(set_to_none=True)
    objective(_batch([[True, True, False, True]]), model).loss.backward()
    objective.after_backward(model)
    optimizer.step()
    after = model.decoder.seg.weight.detach()
    if warmup_decay:  # zero gradient: only the decoupled decay moves the weight
        torch.testing.assert_close(after, before * (1 - 1e-3 * 0.1))
    else:
        assert torch.equal(after, before)
    encoder_moved = not torch.equal(
        model.encoders[0].stages[0][0][0].weight, net.encoders[0].stages[0][0][0].weight
    )
    assert encoder_moved  # the unimodal path trains either way
