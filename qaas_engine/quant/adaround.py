"""AdaRound (Nagel et al. 2020): learn whether each weight rounds up or down, layer by layer.

Per layer: ``W~ = s * (clamp(floor(W/s) + h(V) + o, qmin, qmax) - o)`` with the rectified sigmoid
``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, minimising the reconstruction error
of the layer's output (through its fused activation) plus ``lambda * sum(1 - |2h - 1|^beta)``,
beta annealed 20 -> 2 after a warm start. The layer's inputs come from the already-quantized
preceding layers; its target is the float model's output. Afterwards the float weight is replaced
by ``W~``, which lies on the grid, so the simulation and the export reproduce the learned
rounding without any other change.

Speed comes from the algorithm, not only the machine. A layer's problem is small, so a step costs
the dispatch of tensor ops more than arithmetic, and autograd and ``torch.optim`` add more ops and
Python than the maths needs. So the step is written out: the layer's forward and its weight
gradient straight from torch's kernels (``torch.nn.grad`` for convolutions; one matrix product
each way for Gemm, MatMul and pointwise convolutions, whose cached inputs are laid out as rows
once), then the chain through ``h(V)`` and the regulariser and Adam in a dozen in-place
elementwise ops. Other weighted ops (ConvTranspose, asymmetric pads...) take the weight gradient
of the executor's own op by autograd, with the same chain after it. Each hand-written form is
checked against the executor's op on the layer's own data before it is used. Beta reaches
beta_end before the budget is spent, so the hard decisions settle and the layer stops early.
Cached inputs stay compact (no im2col) and are capped per layer: no model's activations are ever
cached all at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn import grad as conv_grad

from qaas_engine.errors import Cancelled
from qaas_engine.graph.registry import tensor_outputs
from qaas_engine.quant.sim import QuantSim

ZETA, GAMMA = 1.1, -0.1
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
Feeds = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AdaRoundConfig:
    iterations: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-2
    regularization: float = 0.01  # lambda
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_start: float = 0.2  # fraction of iterations without the rounding regulariser
    # Beta reaches beta_end at this fraction of the iterations and stays there: the rounding then
    # settles and the layer stops (about 85% of 500 iterations, 73% of 1,000 used), at the same
    # accuracy within noise; at 1.0 decisions keep flipping until the last few percent.
    anneal_end: float = 0.7
    check_every: int = 25
    settled_checks: int = 4  # consecutive checks with no flipped decision, and
    undecided_fraction: float = 0.02  # at most this share of h(V) still between 0.01 and 0.99
    threads: int = 1  # per-layer problems are small: one thread beats two (no sync, no contention)
    max_cache_bytes: int = 256 * 2**20
    seed: int = 0


def _initial_v(rest: torch.Tensor) -> torch.Tensor:
    """V with h(V) equal to the fractional part, so optimisation starts at the float weight."""
    ratio = (rest - GAMMA) / (ZETA - GAMMA)
    ratio = ratio.clamp(1e-4, 1 - 1e-4)
    return torch.log(ratio / (1 - ratio))


class _Layer:
    """One weighted node with its fused activation, able to recompute its output."""

    def __init__(self, sim: QuantSim, index: int) -> None:
        sim.torch_executor()
        node = sim.executor.nodes[index]
        self.node = node
        self.weight = (
            node.inputs[1]
            if node.op_type != "MatMul" or node.inputs[1] in (sim.weight_encodings)
            else node.inputs[0]
        )
        self.input = node.inputs[0] if self.weight == node.inputs[1] else node.inputs[1]
        self.output = node.outputs[0]
        self.activation = None
        fused_into = sim.placement.fused.get(self.output)
        if fused_into is not None:
            self.activation = next(
                (
                    n
                    for n in sim.executor.nodes
                    if (n.name == fused_into or n.outputs[0] == fused_into)
                    and n.op_type in ("Relu", "Clip")
                ),
                None,
            )
        # What the float model computes here: the fused activation's output, when there is one.
        self.target = self.output if self.activation is None else self.activation.outputs[0]
        self.constants = [n for n in node.inputs if n and n not in (self.weight, self.input)]
        if self.activation is not None:
            self.constants += [n for n in self.activation.inputs[1:] if n]

    def activate(self, out: torch.Tensor, params: Feeds) -> torch.Tensor:
        if self.activation is None:
            return out
        args = [out] + [params[n] if n else None for n in self.activation.inputs[1:]]
        return tensor_outputs(self.activation.context, args)[0]

    def forward(self, x: torch.Tensor, weight: torch.Tensor, params: Feeds) -> torch.Tensor:
        args: list[torch.Tensor | None] = []
        for name in self.node.inputs:
            if name == self.weight:
                args.append(weight)
            elif name == self.input:
                args.append(x)
            else:
                args.append(params[name] if name else None)
        return self.activate(tensor_outputs(self.node.context, args)[0], params)


class _Form:
    """A layer's problem in the layout its gradient is cheapest in.

    ``x`` and ``y`` hold the cached inputs and float targets in that layout, ``to_matrix`` gives
    the weight in it; ``gradient`` is d(0.5 * sum((a - y)^2))/dM on a mini-batch, so the caller
    scales it once, on the small weight-sized tensor, instead of on every output.
    """

    kind: str  # for the report: "conv", "dense" or "autograd"

    def __init__(self, layer: _Layer, x: torch.Tensor, y: torch.Tensor, params: Feeds, shape):
        self.layer, self.params, self.shape = layer, params, shape
        self.x, self.y = self.layout(x), self.layout(y)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        return m

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def weight_gradient(self, x: torch.Tensor, grad: torch.Tensor, m: torch.Tensor):
        raise NotImplementedError

    def error(self, m: torch.Tensor) -> float:
        """Mean squared error over all cached samples."""
        return float(torch.mean((self.forward(self.x, m)[1] - self.y) ** 2))

    def gradient(self, m: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        x = self.x.index_select(0, pick)
        z, a = self.forward(x, m)
        grad = a - self.y.index_select(0, pick)
        activation = self.layer.activation
        if activation is not None:  # the activation passes the gradient where it is identity
            if activation.op_type == "Relu":
                grad = torch.ops.aten.threshold_backward(grad, a, 0)
            else:
                grad.mul_(a == z)
        return self.weight_gradient(x, grad, m)


class _ConvForm(_Form):
    """Conv 1-D to 3-D (any groups) with symmetric pads: torch's kernels, the weight gradient
    straight from ``torch.nn.grad`` (no autograd graph per step)."""

    kind = "conv"

    def __init__(self, layer: _Layer, x: torch.Tensor, y: torch.Tensor, params: Feeds, shape):
        attrs, spatial = layer.node.context.attrs, len(shape) - 2
        pads = list(attrs.get("pads", [0] * 2 * spatial))
        if layer.node.op_type != "Conv" or not 1 <= spatial <= 3:
            raise ValueError("not a plain convolution")
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or (
            pads[:spatial] != pads[spatial:]
        ):
            raise ValueError("asymmetric or automatic pads")
        super().__init__(layer, x, y, params, shape)
        inputs = layer.node.inputs
        self.bias = params.get(inputs[2]) if len(inputs) > 2 and inputs[2] else None
        self.geometry: dict[str, Any] = {
            "stride": list(attrs.get("strides", [1] * spatial)),
            "padding": pads[:spatial],
            "dilation": list(attrs.get("dilations", [1] * spatial)),
            "groups": int(attrs.get("group", 1)),
        }
        self.conv: Callable[..., torch.Tensor] = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
        self.conv_weight = (
            conv_grad.conv1d_weight,
            conv_grad.conv2d_weight,
            conv_grad.conv3d_weight,
        )[spatial - 1]
        # A depthwise kernel larger than its input (3x3 over the 2x2 maps at the end of a small
        # CNN) sends torch's weight gradient down a slow path: 2.6x the time of the same sum
        # written as one grouped convolution of the inputs by the output gradients (measured on
        # 32 x 128 x 2 x 2, one thread). Elsewhere torch's own kernel is the faster one.
        self.small_depthwise = (
            self.geometry["groups"] == shape[0] == self.x.shape[1]
            and shape[1] == 1
            and all(d == 1 for d in self.geometry["dilation"])
            and any(k > n for k, n in zip(shape[2:], self.x.shape[2:], strict=True))
        )

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.conv(x, m, self.bias, **self.geometry)
        return z, self.layer.activate(z, self.params)

    def weight_gradient(self, x: torch.Tensor, grad: torch.Tensor, m: torch.Tensor):
        if self.small_depthwise:
            return self._depthwise_weight_gradient(x, grad)
        return self.conv_weight(x, self.shape, grad, **self.geometry)

    def _depthwise_weight_gradient(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """dW[c] = sum over samples of x[:, c] correlated with grad[:, c]: channels become groups,
        samples the summed input channels; the forward stride becomes the dilation."""
        n, c = x.shape[:2]
        inputs = x.transpose(0, 1).reshape(1, c * n, *x.shape[2:])
        kernels = grad.transpose(0, 1).contiguous()  # (c, n, *output): group c, n inputs each
        out = self.conv(
            inputs,
            kernels,
            None,
            stride=1,
            padding=self.geometry["padding"],
            dilation=self.geometry["stride"],
            groups=c,
        )
        out = out[0]
        for dim, k in enumerate(self.shape[2:], start=1):
            out = out.narrow(dim, 0, k)  # the output can run past the kernel when strided
        return out.unsqueeze(1).contiguous()


class _DenseForm(_Form):
    """Gemm (``transA=0``, unit alpha and beta), MatMul by a constant right-hand weight, and
    pointwise Conv (1x1, stride 1, no pads, one group): rows of the input, one per sample and
    position, times the weight as a (K, N) matrix; its gradient is one more product."""

    kind = "dense"

    def __init__(self, layer: _Layer, x: torch.Tensor, y: torch.Tensor, params: Feeds, shape):
        node, attrs = layer.node, layer.node.context.attrs
        self.pointwise = node.op_type == "Conv" and all(k == 1 for k in shape[2:])
        if self.pointwise:
            if (
                int(attrs.get("group", 1)) != 1
                or any(p != 0 for p in attrs.get("pads", []))
                or any(s != 1 for s in attrs.get("strides", []))
                or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")
            ):
                raise ValueError("not a pointwise convolution")
            self.transposed, outputs = True, shape[0]
        elif node.op_type == "Gemm" and len(shape) == 2:
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
                raise ValueError("transposed or scaled Gemm")
            if attrs.get("beta", 1.0) != 1.0:
                raise ValueError("scaled Gemm bias")
            self.transposed = bool(attrs.get("transB", 0))
            outputs = shape[0] if self.transposed else shape[1]
        elif node.op_type == "MatMul" and layer.weight == node.inputs[1] and len(shape) == 2:
            self.transposed, outputs = False, shape[1]
        else:
            raise ValueError(f"no dense form for {node.op_type}")
        super().__init__(layer, x, y, params, shape)
        bias = params.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        self.bias = None if bias is None else bias.reshape(1, outputs)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        """(samples, rows per sample, features): channels last for a convolution."""
        if self.pointwise:
            return t.flatten(2).transpose(1, 2).contiguous()
        return t.reshape(t.shape[0], -1, t.shape[-1])

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        w = w.reshape(w.shape[0], -1)
        return w.t().contiguous() if self.transposed else w

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        return (m.t() if self.transposed else m).reshape(self.shape)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x.reshape(-1, m.shape[0])
        z = rows @ m if self.bias is None else torch.addmm(self.bias, rows, m)
        z = z.view(*x.shape[:-1], m.shape[1])
        return z, self.layer.activate(z, self.params)

    def weight_gradient(self, x: torch.Tensor, grad: torch.Tensor, m: torch.Tensor):
        return x.reshape(-1, m.shape[0]).t() @ grad.reshape(-1, m.shape[1])


class _GenericForm(_Form):
    """Any other weighted op: the executor's own op, its weight gradient by autograd."""

    kind = "autograd"

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return m, self.layer.forward(x, m, self.params)

    def gradient(self, m: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            w = m.detach().requires_grad_(True)
            out = self.layer.forward(self.x.index_select(0, pick), w, self.params)
            (0.5 * torch.sum((out - self.y.index_select(0, pick)) ** 2)).backward()
        if w.grad is None:
            raise RuntimeError("the reconstruction loss does not reach the weight")
        return w.grad


def _collect(sim, layer, batches, float_weights, max_bytes, device):
    """Quantized-model inputs and float-model outputs of one layer, capped in size."""
    inputs, targets, size = [], [], 0
    with torch.no_grad():
        for feeds in batches():
            x = sim.run(feeds, outputs=[layer.input])[layer.input]
            y = sim.executor.run(feeds, weights=float_weights, outputs=[layer.target])
            y = y[layer.target]
            inputs.append(x.to(device))
            targets.append(y.to(device))
            size += x.numel() * x.element_size() + y.numel() * y.element_size()
            if size >= max_bytes:
                break
    return torch.cat(inputs), torch.cat(targets)


def adaround(
    sim: QuantSim,
    batches: Callable[[], Iterable[Feeds]],
    config: AdaRoundConfig = AdaRoundConfig(),
    progress: Callable[[str, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    float_weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Learn the rounding of every quantized weight, in graph order; returns per-layer data.

    ``float_weights`` is the float reference (defaults to the weights as they are now).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sim.torch_executor()
    float_weights = dict(float_weights or sim.executor.weights)
    indices = [
        i
        for i, node in enumerate(sim.executor.nodes)
        if node.op_type in WEIGHTED_OPS
        and any(name in sim.weight_encodings for name in node.inputs[:2])
    ]
    rows = []
    generator = torch.Generator().manual_seed(config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads if device.type == "cpu" else threads)
    try:
        with torch.no_grad(), _without_tf32():
            for done, index in enumerate(indices):
                rows.append(
                    _adaround_layer(
                        sim, index, batches, config, float_weights, device, generator, should_stop
                    )
                )
                if progress:
                    progress("adaround", (done + 1) / len(indices))
    finally:
        torch.set_num_threads(threads)
    return {"layers": rows, "iterations_per_layer": config.iterations, "device": str(device)}


@contextmanager
def _without_tf32() -> Iterator[None]:
    """cuDNN convolutions default to TF32 (10-bit mantissa) on CUDA: too coarse for these
    reconstruction errors (measured: a W4 per-channel run lost to nearest with it, won without)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _adaround_layer(sim, index, batches, config, float_weights, device, generator, should_stop):
    """Optimise one layer's rounding; a stop request lands before it."""
    if should_stop is not None and should_stop():
        raise Cancelled("stopped between AdaRound layers")
    start = time.perf_counter()
    row = _optimize_layer(
        sim, _Layer(sim, index), batches, float_weights, config, device, generator
    )
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _form(layer: _Layer, x, y, params: Feeds, nearest: torch.Tensor) -> _Form:
    """A hand-written gradient where it applies and agrees with the executor, else autograd's."""
    shape = tuple(nearest.shape)
    sample = x[:4]
    reference = layer.forward(sample, nearest, params)
    tolerance = 1e-5 * float(reference.abs().max()) + 1e-12
    for kind in (_DenseForm, _ConvForm):
        try:
            form = kind(layer, x, y, params, shape)
            ours = form.forward(form.layout(sample), form.to_matrix(nearest))[1]
            if torch.allclose(ours, form.layout(reference), rtol=1e-4, atol=tolerance):
                return form
        except (ValueError, RuntimeError):
            continue
    return _GenericForm(layer, x, y, params, shape)


class _Adam:
    """Adam in place on one tensor: a handful of ops, no optimizer bookkeeping per step."""

    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps=1e-8) -> None:
        self.param, self.lr, self.betas, self.eps, self.steps = param, lr, betas, eps, 0
        self.mean, self.square = torch.zeros_like(param), torch.zeros_like(param)

    def step(self, grad: torch.Tensor) -> None:
        (b1, b2), self.steps = self.betas, self.steps + 1
        self.mean.lerp_(grad, 1 - b1)
        self.square.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denominator = (self.square / (1 - b2**self.steps)).sqrt_().add_(self.eps)
        self.param.addcdiv_(self.mean, denominator, value=-self.lr / (1 - b1**self.steps))


def _optimize_layer(sim, layer, batches, float_weights, config, device, generator):
    encoding = sim.weight_encodings[layer.weight]
    weight = sim.executor.weights[layer.weight].detach().to(device)
    scale, zero_point = encoding.torch_params(weight, encoding.scheme.axis)
    floor = torch.floor(weight / scale)
    low, high = encoding.scheme.qmin - zero_point, encoding.scheme.qmax - zero_point
    nearest = encoding.fake_quantize(weight)
    quantized = sim.quantized_weights()
    params = {n: quantized.get(n, sim.executor.weights.get(n)).to(device) for n in layer.constants}
    x, y = _collect(sim, layer, batches, float_weights, config.max_cache_bytes, device)
    form = _form(layer, x, y, params, nearest)
    del x, y  # the form holds them, in its own layout
    # W~ = base + step * h(V): base the clamped floor on the grid, step the grid step where
    # rounding up stays inside [qmin, qmax] (zero where the clamp decides either way).
    base = form.to_matrix(torch.clamp(floor, low, high) * scale)
    step = form.to_matrix(((floor >= low) & (floor < high)) * scale)
    v = form.to_matrix(_initial_v(weight / scale - floor))
    error_before = form.error(form.to_matrix(nearest))
    used = _optimize(form, v, base, step, config, generator)
    up = form.from_matrix((v >= 0).to(weight.dtype))
    learned = torch.clamp(floor + up, low, high) * scale
    error_after = form.error(form.to_matrix(learned))
    if error_after > error_before:  # never worse than nearest on the cached data
        learned, error_after = nearest, error_before
    flipped = torch.round(learned / scale) != torch.round(nearest / scale)
    sim.executor.weights[layer.weight] = learned.to(sim.executor.weights[layer.weight].device)
    sim.invalidate()
    return {
        "layer": layer.node.name,
        "weight": layer.weight,
        "iterations": used,
        "gradient": form.kind,
        "rounded_away_from_nearest": float(torch.mean(flipped.float())),
        "reconstruction_mse_nearest": error_before,
        "reconstruction_mse_adaround": error_after,
    }


def _beta(config: AdaRoundConfig, step: int, warm: int) -> float:
    """Cosine annealing from beta_start after the warm start to beta_end at ``anneal_end``."""
    end = max(config.anneal_end * config.iterations, warm + 1)
    progress = min((step - warm) / (end - warm), 1.0)
    spread = config.beta_start - config.beta_end
    return config.beta_end + 0.5 * spread * (1 + math.cos(progress * math.pi))


def _optimize(form: _Form, v, base, step, config: AdaRoundConfig, generator) -> int:
    """Adam on V until the budget is spent or the hard decisions have settled; steps used.

    The gradient is written out: dL/dV = (dL/dW * step + lambda * dR/dh) * dh/dV, with
    dh/dV = span * sigmoid'(V) where the rectifier does not clamp. Constant factors are folded
    into ``step`` and the regulariser's weight once, so each step is a handful of ops.
    """
    n, device = form.x.shape[0], v.device
    batch = min(config.batch_size, n)
    samples_numel = form.y[0].numel()
    span = ZETA - GAMMA
    # d mean((a - y)^2) / d (0.5 * sum((a - y)^2)) = 2 / (batch * numel), times span, into step
    step_grad = step * (span * 2.0 / (batch * samples_numel))
    gamma, two = torch.tensor(GAMMA, device=device), torch.tensor(2.0, device=device)
    minus_one, span_t = torch.tensor(-1.0, device=device), torch.tensor(span, device=device)
    adam = _Adam(v, config.learning_rate)
    warm = int(config.warm_start * config.iterations)
    previous, stable = None, 0
    for it in range(config.iterations):
        if it % config.check_every == 0:
            picks = torch.randint(0, n, (config.check_every, batch), generator=generator)
            picks = picks.to(device)
        s = torch.sigmoid(v)
        h_raw = torch.addcmul(gamma, s, span_t)
        h = h_raw.clamp(0.0, 1.0)
        grad = form.gradient(torch.addcmul(base, step, h), picks[it % config.check_every])
        grad.mul_(step_grad)
        if it >= warm:  # d/dh of lambda * (1 - |2h - 1|^beta) = -2 lambda beta |t|^(beta-2) t
            beta = _beta(config, it, warm)
            t = torch.addcmul(minus_one, h, two)
            grad.sub_(t.abs().pow_(beta - 2).mul_(t), alpha=2 * config.regularization * beta * span)
        grad = torch.ops.aten.hardtanh_backward(grad, h_raw, 0.0, 1.0)  # the rectifier's clamp
        adam.step(torch.ops.aten.sigmoid_backward(grad, s))
        if it < warm or (it + 1) % config.check_every:
            continue
        decisions = v >= 0
        undecided = float(torch.mean(((h > 0.01) & (h < 0.99)).float()))
        if previous is not None and torch.equal(decisions, previous):
            stable += 1
            if stable >= config.settled_checks and undecided <= config.undecided_fraction:
                return it + 1
        else:
            stable = 0
        previous = decisions
    return config.iterations
