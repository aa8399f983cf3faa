"""The kernels of passion_kit.fast (reflect padding, 1x1x1 as matrix products,
channels-last, depth halves, trilinear upsampling, split instance norm) equal the plain
PyTorch ops, values and gradients; speed_up swaps them into a model and changes nothing
else."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from passion_kit import build_backbone
from passion_kit.fast import plain, speed_up
from passion_kit.fast.kernels import (
    CPU_CHANNELS_LAST_MAX,
    FastUpsample,
    _pointwise,
    _slow_single_sample,
    _SplitInstanceNorm,
    upsample,
)
from passion_kit.fast.kernels import (
    FastConv3d as Conv3d,
)
from passion_kit.fast.kernels import (
    FastInstanceNorm3d as InstanceNorm3d,
)
from passion_kit.models.blocks import Upsample


@pytest.mark.parametrize(
    ("shape", "kernel"),
    [((2, 3, 7, 6, 5), 3), ((1, 4, 9, 8, 3), (3, 3, 1)), ((2, 2, 5, 4, 6), (1, 3, 3))],
)
def test_reflect_conv_equals_the_native_one_with_its_gradients(shape, kernel):
    torch.manual_seed(0)
    k = (kernel,) * 3 if isinstance(kernel, int) else kernel
    pad = tuple(s // 2 for s in k)
    ours = Conv3d(shape[1], 5, k, padding=pad, padding_mode="reflect").double()
    native = nn.Conv3d(shape[1], 5, k, padding=pad, padding_mode="reflect").double()
    native.load_state_dict(ours.state_dict())  # the same parameters and names
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y, y_native = ours(x), native(x)
    torch.testing.assert_close(y, y_native, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_native,) = torch.autograd.grad(y_native, x, g)
    torch.testing.assert_close(gx, gx_native, rtol=0, atol=1e-12)
    gw = torch.autograd.grad(ours(x), ours.weight, g)[0]
    gw_native = torch.autograd.grad(native(x), native.weight, g)[0]
    torch.testing.assert_close(gw, gw_native, rtol=1e-12, atol=1e-12)


def _conv_and_grads(conv, x, g):
    y = conv(x)
    grads = torch.autograd.grad(y, [x, *conv.parameters()], g)
    return y, grads


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 6, 4, 5, 2), (1, 32, 3, 3, 3)])
def test_pointwise_conv_is_a_matrix_product_equal_to_the_native_one(shape, bias):
    torch.manual_seed(0)
    ours = Conv3d(shape[1], 4, 1, bias=bias).double()
    native = nn.Conv3d(shape[1], 4, 1, bias=bias).double()
    native.load_state_dict(ours.state_dict())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert _pointwise(ours, x)
    g = torch.randn(shape[0], 4, *shape[2:], dtype=torch.float64)
    y, grads = _conv_and_grads(ours, x, g)
    y_native, grads_native = _conv_and_grads(native, x, g)
    assert y.is_contiguous()
    torch.testing.assert_close(y, y_native, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, grads_native, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    small = torch.randn(2, 3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    conv = Conv3d(3, 2, 1, bias=bias).double()
    assert torch.autograd.gradcheck(
        lambda x, w: conv._conv_forward(x, w, conv.bias), (small, conv.weight)
    )


def test_pointwise_conv_leaves_strides_autocast_and_other_devices_to_the_native_kernel():
    x = torch.randn(1, 4, 4, 4, 4)
    assert _pointwise(Conv3d(4, 2, 1), x)
    assert not _pointwise(Conv3d(4, 2, 1, stride=2), x)
    assert not _pointwise(Conv3d(4, 2, 3, padding=1), x)
    assert not _pointwise(Conv3d(4, 2, 1).double(), x)  # mixed dtypes: native error message
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _pointwise(Conv3d(4, 2, 1), x)
        y = Conv3d(4, 2, 1)(x)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("cin", "cout", "stride", "mode"),
    [(8, 8, 1, "zeros"), (8, 16, 2, "zeros"), (2, 2, 1, "replicate"), (4, 8, 2, "reflect")],
)
def test_channels_last_conv_equals_the_native_one_and_returns_the_usual_layout(
    cin, cout, stride, mode, monkeypatch
):
    torch.manual_seed(0)
    ours = Conv3d(cin, cout, 3, stride=stride, padding=1, padding_mode=mode).double()
    native = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, padding_mode=mode).double()
    native.load_state_dict(ours.state_dict())
    x = torch.randn(2, cin, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    y_native = native(x)
    g = torch.randn_like(y_native)
    layouts = []
    conv3d = F.conv3d

    def spy(inp, *args):
        layouts.append(inp.is_contiguous(memory_format=torch.channels_last_3d))
        return conv3d(inp, *args)

    monkeypatch.setattr(F, "conv3d", spy)
    y, grads = _conv_and_grads(ours, x, g)
    monkeypatch.undo()
    assert layouts == [1 < min(cin, cout) <= CPU_CHANNELS_LAST_MAX] == [True]
    _, grads_native = _conv_and_grads(native, x, g)
    assert y.is_contiguous() and grads[0].is_contiguous()
    torch.testing.assert_close(y, y_native, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, grads_native, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("cin", "cout", "stride", "mode", "edge"),
    [
        (8, 8, 1, "reflect", 32),  # an RFNet encoder's level-1 convolution at 32^3
        (1, 8, 1, "reflect", 16),
        (8, 16, 2, "zeros", 16),
        (16, 16, 1, "zeros", 8),
        (4, 4, 2, "replicate", 11),  # an odd edge: halves of 3 output planes each
    ],
)
def test_one_sample_conv_runs_as_two_depth_halves_equal_to_the_native_one(
    cin, cout, stride, mode, edge, monkeypatch
):
    """A one-sample fp32 CPU convolution that PyTorch would give its slow im2col kernel
    runs on the two overlapping depth halves as a batch of two (oneDNN's kernel)."""
    torch.manual_seed(0)
    ours = Conv3d(cin, cout, 3, stride=stride, padding=1, padding_mode=mode)
    native = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, padding_mode=mode).double()
    native.load_state_dict(ours.state_dict())
    x = torch.randn(1, cin, edge, edge + 1, edge - 1, requires_grad=True)
    xd = x.detach().double().requires_grad_()
    y_native = native(xd)
    g = torch.randn_like(y_native)
    batches = []
    conv3d = F.conv3d

    def spy(inp, *args):
        batches.append(inp.shape[0])
        return conv3d(inp, *args)

    monkeypatch.setattr(F, "conv3d", spy)
    y, grads = _conv_and_grads(ours, x, g.float())
    monkeypatch.undo()
    assert batches == [2]
    _, grads_native = _conv_and_grads(native, xd, g)
    assert y.shape == y_native.shape and y.is_contiguous()
    torch.testing.assert_close(y.double(), y_native, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_native, strict=True):  # sums over up to 32^3 fp32 terms
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_one_sample_conv_keeps_the_native_path_where_pytorch_takes_onednn():

    conv = Conv3d(8, 8, 3, padding=1)
    assert _slow_single_sample(conv, torch.randn(1, 8, 32, 32, 32), conv.padding)
    assert not _slow_single_sample(conv, torch.randn(2, 8, 32, 32, 32), conv.padding)
    assert not _slow_single_sample(conv, torch.randn(1, 8, 64, 64, 64), conv.padding)
    assert not _slow_single_sample(conv.double(), torch.randn(1, 8, 32, 32, 32).double(), (1,) * 3)
    assert not _slow_single_sample(Conv3d(8, 8, 1), torch.randn(1, 8, 8, 8, 8), (0,) * 3)
    assert not _slow_single_sample(Conv3d(8, 8, 3, stride=2), torch.randn(1, 8, 7, 8, 8), (0,) * 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _slow_single_sample(conv, torch.randn(1, 8, 32, 32, 32), conv.padding)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((2, 3, 4, 4, 4), (8, 8, 8)),
        ((1, 2, 5, 3, 1), (10, 6, 1)),  # an axis of 1 stays (MyoPS slices)
        ((1, 2, 1, 3, 4), (3, 7, 9)),  # an axis of 1 is broadcast
        ((1, 2, 6, 6, 6), (6, 11, 13)),
    ],
)
def test_upsample_equals_trilinear_interpolation_with_its_gradient(shape, size):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = upsample(x, size)
    y_native = F.interpolate(x, size=size, mode="trilinear", align_corners=True)
    assert y.dtype == x.dtype and y.shape == y_native.shape
    torch.testing.assert_close(y, y_native, rtol=1e-6, atol=1e-6)  # fp32 inside
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_native,) = torch.autograd.grad(y_native, x, g)
    torch.testing.assert_close(gx, gx_native, rtol=1e-5, atol=1e-5)


def test_upsample_keeps_a_bf16_input_bf16_and_computes_in_fp32():
    x = torch.randn(1, 2, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = upsample(x.bfloat16(), (8, 8, 8))
    assert y.dtype == torch.bfloat16
    native = F.interpolate(
        x.bfloat16().float(), size=(8, 8, 8), mode="trilinear", align_corners=True
    )
    torch.testing.assert_close(y.float(), native.bfloat16().float(), rtol=0, atol=2e-2)


@pytest.mark.parametrize("shape", [(2, 3, 6, 5, 4), (1, 8, 9, 9, 9)])
def test_split_instance_norm_equals_the_native_one_with_its_gradient(shape):
    """The CUDA form (run here on CPU) against F.instance_norm, values and gradients."""
    x = (torch.randn(*shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    torch.autograd.gradcheck(lambda t: _SplitInstanceNorm.apply(t, 1e-5), (x,))
    x32 = x.detach().float().requires_grad_()
    ref = x.detach().float().requires_grad_()
    g = torch.randn(shape)
    out = _SplitInstanceNorm.apply(x32, 1e-5)
    expected = F.instance_norm(ref, eps=1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.backward(g)
    expected.backward(g)
    torch.testing.assert_close(x32.grad, ref.grad, rtol=1e-4, atol=1e-4)


def test_split_instance_norm_keeps_a_bf16_input_bf16_with_fp32_statistics():
    x = torch.randn(1, 4, 8, 8, 8) * 5 + 100  # a large mean: bf16 statistics would fail
    out = _SplitInstanceNorm.apply(x.bfloat16(), 1e-5)
    assert out.dtype == torch.bfloat16
    expected = F.instance_norm(x.bfloat16().float(), eps=1e-5)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_instance_norm_module_keeps_the_native_path_on_cpu_and_has_no_state():
    norm = InstanceNorm3d(4)
    assert dict(norm.state_dict()) == {}
    x = torch.randn(2, 4, 5, 5, 5)
    torch.testing.assert_close(norm(x), F.instance_norm(x), rtol=0, atol=0)


def test_pointwise_conv_refuses_a_second_derivative():
    conv = Conv3d(3, 2, 1)
    x = torch.randn(1, 3, 2, 2, 2, requires_grad=True)
    (g,) = torch.autograd.grad(conv(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


@pytest.mark.parametrize("name", ["rfnet", "mmformer", "m2ftrans"])
def test_speed_up_swaps_every_plain_module_and_the_model_computes_the_same(name):
    torch.manual_seed(0)
    from tests.conftest import SMALLEST_PATCH

    size = SMALLEST_PATCH[name]
    net = build_backbone(name, patch_size=size).eval().double()  # fp64: rounding stays small
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(1, 4, size, size, size, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        expected = net.fuse(net.encode(x), mask).logits
    assert speed_up(net) is net
    kinds = {type(m) for m in net.modules()}
    assert not kinds & {nn.Conv3d, nn.InstanceNorm3d, Upsample}  # every one swapped
    assert Conv3d in kinds and FastUpsample in kinds
    assert list(net.state_dict()) == list(state)  # checkpoints unchanged
    with torch.no_grad():
        got = net.fuse(net.encode(x), mask).logits
    # (the fast upsampling computes in fp32 whatever the input's dtype)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    plain(net)
    assert Conv3d not in {type(m) for m in net.modules()}


def test_plain_upsample_is_trilinear_interpolation_with_aligned_corners():
    x = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64)
    expected = F.interpolate(x, size=(6, 8, 10), mode="trilinear", align_corners=True)
    torch.testing.assert_close(Upsample()(x, (6, 8, 10)), expected, rtol=0, atol=0)
    torch.testing.assert_close(FastUpsample()(x, (6, 8, 10)), expected, rtol=0, atol=1e-6)


def test_train_fast_kernels_switches_the_model_and_the_losses_up():
    from passion_kit.config import ExperimentConfig
    from passion_kit.engine.runs import build_model
    from passion_kit.engine.train import build_objective_from

    cfg = ExperimentConfig.preset("cpu")
    kinds = {type(m) for m in build_model(cfg, 4, 4).modules()}
    assert {Conv3d, InstanceNorm3d, FastUpsample} <= kinds
    assert type(build_objective_from(cfg, 4, 4).upsample) is FastUpsample
    plain_cfg = cfg.override(["train.fast_kernels=false"])
    kinds = {type(m) for m in build_model(plain_cfg, 4, 4).modules()}
    assert not {Conv3d, InstanceNorm3d, FastUpsample} & kinds
    assert type(build_objective_from(plain_cfg, 4, 4).upsample) is Upsample


def test_the_losses_with_the_fast_up_equal_the_plain_ones():
    from passion_kit.method import losses

    torch.manual_seed(0)
    y = F.one_hot(torch.randint(0, 4, (2, 16, 16, 16)), 4).movedim(-1, 1).float()
    deep = [torch.randn(2, 4, s, s, s, dtype=torch.float64) for s in (8, 4, 2)]
    student = [torch.randn(6, 4, s, s, s, dtype=torch.float64) for s in (16, 8, 4, 2)]
    teacher = [torch.randn(2, 4, s, s, s, dtype=torch.float64) for s in (16, 8, 4, 2)]
    fast = FastUpsample()
    torch.testing.assert_close(
        losses.deep_supervision_loss(deep, y.double(), up=fast),
        losses.deep_supervision_loss(deep, y.double()),
    )
    args = (student[0], student[1:], teacher[0], teacher[1:], 4.0)
    torch.testing.assert_close(
        losses.pixel_distillation(*args, up=fast), losses.pixel_distillation(*args)
    )
