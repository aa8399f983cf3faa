"""The pieces of one PASSION step: hand-computed values on tiny tensors, and the objective's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from passion_kit import build_backbone
from passion_kit.data.modalities import BRATS
from passion_kit.lessons import step_view as sv
from passion_kit.lessons.explorer import SHIPPED_EXPLORER
from passion_kit.method import losses, preference
from passion_kit.method.base import one_hot
from passion_kit.method.passion import PassionObjective

NAMES = BRATS.modalities
CLASSES = ("background", "ncr_net", "edema", "enhancing")


def _label(batch: int = 1, size: int = 8) -> torch.Tensor:
    """Nested cubes: edema around a core of NCR around an enhancing centre."""
    label = torch.zeros(batch, size, size, size, dtype=torch.long)
    label[:, 1:7, 1:7, 1:7] = 2
    label[:, 2:6, 2:6, 2:6] = 1
    label[:, 3:5, 3:5, 3:5] = 3
    return label


# --- prototypes and similarity maps ------------------------------------------------------------
def test_prototypes_are_the_class_means_by_hand():
    feature = torch.tensor([[[1.0, 3.0, 5.0, 7.0], [2.0, 2.0, 0.0, 4.0]]])  # (1, C=2, V=4)
    y = F.one_hot(torch.tensor([[0, 0, 1, 1]]), 3).movedim(-1, 1).float()  # class 2 absent
    proto = losses.class_prototypes(feature, y)
    expected = torch.tensor([[[4.0, 4.0], [12.0, 4.0], [0.0, 0.0]]]) / (2 + 1e-5)
    torch.testing.assert_close(proto, expected)  # class means (sum / (count + 1e-5)); absent: 0


def test_a_voxel_equal_to_its_prototype_has_similarity_one():
    feature = torch.randn(1, 3, 4, 4, 4)
    y = one_hot(_label(1, 4), 4, torch.float32)
    feature[:, :, y[0, 2].bool()] = torch.tensor([0.5, -1.0, 2.0])[:, None]  # edema: one vector
    maps = losses.similarity_maps(feature, losses.class_prototypes(feature, y))
    assert maps.shape == (1, 4, 4, 4, 4)
    edema = maps[0, 2][y[0, 2].bool()]
    torch.testing.assert_close(edema, torch.ones_like(edema))
    assert maps.abs().max() <= 1 + 1e-6
    opposite = losses.similarity_maps(-feature, losses.class_prototypes(feature, y))[0, 2]
    torch.testing.assert_close(opposite[y[0, 2].bool()], -torch.ones_like(edema))


def test_cosine_matrix_of_orthogonal_and_parallel_vectors():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    torch.testing.assert_close(sv.cosine_matrix(vectors), expected)


def test_prototype_distance_is_the_mean_absolute_difference_of_plain_cosine_maps():
    y = one_hot(_label(2, 6), 4, torch.float32)
    y[1, 3], y[1, 0] = 0.0, y[1, 0] + y[1, 3]  # no enhancing in sample 1: the class is left out
    student, teacher = torch.randn(6, 5, 6, 6, 6), torch.randn(2, 5, 6, 6, 6)  # S = 3
    present = (y.flatten(2).sum(-1) > 0).all(0)

    def plain_maps(feature):  # class means and cosines written out, with torch's norm
        rows = feature.shape[0] // 2
        f, labels = feature.flatten(2), y.repeat_interleave(rows, 0).flatten(2)
        mu = torch.einsum("rcv,rkv->rkc", f, labels) / (labels.sum(-1)[..., None] + 1e-5)
        f_unit = f / f.norm(dim=1, keepdim=True).clamp_min(1e-5)
        mu_unit = mu / mu.norm(dim=-1, keepdim=True).clamp_min(1e-5)
        return torch.einsum("rcv,rkc->rkv", f_unit, mu_unit)

    diff = plain_maps(student) - plain_maps(teacher).repeat_interleave(3, 0)
    loss, distance = losses.prototype_distillation(student, teacher, y)
    torch.testing.assert_close(distance, diff[:, present].abs().mean((1, 2)))
    torch.testing.assert_close(loss, diff[:, present].pow(2).mean((1, 2)))
    same = losses.prototype_distillation(teacher.repeat_interleave(3, 0), teacher, y)[1]
    torch.testing.assert_close(same, torch.zeros(6))


# --- the per-voxel KL ------------------------------------------------------------------------
def test_kl_map_by_hand_on_one_voxel():
    teacher = torch.tensor([[2.0, 0.0]]).view(1, 2, 1)
    student = torch.tensor([[0.0, 0.0]]).view(1, 2, 1)
    t = 2.0
    p_t = torch.softmax(torch.tensor([1.0, 0.0]), 0)  # softmax(z / T)
    expected = t**2 * (p_t * (p_t.log() - math.log(0.5))).mean()  # mean over the classes
    torch.testing.assert_close(losses.kl_map(student, teacher, t), expected.view(1, 1))


def test_kl_map_averages_to_the_temperature_kl_of_the_losses():
    teacher, student = torch.randn(2, 4, 5, 6, 7) * 3, torch.randn(6, 4, 5, 6, 7) * 3  # S = 3
    for temperature in (1.0, 4.0):
        kl = losses.kl_map(student, teacher, temperature)
        assert kl.shape == (6, 5, 6, 7)
        expected = losses.temperature_kl(student, teacher, temperature)
        torch.testing.assert_close(kl.flatten(1).mean(1), expected)
    same = losses.kl_map(teacher.repeat_interleave(3, 0), teacher, 4.0)
    torch.testing.assert_close(same, torch.zeros_like(same))
    with pytest.raises(ValueError, match="temperature"):
        losses.kl_map(student, teacher, 0.0)
    with pytest.raises(ValueError, match="multiple"):
        losses.kl_map(student[:5], teacher, 4.0)


# --- the relative preference and beta ----------------------------------------------------------
def test_sample_relative_preference_by_hand():
    distance = torch.tensor([[0.1, 0.3, 0.0, 0.2], [0.0, 0.4, 0.0, 0.0]])
    available = torch.tensor([[True, True, False, True], [False, True, False, False]])
    rp = preference.sample_relative_preference(distance, available)
    torch.testing.assert_close(rp, torch.tensor([[0.5, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    score = preference.iteration_preference(distance, available)
    torch.testing.assert_close(score, -(rp * available).sum(0))


# --- the fused passes, against the objective ---------------------------------------------------
def test_step_pieces_give_the_objectives_pixel_proto_distance_and_gate():
    net = build_backbone("rfnet", patch_size=16).eval()
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    image = torch.randn(2, 4, 16, 16, 16) * mask[:, :, None, None, None]
    label = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    label[:, 4:12, 4:12, 4:12], label[:, 6:10, 6:10, 6:10] = 2, 3
    batch = {"image": image, "label": label, "mask": mask}
    step = sv.step_pieces(net, batch)
    assert step.students == [0, 1, 2, 3] and step.student.logits.shape == (8, 4, 16, 16, 16)
    with torch.no_grad():
        own = net.fuse(net.encode(image), mask)
    torch.testing.assert_close(step.teacher.logits, own.logits, rtol=1e-4, atol=1e-4)
    y = one_hot(label, 4, torch.float32)
    pix = losses.pixel_distillation(
        step.student.logits, step.student.deep, step.teacher.logits, step.teacher.deep, 4.0
    )
    distance = losses.prototype_distillation(step.student.feature, step.teacher.feature, y)[1]
    distance = distance.view(2, 4)
    distance = distance * mask
    result = PassionObjective(num_modalities=4, num_classes=4)(batch, net)
    a = mask.float()
    torch.testing.assert_close(result.per_modality["pixel"], (pix.view(2, 4) * a).mean(0))
    d_mean = distance.sum(0) / a.sum(0)
    torch.testing.assert_close(result.per_modality["distance"], d_mean, rtol=1e-4, atol=1e-6)
    score = -preference.sample_relative_preference(distance, mask).sum(0)
    torch.testing.assert_close(result.per_modality["gate"], (score > 0).float())


def test_a_single_modality_sample_has_no_student():
    net = build_backbone("rfnet", patch_size=16).eval()
    batch = {
        "image": torch.randn(1, 4, 16, 16, 16),
        "mask": torch.tensor([[False, True, False, False]]),
    }
    step = sv.step_pieces(net, batch)
    assert step.students == [] and step.student.logits.shape[0] == 0


# --- the case and the trained network ------------------------------------------------------------
def test_case_batch_zeroes_the_absent_channels_and_crops_on_the_tumour(phantom_root):
    batch = sv.case_batch(phantom_root, 1, "flair+t1c+t1")
    assert batch["image"].shape == (1, 4, 32, 32, 32) and batch["label"].shape == (1, 32, 32, 32)
    assert batch["mask"].tolist() == [[True, True, True, False]]
    assert batch["image"][0, 3].abs().sum() == 0 and batch["image"][0, :3].abs().sum() > 0
    case_id = (phantom_root / "splits" / "test.txt").read_text().split()[1]
    assert batch["case_id"] == [case_id]
    crop = sv.case_batch(phantom_root, 1, "all", size=16)
    assert crop["image"].shape == (1, 4, 16, 16, 16)
    assert (crop["label"] > 0).sum() > 0 and crop["image"][0, 3].abs().sum() > 0
    with pytest.raises(ValueError, match="index"):
        sv.case_batch(phantom_root, 99, "all")
    with pytest.raises(ValueError, match="combination"):
        sv.case_batch(phantom_root, 0, "flair+pd")


def test_passion_run_prefers_the_main_jobs_complete_run(tmp_path):
    from passion_kit.lessons.explorer import shipped_explorer_run
    from passion_kit.reproduce import point_name

    loaded, source = sv.passion_run(tmp_path / "runs", tmp_path / "data")
    assert source == SHIPPED_EXPLORER and loaded.cfg.objective.name == "passion"
    assert (tmp_path / "data" / "phantom" / "dataset.json").exists()  # generated
    assert not (tmp_path / "runs").exists()  # nothing written
    main = tmp_path / "runs" / point_name("passion", preset="cpu", dataset="phantom")
    shipped_explorer_run(tmp_path / "data", tmp_path / "runs").rename(main)
    (main / "meta.json").write_text(json.dumps({"status": "in progress"}))
    assert sv.passion_run(tmp_path / "runs", tmp_path / "data")[1] == SHIPPED_EXPLORER
    (main / "meta.json").write_text(json.dumps({"status": "complete"}))
    loaded_main, source = sv.passion_run(tmp_path / "runs", tmp_path / "data")
    assert source == main
    for key, value in loaded.backbone.state_dict().items():
        torch.testing.assert_close(loaded_main.backbone.state_dict()[key], value)


# --- pictures ----------------------------------------------------------------------------------
def test_plot_predictions_draws_the_label_and_each_prediction():
    label = _label(1, 8)[0, :, :, 4].numpy()
    background = np.random.default_rng(0).normal(size=(8, 8))
    fig = sv.plot_predictions(
        background, label, {"teacher": label, "t1": np.zeros_like(label)}, class_names=CLASSES
    )
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["label", "teacher", "t1"]
    overlay = axes[0].images[1].get_array()
    assert np.array_equal(overlay.mask, (label == 0).T)  # background is not drawn
    assert axes[2].images[1].get_array().mask.all()
    with pytest.raises(ValueError, match="shape"):
        sv.plot_predictions(background, label[:4], {}, class_names=CLASSES)


def test_plot_maps_share_one_scale_and_draw_the_outline():
    maps = {"a": np.zeros((6, 6)), "b": np.full((6, 6), 3.0)}
    fig = sv.plot_maps(maps, title="KL", outline=np.eye(6, dtype=bool))
    panels = [ax for ax in fig.axes if ax.get_title() in maps]
    assert [im.get_clim() for ax in panels for im in ax.images] == [(0.0, 3.0), (0.0, 3.0)]
    assert all(ax.collections for ax in panels)  # the contour
    fig = sv.plot_maps(maps, title="S", vmin=-1, vmax=1)
    assert fig.axes[0].images[0].get_clim() == (-1, 1)
    with pytest.raises(ValueError, match="at least one"):
        sv.plot_maps({}, title="x")


def test_plot_prototypes_shows_the_cosines():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    fig = sv.plot_prototypes({"teacher": vectors}, class_names=CLASSES)
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert len(texts) == 16 and texts[0] == "1.00" and texts[3] == "-1.00" and texts[1] == "0.00"
    with pytest.raises(ValueError, match="classes"):
        sv.plot_prototypes({"teacher": vectors[:3]}, class_names=CLASSES)


def test_plot_step_preference_bars_and_gate():
    fig = sv.plot_step_preference(
        [0.1, 0.3, 0.0, 0.2],
        [0.5, -0.5, 0.0, 0.0],
        [False, True, False, False],
        modalities=NAMES,
        available=[True, True, False, True],
    )
    left, right = fig.axes
    assert [p.get_height() for p in left.patches] == pytest.approx([0.1, 0.3, 0.2])
    assert left.lines[0].get_ydata()[0] == pytest.approx(0.2)  # Dbar
    assert [p.get_hatch() for p in right.patches] == [None, "//", None]
    assert [t.get_text() for t in right.texts] == ["gate on"]
    with pytest.raises(ValueError, match="4 values"):
        sv.plot_step_preference([0.1], [0.0], [False], modalities=NAMES, available=[True])
