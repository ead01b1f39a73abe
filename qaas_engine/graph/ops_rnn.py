"""RNN, GRU and LSTM in torch: the recurrences written out step by step, so that gradients reach
the weights and everything upstream (QAT through a recurrent model).

Both directions, ``layout``, ``sequence_lens`` (a sequence stops updating after its length and
emits zeros), ``clip``, GRU's ``linear_before_reset`` and LSTM's peepholes follow the spec. Other
activation functions than the defaults take their alpha/beta from the node and are declined
(sending the node to the reference fallback) when they need ones we do not read, as is LSTM's
``input_forget``.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from qaas_engine.graph.registry import Inputs, NodeContext, register

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Relu": torch.relu,
    "Softsign": F.softsign,
    "Softplus": F.softplus,
}
_DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _activations(ctx: NodeContext, directions: int) -> list[list[Callable[[Tensor], Tensor]]]:
    """Per direction, the op's activation functions in the spec's order."""
    if ctx.attrs.get("activation_alpha") or ctx.attrs.get("activation_beta"):
        raise ctx.unsupported("attributes activation_alpha/activation_beta")
    names = ctx.attrs.get("activations") or _DEFAULTS[ctx.op_type] * directions
    per = len(_DEFAULTS[ctx.op_type])
    unknown = [n for n in names if n not in _ACTIVATIONS]
    if unknown:
        raise ctx.unsupported(f"activation {unknown[0]}")
    if len(names) == per:
        names = names * directions
    return [[_ACTIVATIONS[n] for n in names[d * per : (d + 1) * per]] for d in range(directions)]


def _time_reversal(lengths: Tensor, steps: int) -> Tensor:
    """Per (step, batch) the step to read for the reverse direction: each sequence reversed
    within its own length, padding left in place (the map is its own inverse)."""
    t = torch.arange(steps).unsqueeze(1)
    return torch.where(t < lengths, lengths - 1 - t, t)


def _run_direction(
    ctx: NodeContext, x: Tensor, weights: tuple, state: tuple, lengths: Tensor, acts: list
) -> tuple[Tensor, tuple]:
    """Steps over x (seq, batch, input) with one direction's weights; returns the outputs
    (seq, batch, hidden) and the final state (h, or h and c for LSTM)."""
    w, r, b, p = weights
    clip = ctx.attrs.get("clip")
    inputs = torch.matmul(x, w.t()) + b[: w.shape[0]]
    recurrent_bias = b[w.shape[0] :]
    outputs = []
    for step in range(x.shape[0]):
        new_state = _cell(ctx, inputs[step], state, (r, recurrent_bias, p), acts, clip)
        valid = (step < lengths).unsqueeze(1)
        state = tuple(torch.where(valid, n, o) for n, o in zip(new_state, state, strict=True))
        outputs.append(torch.where(valid, new_state[0], torch.zeros_like(new_state[0])))
    return torch.stack(outputs), state


def _cell(
    ctx: NodeContext, xw: Tensor, state: tuple, rec: tuple, acts: list, clip: float | None
) -> tuple:
    r, rb, p = rec
    h = state[0]
    hidden = h.shape[1]

    def gate(pre: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        return fn(pre.clamp(-clip, clip) if clip is not None else pre)

    if ctx.op_type == "RNN":
        return (gate(xw + torch.matmul(h, r.t()) + rb, acts[0]),)
    if ctx.op_type == "GRU":
        xz, xr, xh = xw.split(hidden, dim=1)
        rz, rr, rh = r.split(hidden, dim=0)
        bz, br, bh = rb.split(hidden)
        z = gate(xz + torch.matmul(h, rz.t()) + bz, acts[0])
        reset = gate(xr + torch.matmul(h, rr.t()) + br, acts[0])
        if ctx.attrs.get("linear_before_reset", 0):
            candidate = gate(xh + reset * (torch.matmul(h, rh.t()) + bh), acts[1])
        else:
            candidate = gate(xh + torch.matmul(reset * h, rh.t()) + bh, acts[1])
        return ((1 - z) * candidate + z * h,)
    c = state[1]
    pre = xw + torch.matmul(h, r.t()) + rb
    pi, po, pf, pc = pre.split(hidden, dim=1)
    peep_i, peep_o, peep_f = p.split(hidden) if p is not None else (0, 0, 0)
    i = gate(pi + peep_i * c, acts[0])
    f = gate(pf + peep_f * c, acts[0])
    c_new = f * c + i * gate(pc, acts[1])
    o = gate(po + peep_o * c_new, acts[0])
    return (o * acts[2](c_new), c_new)


@register("RNN", "GRU", "LSTM")
def recurrent(ctx: NodeContext, inputs: Inputs) -> list[Tensor]:
    if ctx.op_type == "LSTM" and ctx.attrs.get("input_forget", 0):
        raise ctx.unsupported("attribute input_forget=1")
    batch_first = bool(ctx.attrs.get("layout", 0))
    x, w, r = inputs[0], inputs[1], inputs[2]
    x = x.transpose(0, 1) if batch_first else x
    steps, batch = x.shape[:2]
    directions, gates_hidden = w.shape[0], w.shape[1]
    hidden = gates_hidden // _GATES[ctx.op_type]
    bias = inputs.optional(3)
    bias = torch.zeros(directions, 2 * gates_hidden, dtype=x.dtype) if bias is None else bias
    lengths = inputs.optional(4)
    lengths = torch.full((batch,), steps) if lengths is None else lengths.long()
    given = [inputs.optional(5)] + ([inputs.optional(6)] if ctx.op_type == "LSTM" else [])
    initial = [
        torch.zeros(directions, batch, hidden, dtype=x.dtype)
        if s is None
        else (s.transpose(0, 1) if batch_first else s)
        for s in given
    ]
    peepholes = inputs.optional(7) if ctx.op_type == "LSTM" else None
    acts = _activations(ctx, directions)
    reverse_first = ctx.attrs.get("direction", "forward") == "reverse"
    ys, finals = [], []
    for d in range(directions):
        reverse = reverse_first or d == 1
        order = _time_reversal(lengths, steps) if reverse else None
        xs = x if order is None else x.gather(0, order.unsqueeze(2).expand_as(x))
        weights = (w[d], r[d], bias[d], None if peepholes is None else peepholes[d])
        y, state = _run_direction(ctx, xs, weights, tuple(s[d] for s in initial), lengths, acts[d])
        if order is not None:
            y = y.gather(0, order.unsqueeze(2).expand_as(y))
        ys.append(y)
        finals.append(state)
    y = torch.stack(ys, dim=1)  # (seq, directions, batch, hidden)
    states = [torch.stack([f[i] for f in finals]) for i in range(len(finals[0]))]
    if batch_first:
        y = y.permute(2, 0, 1, 3)
        states = [s.transpose(0, 1) for s in states]
    return [y, *states][: max(ctx.num_outputs, 1)]
