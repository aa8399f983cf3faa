"""The CPU and GPU kernels behind :func:`passion_kit.fast.speed_up`.

Each computes what the plain PyTorch op of ``passion_kit/models/`` computes, to float
rounding (``tests/test_fast.py`` compares values and gradients), on a faster route:

- :class:`FastConv3d` (for ``nn.Conv3d``): reflect padding of width 1 with a sliced
  backward; a 1x1x1 convolution on CPU as a matrix product per sample; a one-sample fp32
  convolution that PyTorch would give its slow im2col kernel as two depth halves (a batch
  of two, oneDNN's kernel); few-channel CPU convolutions with a backward channels-last.
- :class:`FastInstanceNorm3d` (for ``nn.InstanceNorm3d``): on CUDA, the statistics as
  split reductions over the whole volume.
- :class:`FastUpsample` (for :class:`~passion_kit.models.blocks.Upsample`): trilinear
  interpolation as one matrix product per axis, in fp32.

``benchmarks/conv_time.py`` and ``benchmarks/learning_curve.py --switches`` time them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from passion_kit.models.blocks import Upsample

__all__ = [
    "CPU_CHANNELS_LAST_MAX",
    "CPU_DEPTH_HALVES",
    "FastConv3d",
    "FastInstanceNorm3d",
    "FastUpsample",
    "instance_norm",
    "upsample",
]


class _ReflectPad1(torch.autograd.Function):
    """Reflect padding of width 1 on the axes in ``axes``, with a fast backward.

    The forward is ``F.pad(..., mode="reflect")``; the backward folds the border rows
    back onto the rows they mirror with slices, several times faster on CPU than the
    native ``reflection_pad3d_backward`` (the same sums, added in another order).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        ctx.axes = axes
        pad: list[int] = []
        for axis in range(x.dim() - 1, 1, -1):  # F.pad lists the last axis first
            pad += [1, 1] if axis in axes else [0, 0]
        return F.pad(x, pad, mode="reflect")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        for axis in ctx.axes:
            n = grad.shape[axis] - 2
            inner = grad.narrow(axis, 1, n).clone()
            inner.narrow(axis, 1, 1).add_(grad.narrow(axis, 0, 1))
            inner.narrow(axis, n - 2, 1).add_(grad.narrow(axis, n + 1, 1))
            grad = inner
        return grad, None


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


class _SplitInstanceNorm(torch.autograd.Function):
    """Instance norm (no affine) from reductions over the whole volume, fp32 statistics.

    CUDA's native instance norm runs as a batch norm over (1, B*C, ...) with one thread
    block per channel, so the kit's few-channel, large-volume maps (8 channels of 80^3)
    use a few of the GPU's multiprocessors: on an H200 the norms took 38 ms of a bf16
    RFNet step at 80^3, over a third of its kernel time. ``var_mean`` splits each
    channel's reduction over many blocks. The values are the native ones to float
    rounding (tested against ``F.instance_norm``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        xf = _at_least_fp32(x)
        var, mean = torch.var_mean(xf, dim=dims, keepdim=True, correction=0)
        rstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, mean, rstd)
        return ((xf - mean) * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, mean, rstd = ctx.saved_tensors
        dims = tuple(range(2, x.dim()))
        g = _at_least_fp32(grad)
        xhat = (_at_least_fp32(x) - mean) * rstd
        mean_g = g.mean(dims, keepdim=True)
        mean_gx = (g * xhat).mean(dims, keepdim=True)
        return ((g - mean_g - xhat * mean_gx) * rstd).to(grad.dtype), None


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``F.instance_norm(x, eps=eps)`` (no affine, no running statistics), split on CUDA."""
    if x.is_cuda and x.dim() == 5:
        return _SplitInstanceNorm.apply(x, eps)
    return F.instance_norm(x, eps=eps)


class FastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (affine=False, the only form the backbones use) that computes
    with :func:`instance_norm`: the native kernels on CPU, split reductions on CUDA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine or self.track_running_stats:
            return super().forward(x)
        return instance_norm(x, self.eps)


class _PointwiseConv(torch.autograd.Function):
    """A 1x1x1 convolution (stride 1, no groups) as one matrix product per sample.

    On CPU the native kernels for a few-channel 1x1x1 convolution over a large volume
    are slow, their backward most of all (8 -> 4 channels at 80^3 for 4 samples: 36 ms
    forward and 94 ms backward, against 7 and 16 ms here, ``benchmarks/conv_time.py``).
    ``out[b] = W @ x[b] + bias`` with ``x[b]`` viewed as (C, V); the backward is two
    matrix products per sample. The values are ``F.conv3d``'s to float rounding (tested).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        b, c = x.shape[:2]
        w = weight.reshape(weight.shape[0], c)
        xv = x.reshape(b, c, -1)
        out = x.new_empty(b, w.shape[0], xv.shape[-1])
        for i in range(b):
            if bias is None:
                torch.mm(w, xv[i], out=out[i])
            else:
                torch.addmm(bias[:, None], w, xv[i], out=out[i])
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out.view(b, w.shape[0], *x.shape[2:])

    @staticmethod
    @once_differentiable  # a second derivative through it raises instead of being wrong
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        b, c = x.shape[:2]
        w = weight.reshape(weight.shape[0], c)
        xv = x.reshape(b, c, -1)
        g = grad.reshape(b, w.shape[0], -1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = x.new_empty(xv.shape)
            wt = w.t()
            for i in range(b):
                torch.mm(wt, g[i], out=grad_x[i])
            grad_x = grad_x.view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = w.new_zeros(w.shape)
            for i in range(b):
                grad_w.addmm_(g[i], xv[i].t())
            grad_w = grad_w.view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 2))
        return grad_x, grad_w, grad_b


def _pointwise(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether ``conv`` on ``x`` takes :class:`_PointwiseConv` (CPU, float, no autocast)."""
    return (
        x.device.type == "cpu"
        and x.dim() == 5
        and conv.kernel_size == (1, 1, 1)
        and conv.stride == (1, 1, 1)
        and conv.padding == (0, 0, 0)
        and conv.dilation == (1, 1, 1)
        and conv.groups == 1
        and x.dtype in (torch.float32, torch.float64)
        and x.dtype == conv.weight.dtype
        and not torch.is_autocast_enabled("cpu")
    )


# On CPU, a convolution with a backward whose smaller channel count is at most this runs
# channels-last (``benchmarks/conv_time.py``: 2.5x for 8 -> 8 channels at 80^3; with 16 or
# more channels on both sides it was no faster, so those stay NCDHW).
CPU_CHANNELS_LAST_MAX = 8


# Whether one-sample fp32 CPU convolutions run as two depth halves (see _depth_halves);
# False leaves PyTorch's own kernel choice (benchmarks/learning_curve.py --switches).
CPU_DEPTH_HALVES = True


def _slow_single_sample(conv: nn.Conv3d, x: torch.Tensor, padding) -> bool:
    """Whether PyTorch would run ``conv`` on ``x`` with its slow CPU kernel, and
    :func:`_depth_halves` can give it oneDNN's instead.

    For one fp32 sample with ``N * C * D * H <= 20480`` (8 channels of 32^3, say) and a
    kernel of at most 3 voxels a side, PyTorch picks its im2col kernel over oneDNN, whose
    backward is several times slower (``benchmarks/conv_time.py --size 32``). Two samples
    always take oneDNN.
    """
    if not (
        CPU_DEPTH_HALVES
        and x.device.type == "cpu"
        and x.dim() == 5
        and x.shape[0] == 1
        and x.dtype == torch.float32 == conv.weight.dtype
        and not torch.is_autocast_enabled("cpu")
        and conv.groups == 1
        and conv.dilation == (1, 1, 1)
        and x.shape[1] * x.shape[2] * x.shape[3] <= 20480
        and max(conv.kernel_size[1:]) <= 3
        and conv.kernel_size != (1, 1, 1)
        and not isinstance(padding, str)
    ):
        return False
    depth = x.shape[2] + 2 * padding[0]
    out = (depth - conv.kernel_size[0]) // conv.stride[0] + 1
    return out >= 2 and out % 2 == 0


def _depth_halves(
    x: torch.Tensor, kernel: int, stride: int, conv: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``conv(x)`` for an unpadded 1-sample ``x``, as one call on its two depth halves.

    The halves overlap by what the kernel needs beyond them, so the output is the
    same convolution, the same values in a two-sample batch (which PyTorch runs with
    oneDNN on CPU).
    """
    half = ((x.shape[2] - kernel) // stride + 1) // 2
    length = (half - 1) * stride + kernel
    halves = torch.cat((x[:, :, :length], x[:, :, half * stride : half * stride + length]))
    y = conv(halves)  # (2, C', half, H', W')
    return y.transpose(0, 1).reshape(1, y.shape[1], 2 * half, *y.shape[3:])


class FastConv3d(nn.Conv3d):
    """``nn.Conv3d`` with faster CPU paths, the same values to float rounding.

    - Reflect padding of width 1 has a fast backward (:class:`_ReflectPad1`).
    - A 1x1x1 convolution on CPU is a matrix product per sample (:class:`_PointwiseConv`).
    - A one-sample fp32 convolution that PyTorch would give its slow im2col kernel runs on
      its two depth halves as a batch of two (:func:`_depth_halves`, oneDNN's kernel).
    - On CPU, a convolution with a backward and at most ``CPU_CHANNELS_LAST_MAX`` channels
      on one side runs channels-last and returns the usual layout.

    The parameters and their names are ``nn.Conv3d``'s, so checkpoints are unchanged.
    """

    def _conv_forward(self, x, weight, bias):
        if _pointwise(self, x):
            return _PointwiseConv.apply(x, weight, bias)
        padding = self.padding
        if self.padding_mode != "zeros":
            pads = self._reversed_padding_repeated_twice  # (last axis left, right, ...)
            axes = tuple(2 + i for i, p in enumerate(reversed(pads[::2])) if p == 1)
            fast = self.padding_mode == "reflect" and set(pads) <= {0, 1} and x.dim() == 5
            if fast and axes and all(x.shape[a] >= 3 for a in axes):
                x = _ReflectPad1.apply(x, axes)
            elif any(pads):
                x = F.pad(x, pads, mode=self.padding_mode)
            padding = (0, 0, 0)
        if _slow_single_sample(self, x, padding):
            if any(padding):
                p = [q for q in reversed(padding) for _ in range(2)]
                x, padding = F.pad(x, p), (0, 0, 0)
            k, s = self.kernel_size[0], self.stride[0]
            return _depth_halves(x, k, s, lambda xs: self._conv_cpu(xs, weight, bias, padding))
        return self._conv_cpu(x, weight, bias, padding)

    def _conv_cpu(self, x, weight, bias, padding):
        if (
            x.device.type == "cpu"
            and x.dim() == 5
            and self.groups == 1
            and 1 < min(self.in_channels, self.out_channels) <= CPU_CHANNELS_LAST_MAX
            and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad)
        ):
            # oneDNN's few-channel 3-D backward kernels are several times faster
            # channels-last; the layout is converted back after. Without a backward
            # (inference) the conversions cost more than they save.
            cl = torch.channels_last_3d
            x = x.contiguous(memory_format=cl)
            weight = weight.contiguous(memory_format=cl)
            y = F.conv3d(x, weight, bias, self.stride, padding, self.dilation, self.groups)
            return y.contiguous()
        return F.conv3d(x, weight, bias, self.stride, padding, self.dilation, self.groups)


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear interpolation with ``align_corners=True`` (as in the official code).

    Trilinear interpolation is separable: it is computed as a matrix product along each
    axis, in fp32 whatever the autocast dtype, and returned in ``x``'s dtype. The values
    are ``F.interpolate``'s to float rounding (tested); forward and backward are about
    5 times faster on CPU than the native kernels.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if x.dim() != 5:
        return F.interpolate(x, size=size, mode="trilinear", align_corners=True)
    with torch.autocast(x.device.type, enabled=False):
        y = x.float()
        b, c = y.shape[:2]
        for axis, n_out in zip((4, 3, 2), reversed(size), strict=True):
            n_in = y.shape[axis]
            if n_in == n_out:
                continue
            a = _interpolation_matrix(n_in, n_out, y.device)  # (n_out, n_in)
            moved = y.movedim(axis, -1)
            y = torch.matmul(moved, a.t()).movedim(-1, axis)
        return y.to(x.dtype).contiguous()


_MATRICES: dict[tuple[int, int, str], torch.Tensor] = {}


def _interpolation_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with ``align_corners=True``."""
    key = (n_in, n_out, str(device))
    if key not in _MATRICES:
        a = torch.zeros(n_out, n_in, dtype=torch.float64)
        if n_in == 1 or n_out == 1:
            a[:, 0] = 1.0
        else:
            pos = torch.arange(n_out, dtype=torch.float64) * (n_in - 1) / (n_out - 1)
            lo = pos.floor().long().clamp(max=n_in - 2)
            frac = pos - lo
            rows = torch.arange(n_out)
            a[rows, lo] = 1.0 - frac
            a[rows, lo + 1] += frac
        _MATRICES[key] = a.float().to(device)
    return _MATRICES[key]


class FastUpsample(Upsample):
    """:class:`~passion_kit.models.blocks.Upsample` computed by :func:`upsample`."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return upsample(x, size)
