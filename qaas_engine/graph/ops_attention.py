"""ONNX ``Attention`` and ``RotaryEmbedding`` (opset 23+) in torch: what the dynamo exporter
emits for ``scaled_dot_product_attention`` and rotary position embeddings at those opsets.

Follows the op's function body step by step (Q and K each scaled by sqrt(scale), softcap before
the mask, a fully masked row gives zeros, not NaN) so the values match ONNX's; grouped-query
heads, KV caches, boolean or additive masks shorter than the keys, causal masks offset by the
cache, and the four ``qk_matmul_output`` modes are covered. Sliding windows and
``nonpad_kv_seqlen`` are declined, which sends such a node to the reference fallback.
"""

import math

import torch
from torch import Tensor

from qaas_engine.graph.dtypes import TORCH_DTYPES
from qaas_engine.graph.registry import Inputs, NodeContext, register

_HALF = (torch.float16, torch.bfloat16)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    batch, seq, hidden = x.shape
    return x.reshape(batch, seq, heads, hidden // heads).transpose(1, 2)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True attends) as 0 / -inf; an additive mask as it is."""
    if mask.dtype != torch.bool:
        return mask
    zero, minus_inf = torch.zeros((), dtype=dtype), torch.full((), -math.inf, dtype=dtype)
    return torch.where(mask, zero, minus_inf)


def _bias(
    ctx: NodeContext, mask: Tensor | None, dtype: torch.dtype, shape: tuple, past: int
) -> Tensor:
    """The additive bias over (query, key) positions: the mask padded to every key (padding
    masked), plus the causal frontier ``key <= query + past`` when ``is_causal``."""
    queries, keys = shape
    bias = torch.zeros(queries, keys, dtype=dtype)
    if mask is not None:
        missing = keys - mask.shape[-1]
        if missing > 0:
            pad_shape = (*mask.shape[:-1], missing)
            if mask.dtype == torch.bool:
                pad = torch.zeros(pad_shape, dtype=torch.bool)
            else:
                pad = torch.full(pad_shape, -math.inf, dtype=mask.dtype)
            mask = torch.cat([mask, pad], dim=-1)
        bias = bias + _additive(mask, dtype)
    if ctx.attrs.get("is_causal", 0):
        allowed = torch.arange(keys).unsqueeze(0) <= torch.arange(queries).unsqueeze(1) + past
        bias = bias + _additive(allowed, dtype)
    return bias


def _safe_softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis whose all -inf rows give zeros; half precision rounds after
    each step, as the function body computes it."""
    top = x.amax(-1, keepdim=True)
    exps = torch.exp(x - torch.where(torch.isneginf(top), torch.zeros_like(top), top))
    total = exps.sum(-1, keepdim=True)
    return exps / torch.where(total == 0, torch.ones_like(total), total)


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype in _HALF:
        return torch.matmul(a.float(), b.float()).to(a.dtype)
    return torch.matmul(a, b)


@register("Attention")
def attention(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    q, k, v = inputs[:3]
    mask, past_key, past_value = inputs.optional(3), inputs.optional(4), inputs.optional(5)
    attrs = ctx.attrs
    windowed = attrs.get("left_window_size", -1) >= 0 or attrs.get("right_window_size", -1) >= 0
    if inputs.optional(6) is not None or windowed:
        raise ctx.unsupported("nonpad_kv_seqlen or a sliding window")
    three_d = q.dim() == 3
    if three_d:
        q = _split_heads(q, int(attrs["q_num_heads"]))
        k, v = (_split_heads(t, int(attrs["kv_num_heads"])) for t in (k, v))
    scale = attrs.get("scale")
    root = torch.tensor(math.sqrt(1 / math.sqrt(q.shape[-1]) if scale is None else scale))
    root = root.to(q.dtype)
    present_key = k if past_key is None else torch.cat([past_key, k], dim=2)
    present_value = v if past_value is None else torch.cat([past_value, v], dim=2)
    past = 0 if past_key is None else past_key.shape[2]
    bias = _bias(ctx, mask, q.dtype, (q.shape[2], present_key.shape[2]), past)
    keys, values = present_key, present_value
    if q.shape[1] != keys.shape[1] and q.shape[1] % keys.shape[1] == 0:
        groups = q.shape[1] // keys.shape[1]  # grouped-query attention: each KV head serves
        keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    scores = _matmul(q * root, (keys * root).transpose(-1, -2))
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    biased = scores + bias
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    exposed = biased if mode == 2 else scores
    precision = attrs.get("softmax_precision")
    logits = biased.to(TORCH_DTYPES[precision]) if precision else biased
    probs = _safe_softmax(logits)
    blocked = torch.isneginf(bias.amax(-1, keepdim=True))
    probs = torch.where(blocked, torch.zeros_like(probs), probs)
    exposed = probs if mode == 3 else exposed
    y = _matmul(probs.to(q.dtype), values)
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    outputs = [y, present_key, present_value, exposed.to(q.dtype)]
    return outputs[: max(ctx.num_outputs, 1)]


@register("RotaryEmbedding")
def rotary_embedding(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    """Rotates the first ``rotary_embedding_dim`` features of each head by the cached angles
    of its position: pairs are adjacent features (``interleaved``) or the two halves."""
    x, cos, sin, positions = inputs[0], inputs[1], inputs[2], inputs.optional(3)
    if x.dim() == 4:  # (batch, heads, seq, size) -> (batch, seq, heads, size)
        heads_last = x.transpose(1, 2)
    else:
        batch, seq, hidden = x.shape
        heads = int(ctx.attrs["num_heads"])
        heads_last = x.reshape(batch, seq, heads, hidden // heads)
    size = heads_last.shape[-1]
    rotated_size = int(ctx.attrs.get("rotary_embedding_dim", 0)) or size
    if positions is not None:
        cos, sin = cos[positions.long()], sin[positions.long()]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # one angle per (batch, seq), every head
    rotate, keep = heads_last[..., :rotated_size], heads_last[..., rotated_size:]
    interleaved = bool(ctx.attrs.get("interleaved", 0))
    if interleaved:
        first, second = rotate[..., 0::2], rotate[..., 1::2]
    else:
        first, second = rotate.chunk(2, dim=-1)
    real, imag = cos * first - sin * second, sin * first + cos * second
    if interleaved:
        rotate = torch.stack([real, imag], dim=-1).reshape(rotate.shape)
    else:
        rotate = torch.cat([real, imag], dim=-1)
    out = torch.cat([rotate, keep], dim=-1)
    return [out.transpose(1, 2) if x.dim() == 4 else out.reshape(x.shape)]
