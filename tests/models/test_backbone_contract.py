"""The backbone interface, checked on every registered backbone at a CPU-sized setting."""

from __future__ import annotations

import itertools

import pytest
import torch

from passion_kit.models import available_backbones, build_backbone

# Small but structurally complete settings (transformer widths shrunk for CPU speed).
SMALL = {
    "rfnet": {"patch_size": 16, "width": 4},
    "mmformer": {"patch_size": 32, "width": 4, "embed_dim": 32, "mlp_dim": 64, "heads": 4},
    "m2ftrans": {"patch_size": 32, "width": 4, "mlp_dim": 64, "heads": 4},
}
# Downsampling factor of each deep-supervision head, finest first (docs/method.md B table).
DEEP_FACTORS = {"rfnet": [1, 2, 4, 8], "mmformer": [2, 4, 8, 16], "m2ftrans": [1, 2, 4, 8, 16]}
WITH_DROPOUT = ("mmformer", "m2ftrans")


def modality_modules(net, m: int) -> list:
    """Everything that belongs to modality m alone (its hybrid encoder for mmFormer)."""
    modules = [net.encoders[m]]
    if net.name == "mmformer":
        modules += [net.token_proj[m], net.intra[m]]
    return modules


def all_masks(m: int) -> torch.Tensor:
    """The 2^M - 1 non-empty availability masks, (2^M - 1, M) bool."""
    rows = [c for c in itertools.product([False, True], repeat=m) if any(c)]
    return torch.tensor(rows, dtype=torch.bool)


def build(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_backbone(name, **{**SMALL.get(name, {}), **overrides})


def patch_of(net) -> tuple[int, int, int]:
    return tuple(net.patch_size)


def image(net, batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, net.num_modalities, *patch_of(net), generator=g)


def check_output(name, net, out, rows: int) -> None:
    patch = patch_of(net)
    k = net.num_classes
    assert out.logits.shape == (rows, k, *patch)
    assert out.feature.shape == (rows, net.width, *patch)
    factors = DEEP_FACTORS.get(name)
    if factors is not None:
        assert len(out.deep) == len(factors)
        for d, f in zip(out.deep, factors, strict=True):
            assert d.shape == (rows, k, *(s // f for s in patch))
    for t in (out.logits, out.feature, *out.deep):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", available_backbones())
def test_all_masks_pdt_in_one_call(name):
    """PDT: real images, all 15 masks as rows of one sample in a single fuse call."""
    net = build(name)
    masks = all_masks(4)
    out = net.fuse(net.encode(image(net, 1)), masks)
    check_output(name, net, out, len(masks))


@pytest.mark.parametrize("name", available_backbones())
def test_all_masks_idt_batched(name):
    """IDT: 15 samples, absent channels zeroed before encoding, one mask row each."""
    net = build(name)
    masks = all_masks(4)
    x = image(net, len(masks)) * masks.float().view(len(masks), 4, 1, 1, 1)
    out = net.fuse(net.encode(x), masks)
    check_output(name, net, out, len(masks))


@pytest.mark.parametrize("name", available_backbones())
def test_every_mask_batched_equals_its_own_call(name):
    """All 15 masks as rows of one call (as PASSION's teacher and students run) against
    one call per mask: logits, deep outputs and features agree for every mask."""
    net = build(name).eval()
    masks = all_masks(4)
    # On CPU a one-mask call runs its one-sample fp32 convolutions as two depth halves
    # (models.blocks) and the 15-row call does not: the same sums in another order, so
    # the two agree to a few 1e-4 (a wrong mask row would differ by far more).
    tol = {"rtol": 1e-4, "atol": 3e-4}
    with torch.no_grad():
        feats = net.encode(image(net, 1))
        joint = net.fuse(feats, masks)
        for r, mask in enumerate(masks):
            single = net.fuse(feats, mask[None])
            torch.testing.assert_close(joint.logits[r : r + 1], single.logits, **tol)
            torch.testing.assert_close(joint.feature[r : r + 1], single.feature, **tol)
            for dj, ds in zip(joint.deep, single.deep, strict=True):
                torch.testing.assert_close(dj[r : r + 1], ds, **tol)


@pytest.mark.parametrize("name", available_backbones())
def test_rows_equal_separate_calls(name):
    """Row r of a B * S mask applies to sample r // S (eval mode, so no dropout)."""
    net = build(name).eval()
    masks = all_masks(4)[torch.tensor([14, 3, 9, 0, 6, 12])]  # (B * S) = 2 * 3 rows
    with torch.no_grad():
        feats = net.encode(image(net, 2))
        joint = net.fuse(feats, masks)
        for s in range(3):
            single = net.fuse(feats, masks[s::3])
            torch.testing.assert_close(joint.logits[s::3], single.logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(joint.feature[s::3], single.feature, rtol=1e-4, atol=1e-4)
            for dj, ds in zip(joint.deep, single.deep, strict=True):
                torch.testing.assert_close(dj[s::3], ds, rtol=1e-4, atol=1e-4)
    # the two samples differ, so a wrong row -> sample mapping would be caught
    assert not torch.allclose(joint.logits[0], joint.logits[3], atol=1e-3)


@pytest.mark.parametrize("name", available_backbones())
def test_absent_modality_features_do_not_matter(name):
    """PDT: features of a masked-out modality (all levels) leave that row's output unchanged."""
    net = build(name).eval()
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]])
    with torch.no_grad():
        feats = net.encode(image(net, 1))
        out = net.fuse(feats, mask)
        noisy = [f.clone() for f in feats]
        for f in noisy:
            f[:, 1] += 3.0 * torch.randn_like(f[:, 1])
        out_noisy = net.fuse(noisy, mask)
    torch.testing.assert_close(out.logits[0], out_noisy.logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.feature[0], out_noisy.feature[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.logits[1], out_noisy.logits[1], atol=1e-3)  # row 1 uses it


@pytest.mark.parametrize("name", available_backbones())
@pytest.mark.parametrize("missing", [0, 3])
def test_gradient_isolation(name, missing):
    """IDT: with modality m absent (mask and zeroed channel), its encoder gets no gradient.

    The rows are the teacher (all but m) and the single-modality students of the others.
    """
    net = build(name).train()
    m = net.num_modalities
    teacher = torch.ones(m, dtype=torch.bool)
    teacher[missing] = False
    students = torch.eye(m, dtype=torch.bool)[teacher]
    mask = torch.cat((teacher[None], students))
    x = image(net, 1)
    x[:, missing] = 0
    out = net.fuse(net.encode(x), mask)
    loss = out.logits.sum() + out.feature.sum() + sum(d.sum() for d in out.deep)
    loss.backward()
    for module in modality_modules(net, missing):
        for p in module.parameters():
            assert p.grad is None or not p.grad.any()
    present = (missing + 1) % m
    assert any(p.grad is not None and p.grad.any() for p in net.encoders[present].parameters())


@pytest.mark.parametrize("name", available_backbones())
def test_every_parameter_gets_a_gradient(name):
    """Fusion (all modalities) plus the sep decoder on each modality reach every parameter."""
    net = build(name).eval()
    feats = net.encode(image(net, 1))
    out = net.fuse(feats, torch.ones(1, net.num_modalities, dtype=torch.bool))
    loss = out.logits.square().mean() + sum(d.square().mean() for d in out.deep)
    for i in range(net.num_modalities):
        sep = net.separate([f[:, i] for f in feats])
        assert sep.shape == (1, net.num_classes, *patch_of(net))
        loss = loss + sep.square().mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name", available_backbones())
def test_seeded_step_is_reproducible(name):
    """Same seeds -> same initial weights, same train-mode logits (dropout on), same grads."""

    def step():
        net = build(name, seed=0).train()
        torch.manual_seed(7)
        feats = net.encode(image(net, 1))
        out = net.fuse(feats, all_masks(4)[torch.tensor([14, 3, 0])])
        out.logits.square().mean().backward()
        return out.logits.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]

    logits_a, grads_a = step()
    logits_b, grads_b = step()
    assert torch.equal(logits_a, logits_b)
    assert len(grads_a) == len(grads_b) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


@pytest.mark.parametrize("name", available_backbones())
def test_three_modalities(name):
    net = build(name, num_modalities=3, num_classes=3)
    masks = all_masks(3)
    out = net.fuse(net.encode(image(net, 1)), masks)
    check_output(name, net, out, len(masks))


@pytest.mark.parametrize("name", WITH_DROPOUT)
def test_dropout_is_shared_by_the_rows_of_a_sample(name):
    """Train mode: a student row with the teacher's mask reproduces the teacher row exactly."""
    net = build(name).train()
    masks = all_masks(4)
    teacher = masks[11]  # flair + t1 + t2
    rows = torch.stack((teacher, masks[3], teacher, teacher, masks[0], teacher))  # B=2, S=3
    torch.manual_seed(3)
    feats = net.encode(image(net, 2))
    out = net.fuse(feats, rows)
    torch.testing.assert_close(out.logits[2], out.logits[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.feature[2], out.feature[0], rtol=0, atol=1e-6)
    for d in out.deep:
        torch.testing.assert_close(d[2], d[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logits[5], out.logits[3], rtol=0, atol=1e-6)
    # dropout is really on: the same rows in eval mode give different logits
    net.eval()
    with torch.no_grad():
        plain = net.fuse(feats, rows)
    assert not torch.allclose(plain.logits[0], out.logits[0].detach(), atol=1e-4)


@pytest.mark.parametrize("name", available_backbones())
def test_fuse_rejects_bad_masks(name):
    net = build(name)
    feats = net.encode(image(net, 2))
    with pytest.raises(ValueError, match="mask"):
        net.fuse(feats, torch.ones(3, 4, dtype=torch.bool))  # 3 rows for 2 samples
    with pytest.raises(ValueError, match="mask"):
        net.fuse(feats, torch.ones(2, 4))  # not bool


@pytest.mark.parametrize("name", available_backbones())
def test_modality_parameters_are_exactly_what_one_modality_alone_reaches(name):
    """``modality_parameters(m)``: disjoint per modality, and a loss on modality m's
    features alone reaches all of them and nothing of another modality."""
    net = build(name).eval()
    m = net.num_modalities
    owned = [{id(p) for p in net.modality_parameters(i)} for i in range(m)]
    assert all(owned) and all(
        not (owned[i] & owned[j]) for i, j in itertools.combinations(range(m), 2)
    )
    expected = {id(p) for module in modality_modules(net, 1) for p in module.parameters()}
    assert owned[1] == expected
    feats = net.encode(image(net, 1))
    sum(f[:, 1].square().mean() for f in feats).backward()
    connected = {id(p) for p in net.parameters() if p.grad is not None}
    moved = {id(p) for p in net.parameters() if p.grad is not None and p.grad.any()}
    shared = {id(p) for n, p in net.named_parameters() if n == "pos"}  # one tensor, all M
    assert owned[1] <= connected and moved - shared <= owned[1]
    with pytest.raises(IndexError, match="modality must be in"):
        net.modality_parameters(m)
