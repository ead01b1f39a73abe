"""Quantization simulation: the float graph plus fake-quantizers where the runtime quantizes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qaas_engine.graph.lazy import materialized
from qaas_engine.quant.encoding import Encoding, QuantScheme
from qaas_engine.quant.estimators import ACTIVATION_METHODS, weight_encoding
from qaas_engine.quant.observers import HistogramObserver, MinMaxObserver
from qaas_engine.quant.placement import Placement
from qaas_engine.spec import QuantSpec
from qaas_engine.tapped import TappedModel
from qaas_engine.targets import choose_kernels, target_rules
from qaas_engine.tensors import batch_size, to_numpy, to_torch

if TYPE_CHECKING:
    import torch

    from qaas_engine.graph.executor import GraphExecutor
    from qaas_engine.graph.lazy import Executor

Feeds = Mapping[str, Any]
Progress = Callable[[str, float], None]
BIAS_BITS = 32
# A wide (16-bit) grid spans the observed range plus this fraction of it on each side: unseen
# data overshoots what calibration saw (MTCNN's box output: 0.179 on a validation draw, 0.158
# on the calibration data's [-0.246, 0.158]; its landmarks 2.4% of their range), and clipping
# it is nearly all of a 16-bit grid's error. The step grows 1.2x (-1.6 dB of a ~90 dB grid;
# it binds only where a channel is tiny beside its tensor's range, which the float rungs fix).
# Measured (real-model bench, auto --min-sqnr 30, before auto asked for a resampled
# confirmation): MTCNN float model -> float_top2 (3.13x less energy), VAD held-out 28.7 -> 36.4
# dB, text direction's default W8A8 0.9375 -> 0.9688; 0.5 doubled the step (-6 dB) for no
# further verdict change beyond the resampling noise.
WIDE_HEADROOM = 0.1


@dataclass
class CalibrationSummary:
    batches: int = 0
    samples: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    # the float model's first output per calibration batch, when ORT computed it anyway and it
    # fits KEPT_OUTPUT_BYTES: evaluation on the calibration data reuses it
    float_outputs: list[np.ndarray] | None = None


KEPT_OUTPUT_BYTES = 64 * 2**20


class QuantSim:
    """Holds the encodings; runs the graph with quantized weights and activations."""

    def __init__(self, executor: Executor, placement: Placement, spec: QuantSpec) -> None:
        self.executor = executor
        self.placement = placement
        self.spec = spec
        self.rules = target_rules(spec.target)  # the deployment target's grids
        # the kernels the export is laid out for: they can narrow a weight's grid (avx2-s7)
        self.kernels = choose_kernels(spec.target, strict_bits=spec.strict_bits)
        # weights a rule gave back the spec's grid where the kernels narrow it (weight_grids)
        self.wide_weights: set[str] = set()
        self.weight_encodings: dict[str, Encoding] = {}
        self.activation_encodings: dict[str, Encoding] = {}
        self.bias_encodings: dict[str, Encoding] = {}
        self.skipped: dict[str, str] = dict(placement.skipped)
        # weight -> output channels pruned to zero (mixed precision); trainers keep them at zero
        self.pruned_channels: dict[str, list[int]] = {}
        self._quantized_weights: dict[str, torch.Tensor] | None = None
        # pass -> the engine that ran it, e.g. {"calibration": "onnxruntime"}
        self.engines: dict[str, str] = {}
        # the estimator the activation ranges came from (a rule may choose another than the spec)
        self.range_estimator: str = spec.range_estimator
        # weight name -> (digest of its values and grid, its grid integers): the rules export
        # the graph once per measurement with the weights' grids unchanged (export.qdq)
        self.weight_integers: dict[str, tuple[bytes, np.ndarray]] = {}
        # activation -> the (min, max) it took on the calibration data: a wider grid than the
        # one calibrated (``wide_encoding``) covers what a range estimator clipped
        self.observed_ranges: dict[str, tuple[float, float]] = {}

    def torch_executor(self) -> GraphExecutor:
        """The graph in torch, built on first need: learning steps and the torch simulation
        call this first, so ``executor.weights`` are tensors from then on."""
        return materialized(self.executor)

    # -- weights -------------------------------------------------------------------------
    def weight_scheme(self, name: str) -> QuantScheme:
        site = self.placement.weights[name]
        per_channel = (
            self.spec.weight_granularity == "per-channel"
            and site.channel_axis is not None
            and site.op_type not in self.rules.per_tensor_weight_ops
        )
        bits = self.spec.weight_bits
        if name not in self.wide_weights:
            bits = self.kernels.weight_bits(bits, site.op_type, depthwise=site.depthwise)
        return QuantScheme(
            bits=bits,
            symmetric=self.spec.weight_symmetric,
            signed=True,
            per_channel=per_channel,
            axis=site.channel_axis if per_channel and site.channel_axis is not None else 0,
        )

    def compute_weight_encodings(self, names: Iterable[str] | None = None) -> None:
        """Every weight's grid from its values (or those of ``names``)."""
        method = "mse" if self.spec.calibration_method == "mse" else "minmax"
        for name in self.placement.weights if names is None else names:
            weight = self.executor.weights[name]
            self.weight_encodings[name] = weight_encoding(weight, self.weight_scheme(name), method)
        self.invalidate()

    def narrowed_weights(self) -> list[str]:
        """The weights on a narrower grid than the spec's because the kernels sum no wider
        exactly (``avx2-s7``), and no rule widened them."""
        return [
            name
            for name in self.weight_encodings
            if name in self.placement.weights
            and name not in self.wide_weights
            and self.weight_scheme(name).bits < self.spec.weight_bits
        ]

    def invalidate(self) -> None:
        """Forget cached quantized weights after weights or encodings change."""
        self._quantized_weights = None

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        self.torch_executor()
        if self._quantized_weights is None:
            out = {}
            for name, encoding in self.weight_encodings.items():
                out[name] = encoding.fake_quantize(self.executor.weights[name])
            for name, encoding in self.bias_encodings.items():
                out[name] = encoding.fake_quantize(self.executor.weights[name])
            self._quantized_weights = out
        return self._quantized_weights

    # -- activations ---------------------------------------------------------------------
    def activation_scheme(self, low: float) -> QuantScheme:
        bits = self.spec.activation_bits or 8
        symmetric = self.rules.activation_symmetric
        if symmetric is None:
            symmetric = self.spec.activation_symmetric
        if symmetric:
            return QuantScheme(
                bits=bits, symmetric=True, signed=self.rules.activation_signed or low < 0
            )
        return QuantScheme(bits=bits, symmetric=False, signed=False)

    def calibrate(
        self,
        batches: Callable[[], Iterable[Mapping[str, Any]]],
        progress: Progress | None = None,
        *,
        float_model: onnx.ModelProto | None = None,
        batched: bool = True,
        on_values: Callable[[dict[str, np.ndarray], int], None] | None = None,
    ) -> CalibrationSummary:
        """Set activation ranges from calibration batches run through the float model.

        The range a tensor should have, as ONNX Runtime and NNCF set it, not one widened by the
        upstream weights' rounding noise. ``batches`` is called once per pass, so the data is
        streamed, never held whole. Given ``float_model`` (the graph the executor was built
        from), the passes run in ONNX Runtime with the quantized tensors exposed; where ORT
        cannot load or run that graph, in the torch executor (``self.engines`` says which).
        ``on_values`` sees each chunk of the first pass in ONNX Runtime (its graph outputs and
        exposed tensors, and how many samples it holds), so another pass over the same samples
        (the rules' probe) need not run the float model again.
        """
        if not self.weight_encodings and self.placement.weights:
            self.compute_weight_encodings()
        targets = set(self.placement.activations)
        if not targets:
            return CalibrationSummary()
        summary, minmax, histograms = CalibrationSummary(), {}, {}
        made = _runtime_runner(float_model, targets, batched)
        runner = made if isinstance(made, TappedModel) else None
        self.engines["calibration"] = "onnxruntime" if runner else f"torch ({made})"
        try:
            minmax, histograms = self._observe(
                batches, targets, summary, progress, runner, on_values
            )
        except _RuntimeFailed as failure:
            self.engines["calibration"] = f"torch (onnxruntime failed to run it: {failure})"
            summary = CalibrationSummary()
            minmax, histograms = self._observe(batches, targets, summary, progress, None)
        _, estimator = ACTIVATION_METHODS[self.spec.range_estimator]
        self.activation_encodings = {}
        self.observed_ranges = {
            name: (obs.low, obs.high)
            for name, obs in minmax.items()
            if obs.seen and not obs.non_finite
        }
        for name in self.placement.activations:
            obs = minmax[name]
            if not obs.seen:
                self.skipped[name] = "never computed on the calibration data"
                continue
            if obs.non_finite:
                self.skipped[name] = (
                    f"{obs.non_finite} of {obs.count} calibration values are inf/NaN "
                    "(e.g. an attention mask); kept in float"
                )
                continue
            scheme = self.activation_scheme(obs.low)
            low, high = estimator(obs, histograms.get(name), scheme)
            self.activation_encodings[name] = Encoding.from_range(scheme, low, high)
        self.apply_target_grids()
        self.derive_bias_encodings()
        summary.skipped = {k: v for k, v in self.skipped.items()}
        return summary

    def _observe(self, batches, targets, summary, progress, runner, on_values=None):
        needs_hist, _ = ACTIVATION_METHODS[self.spec.range_estimator]
        minmax = {name: MinMaxObserver() for name in targets}
        passes = 2 if needs_hist else 1
        self._observe_pass(batches, minmax, summary, progress, 1, passes, True, runner, on_values)
        histograms: dict[str, HistogramObserver] = {}
        if needs_hist:
            histograms = {
                name: HistogramObserver(obs.low, obs.high)
                for name, obs in minmax.items()
                if obs.seen
            }
            self._observe_pass(batches, histograms, summary, progress, 2, passes, False, runner)
        return minmax, histograms

    def set_ranges_from_moments(self, moments: Mapping[str, Any]) -> int:
        """Data-free range setting: each tensor's range from its propagated BN statistics."""
        self.activation_encodings = {}
        for name in self.placement.activations:
            stats = moments.get(name)
            if stats is None:
                self.skipped[name] = "no BatchNorm statistics reach it (data-free mode); kept float"
                continue
            low, high = float(np.min(stats.low)), float(np.max(stats.high))
            scheme = self.activation_scheme(low)
            self.activation_encodings[name] = Encoding.from_range(scheme, low, high)
        self.apply_target_grids()
        self.derive_bias_encodings()
        return len(self.activation_encodings)

    def _observe_pass(
        self, batches, observers, summary, progress, index, passes, count, runner, on_values=None
    ) -> None:
        batch_list = batches()
        total = len(batch_list) if hasattr(batch_list, "__len__") else None
        observe = self._torch_observer(observers) if runner is None else None
        for seen, feeds in enumerate(batch_list, start=1):
            if observe is not None:
                observe(feeds)
            elif runner is not None:
                output = _observe_in_runtime(runner, feeds, observers, on_values)
                if count:
                    _keep(summary, output)
            if count:
                summary.batches += 1
                summary.samples += batch_size(feeds)
            if progress and total:
                progress("calibration", ((index - 1) + seen / total) / passes)

    def _torch_observer(self, observers):
        import torch

        def hook(name: str, value: torch.Tensor) -> torch.Tensor:
            observer = observers.get(name)
            if observer is not None and value.is_floating_point():
                observer.observe(value)
            return value

        def observe(feeds: Mapping[str, Any]) -> None:
            with torch.no_grad():
                self.executor.run(to_torch(feeds), hook=hook, weights=self.executor.weights)

        return observe

    def apply_target_grids(self) -> None:
        """The target's fixed output ranges, then one grid per tied group (the union of its
        members' ranges), so the runtime needs no requantization there."""
        for name, (low, high) in self.placement.fixed_ranges.items():
            if name in self.activation_encodings:
                scheme = self.activation_encodings[name].scheme
                self.activation_encodings[name] = Encoding.from_range(scheme, low, high)
        fixed = set(self.placement.fixed_ranges)  # a fixed grid is requantized where it joins
        for group in _merged(self.placement.tied, self.quantizer_of, fixed):
            members = [self.activation_encodings[name] for name in group]
            low = min(float(np.min(enc.low)) for enc in members)
            high = max(float(np.max(enc.high)) for enc in members)
            shared = Encoding.from_range(members[0].scheme, low, high)
            for name in group:
                self.activation_encodings[name] = shared
        self.derive_scaled_grids()
        self.invalidate()

    def derive_scaled_grids(self) -> None:
        """Each ``placement.scaled`` output on its input's grid times the factor: quantizing
        ``x * k`` there gives back ``x``'s own integers (within a few float32 ulps of them, far
        from a rounding boundary), so the export reads those integers on the scaled grid and
        ONNX Runtime runs no op (``export.qdq.scaled_grid``)."""
        for output, (source, factor) in self.placement.scaled.items():
            encoding = self.encoding_of(source)
            if encoding is None or output not in self.activation_encodings:
                continue
            self.activation_encodings[output] = encoding.scaled(factor)
        self.invalidate()

    def wide_encoding(self, name: str, bits: int) -> Encoding:
        """``name``'s activation grid at ``bits``, over its calibrated range widened to what it
        took on the calibration data.

        A range estimator (MSE, percentile) clips the tails where 8-bit rounding costs more than
        the clipping; on a 16-bit grid the rounding is 256x finer and the clipping it kept is
        the tensor's whole error, so a promoted tensor could carry as much noise as before (the
        orientation classifier: a16_all 24 dB, weights alone 35 dB). The observed range is
        taken, with ``WIDE_HEADROOM`` past it for data calibration did not see, unless its step
        would be coarser than the calibrated grid's (a far outlier)."""
        encoding = self.activation_encodings[name]
        scheme = encoding.scheme
        zero = np.asarray(encoding.zero_point, dtype=np.float64)
        scale = np.asarray(encoding.scale, dtype=np.float64)
        low, high = (scheme.qmin - zero) * scale, (scheme.qmax - zero) * scale
        seen = self.observed_ranges.get(name)
        if seen is not None and bits > scheme.bits:
            margin = WIDE_HEADROOM * (seen[1] - seen[0])
            # the headroom never pushes a side across zero: a ReLU's or sigmoid's output
            # stays one-signed
            seen_low = seen[0] - margin if seen[0] < 0 else max(0.0, seen[0] - margin)
            seen_high = seen[1] + margin if seen[1] > 0 else min(0.0, seen[1] + margin)
            wide_low, wide_high = np.minimum(low, seen_low), np.maximum(high, seen_high)
            if np.all(wide_high - wide_low <= (high - low) * 2.0 ** (bits - scheme.bits)):
                low, high = wide_low, wide_high
        return Encoding.from_range(dataclasses.replace(scheme, bits=bits), low, high)

    def derive_bias_encodings(self) -> None:
        """int32 bias at scale s_input * s_weight, as the integer kernel accumulates it."""
        self.bias_encodings = {}
        if self.rules.bias == "float":
            self.invalidate()
            return
        for name, site in self.placement.weights.items():
            if not site.bias or name not in self.weight_encodings:
                continue
            input_encoding = self.encoding_of(site.input)
            if input_encoding is None:
                continue
            w_enc = self.weight_encodings[name]
            scale = (w_enc.scale.astype(np.float64) * float(input_encoding.scale[0])).astype(
                np.float32
            )
            bias = np.abs(to_numpy(self.executor.weights[site.bias]).astype(np.float64))
            saturates = self.rules.bias == "int32-saturating"  # the target clips, as simulated
            if not saturates and np.any(
                bias / scale.astype(np.float64) >= 2 ** (BIAS_BITS - 1) - 1
            ):
                if max(w_enc.scheme.bits, input_encoding.scheme.bits) <= 8:
                    # an 8-bit group fuses into an integer kernel that assumes s_input * s_weight
                    self.skipped[site.bias] = (
                        "bias does not fit int32 at s_input * s_weight; kept float"
                    )
                    continue
                # A 16-bit grid makes s_input * s_weight so fine that the bias overflows int32.
                # Left float, ONNX Runtime's optimizer would quantize it at that scale anyway
                # (its BiasQuantization pass, which does not check the range) and wrap it; a
                # coarser int32 grid keeps it exact to 2^-30 of its range, and ORT has no
                # integer kernel for 16-bit groups that would assume the product scale.
                widest = bias if scale.size > 1 else bias.max(keepdims=True)
                scale = np.maximum(scale, (widest / 2**30).astype(np.float32)).astype(np.float32)
            scheme = QuantScheme(
                bits=BIAS_BITS,
                symmetric=True,
                signed=True,
                per_channel=w_enc.scheme.per_channel,
                axis=0,
            )
            self.bias_encodings[site.bias] = Encoding(
                scheme, scale, np.zeros(scale.shape, np.int64)
            )
        self.invalidate()

    def quantizer_of(self, tensor: str) -> str | None:
        """The tensor whose quantizer sets this one's grid: itself, or the one it shares
        through data moves (Reshape, MaxPool...); None when it is not quantized."""
        seen = set()
        while tensor not in self.activation_encodings:
            if tensor in seen or tensor not in self.placement.shared:
                return None
            seen.add(tensor)
            tensor = self.placement.shared[tensor]
        return tensor

    def encoding_of(self, tensor: str) -> Encoding | None:
        """The grid a tensor is on: its own quantizer, or the one it shares through data moves."""
        source = self.quantizer_of(tensor)
        return None if source is None else self.activation_encodings[source]

    def activation_quantizers(self) -> dict[str, Encoding]:
        """Every tensor that carries a Q/DQ: own quantizers and shared ones."""
        result = dict(self.activation_encodings)
        for tensor in self.placement.shared:
            encoding = self.encoding_of(tensor)
            if encoding is not None:
                result[tensor] = encoding
        return result

    # -- running -------------------------------------------------------------------------
    def run(self, feeds: Feeds, outputs: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        quantizers = self.activation_quantizers()
        executor = self.torch_executor()

        def hook(name: str, value: torch.Tensor) -> torch.Tensor:
            encoding = quantizers.get(name)
            if encoding is None or not value.is_floating_point():
                return value
            return encoding.fake_quantize(value)

        return executor.run(feeds, hook=hook, weights=self.quantized_weights(), outputs=outputs)

    def run_trainable(
        self,
        feeds: Feeds,
        weights: Mapping[str, torch.Tensor],
        quantizers: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    ) -> torch.Tensor:
        """The first output, with trainers' weights and activation quantizers (keyed by the
        tensor whose grid they set) standing where this sim's own would: QAT and mixed
        precision train exactly the graph that is exported."""

        def hook(name: str, value: torch.Tensor) -> torch.Tensor:
            source = self.quantizer_of(name)
            if source is None or not value.is_floating_point():
                return value
            return quantizers[source](value)

        executor = self.torch_executor()
        output = executor.output_names[0]
        return executor.run(feeds, hook=hook, weights=weights, outputs=[output])[output]


def _merged(
    groups: list[list[str]], quantizer_of: Callable[[str], str | None], fixed: set[str]
) -> list[list[str]]:
    """Tied groups as the quantizers that set their grids (fixed ones left out), overlapping
    groups joined."""
    merged: list[set[str]] = []
    for group in groups:
        members = {q for q in (quantizer_of(name) for name in group) if q is not None} - fixed
        for other in [m for m in merged if m & members]:
            members |= other
            merged.remove(other)
        if members:
            merged.append(members)
    return [sorted(group) for group in merged if len(group) > 1]


class _RuntimeFailed(Exception):
    """ONNX Runtime loaded the float graph but failed to run it on a calibration batch."""


def _runtime_runner(
    float_model: onnx.ModelProto | None, targets: set[str], batched: bool
) -> TappedModel | str:
    """The float graph in ORT with every calibrated tensor exposed, or why it cannot be."""
    if float_model is None:
        return "no float graph given"
    try:
        return TappedModel(float_model, sorted(targets), batched=batched)
    except Exception as error:  # ORT refuses graphs the torch executor runs: fall back
        return f"onnxruntime cannot load the graph: {str(error).splitlines()[0][:200]}"


def _joined(parts: list[np.ndarray]) -> np.ndarray | None:
    """A batch's first output from its chunks; None where they do not join on axis 0 (a 0-d
    or batch-reduced output): evaluation then computes the float outputs itself."""
    if len(parts) == 1:
        return parts[0]
    try:
        return np.concatenate(parts)
    except ValueError:
        return None


def _keep(summary: CalibrationSummary, output: np.ndarray | None) -> None:
    kept = summary.float_outputs
    if summary.batches == 0:
        kept = summary.float_outputs = []
    if kept is None:
        return
    if output is None:
        summary.float_outputs = None
        return
    kept.append(output)
    if sum(part.nbytes for part in kept) > KEPT_OUTPUT_BYTES:
        summary.float_outputs = None  # evaluation computes the float model again


def _observe_in_runtime(
    runner: TappedModel,
    feeds: Mapping[str, Any],
    observers: Mapping[str, Any],
    on_values: Callable[[dict[str, np.ndarray], int], None] | None = None,
) -> np.ndarray | None:
    """Feed the observers one batch's exposed tensors; returns the batch's first output."""
    arrays = {name: to_numpy(value) for name, value in feeds.items()}
    chunks = runner.run(arrays)
    outputs: list[np.ndarray] = []
    while True:
        try:
            values = next(chunks)
        except StopIteration:
            return _joined(outputs)
        except Exception as error:  # observers are rebuilt by the torch pass that follows
            raise _RuntimeFailed(str(error).splitlines()[0][:200]) from error
        outputs.append(values[runner.output_names[0]])
        if on_values is not None:
            on_values(values, runner.last_count)
        for name, value in values.items():
            observer = observers.get(name)
            if observer is not None and np.issubdtype(value.dtype, np.floating):
                observer.observe(value)
