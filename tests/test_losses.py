"""Each loss against values computed by hand (scalar Python) on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from passion_kit.method import losses


def _vox(values):
    """(B, K, V) nested lists -> (B, K, V, 1, 1) tensor."""
    return torch.tensor(values, dtype=torch.float64)[..., None, None]


PROBS = _vox([[[0.8, 0.4, 0.001], [0.2, 0.6, 0.999]]])  # K = 2, V = 3
TARGET = _vox([[[1, 0, 1], [0, 1, 0]]])


def test_weighted_cross_entropy_by_hand():
    w0, w1 = 1 - 2 / 3, 1 - 1 / 3  # class weights 1 - |y_c| / |V|
    # the third voxel's 0.001 is clamped to 0.005
    expected = (-w0 * math.log(0.8) - w1 * math.log(0.6) - w0 * math.log(0.005)) / 3
    got = losses.weighted_cross_entropy(PROBS, TARGET)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_soft_dice_by_hand():
    d0 = 2 * (0.8 + 0.001) / ((0.8 + 0.4 + 0.001) + 2 + 1e-7)
    d1 = 2 * 0.6 / ((0.2 + 0.6 + 0.999) + 1 + 1e-7)
    got = losses.soft_dice_loss(PROBS, TARGET)
    assert got.item() == pytest.approx(1 - (d0 + d1) / 2, rel=1e-9)


def test_losses_are_per_sample():
    other = torch.full_like(PROBS, 0.5)
    probs = torch.cat([PROBS, other])
    target = torch.cat([TARGET, TARGET])
    for fn in (losses.weighted_cross_entropy, losses.soft_dice_loss):
        out = fn(probs, target)
        assert out.shape == (2,)
        assert out[0].item() == pytest.approx(fn(PROBS, TARGET).item())
        assert out[1].item() == pytest.approx(fn(other, TARGET).item())
        assert out[0].item() != pytest.approx(out[1].item())


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_temperature_kl_by_hand_and_detached_teacher():
    s = [[1.0, -2.0], [0.5, 0.0], [3.0, 3.0]]  # per class, per voxel (K = 3, V = 2)
    t = [[0.0, 6.0], [2.0, 0.0], [-1.0, 0.0]]
    temp = 2.0
    total = 0.0
    for v in range(2):
        ps = [max(p, 0.005) for p in _softmax([s[c][v] / temp for c in range(3)])]
        pt = [max(p, 0.005) for p in _softmax([t[c][v] / temp for c in range(3)])]
        total += sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(3))
    expected = temp**2 * total / (3 * 2)  # mean over classes AND voxels, no renormalisation
    student = _vox([s]).requires_grad_()
    teacher = _vox([t]).requires_grad_()
    got = losses.temperature_kl(student, teacher, temp)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    got.sum().backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_temperature_kl_clamp_without_renormalisation():
    # a near one-hot teacher: clamped probabilities sum to more than 1 and stay so
    student = torch.zeros(1, 2, 1, 1, 1, dtype=torch.float64)
    teacher = torch.tensor([20.0, -20.0], dtype=torch.float64).view(1, 2, 1, 1, 1)
    pt = [1.0, 0.005]
    expected = 1.0 * sum(p * (math.log(p) - math.log(0.5)) for p in pt) / 2
    assert losses.temperature_kl(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_pixel_distillation_adds_weighted_upsampled_levels():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    sd = [torch.randn(2, 3, 2, 2, 2), torch.randn(2, 3, 1, 1, 1)]
    td = [torch.randn(2, 3, 2, 2, 2), torch.randn(2, 3, 1, 1, 1)]
    got = losses.pixel_distillation(s, sd, t, td, 4.0)
    expected = losses.temperature_kl(s, t, 4.0)
    for w, a, b in zip((0.5, 0.25), sd, td, strict=True):
        expected = expected + w * losses.temperature_kl(a, b, 4.0, size=(4, 4, 4))
    torch.testing.assert_close(got, expected)


def test_deep_supervision_weights_and_upsampling():
    assert losses.deep_supervision_weights(5) == [0.5, 0.25, 0.125, 0.0625, 0.03125]
    torch.manual_seed(2)
    target = F.one_hot(torch.randint(0, 3, (2, 4, 4, 4)), 3).movedim(-1, 1).float()
    deep = [torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2)]
    got = losses.deep_supervision_loss(deep, target)
    up = F.interpolate(F.softmax(deep[1], 1), size=(4, 4, 4), mode="trilinear", align_corners=True)
    expected = 0.5 * losses.segmentation_loss(F.softmax(deep[0], 1), target) + 0.25 * (
        losses.segmentation_loss(up, target)
    )
    torch.testing.assert_close(got, expected)


def _cos(a, b, eps=1e-5):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = max(math.sqrt(sum(x * x for x in a)), eps)
    nb = max(math.sqrt(sum(x * x for x in b)), eps)
    return dot / (na * nb)


def test_prototype_distillation_by_hand():
    # one sample, C = 2 feature channels, V = 3 voxels, K = 3 classes (class 2 absent)
    fs = [[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]
    ft = [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    y = [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    sims = {}
    for name, f in (("s", fs), ("t", ft)):
        maps = []
        for k in (0, 1):  # only classes present in every sample
            n = sum(y[k])
            proto = [sum(f[c][v] * y[k][v] for v in range(3)) / (n + 1e-5) for c in range(2)]
            maps.append([_cos([f[0][v], f[1][v]], proto) for v in range(3)])
        sims[name] = maps
    diffs = [sims["s"][k][v] - sims["t"][k][v] for k in range(2) for v in range(3)]
    student = _vox([fs]).requires_grad_()
    teacher = _vox([ft]).requires_grad_()
    loss, dist = losses.prototype_distillation(student, teacher, _vox([y]))
    assert loss.item() == pytest.approx(sum(d * d for d in diffs) / 6, rel=1e-9)
    assert dist.item() == pytest.approx(sum(abs(d) for d in diffs) / 6, rel=1e-9)
    loss.sum().backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert not dist.requires_grad


def test_prototype_class_set_is_present_in_every_sample():
    torch.manual_seed(3)
    f_s, f_t = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 4, 3, 3, 3)
    label = torch.zeros(2, 3, 3, 3, dtype=torch.long)
    label[0, 0, 0, :2] = 1  # class 1 only in sample 0
    label[:, 1, 1, 1] = 2  # class 2 in both
    y = F.one_hot(label, 3).movedim(-1, 1).float()
    both, _ = losses.prototype_distillation(f_s, f_t, y)
    # emptying class 1's channel changes nothing: it is not in every sample
    y_no1 = y.clone()
    y_no1[:, 1] = 0
    same, _ = losses.prototype_distillation(f_s, f_t, y_no1)
    torch.testing.assert_close(both, same)
    alone, _ = losses.prototype_distillation(f_s[:1], f_t[:1], y[:1])
    assert not torch.allclose(alone, both[:1])


def test_prototype_similarity_matches_torch_cosine():
    torch.manual_seed(4)
    f_s, f_t = torch.randn(1, 5, 4, 4, 4), torch.randn(1, 5, 4, 4, 4)
    y = F.one_hot(torch.randint(0, 2, (1, 4, 4, 4)), 2).movedim(-1, 1).float()
    maps = []
    for f in (f_s, f_t):
        per_class = []
        for k in range(2):
            proto = (f * y[:, k : k + 1]).sum((2, 3, 4)) / (y[:, k].sum() + 1e-5)
            per_class.append(F.cosine_similarity(f, proto[:, :, None, None, None], dim=1, eps=1e-5))
        maps.append(torch.stack(per_class, 1))
    expected = (maps[0] - maps[1]).pow(2).mean()
    loss, _ = losses.prototype_distillation(f_s, f_t, y)
    torch.testing.assert_close(loss[0], expected)


def test_prototype_gradient_equals_the_norm_formula_and_is_finite_at_a_zero_feature():
    # The kit clamps sqrt(sum f^2) at eps^2 under the root: value and gradient are those of
    # ||f||.clamp_min(eps), also where a feature vector is exactly 0 (no NaN from the root).
    torch.manual_seed(5)
    f_s = torch.randn(1, 4, 3, 3, 3, dtype=torch.float64)
    f_s[0, :, 0, 0, 0] = 0.0
    f_t = torch.randn(1, 4, 3, 3, 3, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 2, (1, 3, 3, 3)), 2).movedim(-1, 1).double()

    def by_norm(f):
        proto = torch.einsum("bcv,bkv->bkc", f.flatten(2), y.flatten(2)) / (
            y.flatten(2).sum(-1)[..., None] + 1e-5
        )
        f_unit = f.flatten(2) / f.flatten(2).norm(dim=1, keepdim=True).clamp_min(1e-5)
        p_unit = proto / proto.norm(dim=-1, keepdim=True).clamp_min(1e-5)
        return torch.einsum("bcv,bkc->bkv", f_unit, p_unit)

    student = f_s.clone().requires_grad_()
    loss, _ = losses.prototype_distillation(student, f_t, y)
    (grad,) = torch.autograd.grad(loss.sum(), student)
    reference = f_s.clone().requires_grad_()
    expected = (by_norm(reference) - by_norm(f_t)).pow(2).mean()
    (grad_ref,) = torch.autograd.grad(expected, reference)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss[0], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_shape_errors_name_the_arguments():
    with pytest.raises(ValueError, match="probs and target_onehot"):
        losses.soft_dice_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="temperature"):
        losses.temperature_kl(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), 0.0)
