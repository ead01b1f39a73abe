"""Normalisations computed from the activation itself: layer, instance, group, LRN, MVN.

Written out from means and variances rather than with ``F.*_norm`` because ONNX lets scale and
bias merely broadcast, computes low-precision inputs in ``stash_type`` precision and exposes the
statistics as outputs; every path stays differentiable (QAT trains through them).
"""

import torch
from torch import Tensor

from qaas_engine.graph.dtypes import TORCH_DTYPES
from qaas_engine.graph.ops_tensor import norm_axis
from qaas_engine.graph.registry import Inputs, NodeContext, register

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _stash(ctx: NodeContext, x: Tensor) -> Tensor:
    """float16/bfloat16 inputs are normalised in ``stash_type`` (float32 by default)."""
    if x.dtype in _LOW_PRECISION:
        return x.to(TORCH_DTYPES.get(int(ctx.attrs.get("stash_type", 1)), torch.float32))
    return x


def _normalise(x: Tensor, dims: tuple[int, ...], epsilon: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x - mean) / sqrt(var + eps), the mean, and 1 / sqrt(var + eps), over ``dims``."""
    mean = x.mean(dims, keepdim=True)
    centered = x - mean
    inv_std = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + epsilon)
    return centered * inv_std, mean, inv_std


@register("LayerNormalization")
def layer_norm(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Outputs Mean and InvStdDev keep the normalised axes as ones, in the stash precision."""
    x, scale, bias = inputs[0], inputs[1], inputs.optional(2)
    dims = tuple(range(norm_axis(ctx.attrs.get("axis", -1), x.dim()), x.dim()))
    normalised, mean, inv_std = _normalise(_stash(ctx, x), dims, ctx.attrs.get("epsilon", 1e-5))
    y = normalised.to(x.dtype) * scale
    y = y if bias is None else y + bias
    stats_type = TORCH_DTYPES.get(int(ctx.attrs.get("stash_type", 1)), torch.float32)
    return [y, mean.to(stats_type), inv_std.to(stats_type)][: max(ctx.num_outputs, 1)]


def _channel_view(t: Tensor, rank: int) -> Tensor:
    return t.reshape((1, -1) + (1,) * (rank - 2))


@register("InstanceNormalization")
def instance_norm(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    x, scale, bias = inputs[:3]
    dims = tuple(range(2, x.dim()))
    y, _, _ = _normalise(x, dims, ctx.attrs.get("epsilon", 1e-5))
    return [y * _channel_view(scale, x.dim()) + _channel_view(bias, x.dim())]


@register("GroupNormalization")
def group_norm(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Opset 18 gives scale/bias per group, opset 21 per channel: the element count tells."""
    x, scale, bias = inputs[:3]
    groups = int(ctx.attrs["num_groups"])
    n, c = x.shape[:2]
    grouped = _stash(ctx, x).reshape(n, groups, -1)
    y, _, _ = _normalise(grouped, (2,), ctx.attrs.get("epsilon", 1e-5))
    if scale.numel() == c:
        y = y.reshape(x.shape).to(x.dtype)
        return [y * _channel_view(scale, x.dim()) + _channel_view(bias, x.dim())]
    y = y.to(x.dtype) * scale.reshape(1, groups, 1) + bias.reshape(1, groups, 1)
    return [y.reshape(x.shape)]


@register("LRN")
def lrn(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Each channel divided by a power of the sum of squares over a window of neighbouring
    channels, ``floor((size-1)/2)`` before and ``ceil((size-1)/2)`` after it."""
    x = inputs[0]
    size = int(ctx.attrs["size"])
    alpha, beta = ctx.attrs.get("alpha", 1e-4), ctx.attrs.get("beta", 0.75)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    square = x * x
    pad_shape = list(x.shape)
    padded = torch.cat(
        [
            square.new_zeros([*pad_shape[:1], before, *pad_shape[2:]]),
            square,
            square.new_zeros([*pad_shape[:1], after, *pad_shape[2:]]),
        ],
        dim=1,
    )
    channels = x.shape[1]
    window = sum(padded[:, i : i + channels] for i in range(size))
    return [x / (ctx.attrs.get("bias", 1.0) + alpha / size * window) ** beta]


@register("MeanVarianceNormalization")
def mean_variance_norm(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """As the op's function body: (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)."""
    x = inputs[0]
    dims = tuple(norm_axis(a, x.dim()) for a in ctx.attrs.get("axes", [0, 2, 3]))
    mean = x.mean(dims, keepdim=True)
    variance = (x * x).mean(dims, keepdim=True) - mean * mean
    return [(x - mean) / (variance.sqrt() + 1e-9)]


@register("RMSNormalization")
def rms_norm(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """x / sqrt(mean(x^2) + eps) over the axes from ``axis`` on, times scale."""
    x, scale = inputs[0], inputs[1]
    dims = tuple(range(norm_axis(ctx.attrs.get("axis", -1), x.dim()), x.dim()))
    xs = _stash(ctx, x)
    inv_rms = torch.rsqrt((xs * xs).mean(dims, keepdim=True) + ctx.attrs.get("epsilon", 1e-5))
    return [(xs * inv_rms).to(x.dtype) * scale]
