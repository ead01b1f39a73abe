"""Quantization-aware training on the simulation: straight-through rounding, learned ranges.

Weights and biases are fine-tuned through fake quantizers whose ranges are parameters too
(learned min/max: the gradient reaches the scale through ``(x_int - o) * s`` and through
``x / s`` with a straight-through round, as in LSQ/TQT). The signal is the labels when the
training data has them, or the float model's outputs (distillation) when it has none. The best
epoch on a validation set is kept; the sim then takes the trained weights and learned ranges,
so the exported QDQ model is the model that was trained. BatchNorm was folded before any of
this, so there is no train/inference discrepancy to manage.

Every trained tensor is stored in units of its own starting size (a weight in steps of its
initial grid, a range in multiples of its initial range), so one learning rate means the same
thing for every layer and every model: that is what lets the defaults work untuned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from qaas_engine.quant.encoding import Encoding
from qaas_engine.quant.sim import QuantSim
from qaas_engine.quant.training import Batch, Supervision, TrainingLoop, fit


@dataclass(frozen=True)
class QATConfig:
    """Adam with a cosine schedule. ``weight_lr`` is in grid steps per update (biases: in
    units of their largest magnitude), ``range_lr`` a relative change of a range per update;
    with Adam that also makes LSQ's gradient scaling (1/sqrt(N * qmax)) unnecessary."""

    epochs: int = 15
    weight_lr: float = 1e-2
    range_lr: float = 1e-3
    learn_ranges: bool = True
    seed: int = 0
    # keep the last epoch unless an earlier one validated clearly higher (training.fit)
    prefer_last: bool = True
    target_top1: float | None = None  # stop once validation reaches it
    device: str | None = None  # None: CUDA when available, else CPU


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class LearnedQuantizer(nn.Module):
    """A fake quantizer whose range (symmetric bound, or low/high) is a parameter.

    The parameters hold the range in units of its starting magnitude (``unit``), so a
    learning rate is a relative change whatever the tensor's scale.
    """

    unit: torch.Tensor  # a buffer: the range's starting magnitude

    def __init__(self, encoding: Encoding, learn: bool) -> None:
        super().__init__()
        self.scheme = encoding.scheme
        low = torch.as_tensor(encoding.low, dtype=torch.float32)
        high = torch.as_tensor(encoding.high, dtype=torch.float32)
        if self.scheme.symmetric:
            scale = torch.as_tensor(encoding.scale, dtype=torch.float32)
            bound = scale * self.scheme.steps_below_zero
            unit = bound.abs().clamp_min(1e-8)
            self.register_buffer("unit", unit)
            self.bound = nn.Parameter(bound / unit, requires_grad=learn)
        else:
            unit = torch.maximum(high - low, torch.full_like(high, 1e-8))
            self.register_buffer("unit", unit)
            self.low = nn.Parameter(low / unit, requires_grad=learn)
            self.high = nn.Parameter(high / unit, requires_grad=learn)

    def _scale_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        qmin, qmax = self.scheme.qmin, self.scheme.qmax
        if self.scheme.symmetric:
            bound = (self.bound * self.unit).abs().clamp_min(1e-8)
            scale = bound / self.scheme.steps_below_zero
            return scale, torch.zeros_like(scale)
        low = torch.clamp(self.low * self.unit, max=0.0)
        high = torch.clamp(self.high * self.unit, min=0.0)
        scale = ((high - low) / (qmax - qmin)).clamp_min(1e-8)
        zero_point = torch.clamp(_round_ste(qmin - low / scale), qmin, qmax)
        return scale, zero_point

    def scale(self) -> torch.Tensor:
        return self._scale_zero_point()[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self._scale_zero_point()
        if scale.numel() > 1:
            shape = [1] * x.dim()
            shape[self.scheme.axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        x_int = torch.clamp(_round_ste(x / scale) + zero_point, self.scheme.qmin, self.scheme.qmax)
        return (x_int - zero_point) * scale

    def encoding(self) -> Encoding:
        """The learned range as an encoding: the same formulas, so export equals training."""
        with torch.no_grad():
            if self.scheme.symmetric:
                bound = (self.bound * self.unit).abs().double().cpu().numpy()
                low = -bound if self.scheme.signed else np.zeros_like(bound)
                high = bound * self.scheme.qmax / self.scheme.steps_below_zero
                return Encoding.from_range(self.scheme, low, high)
            return Encoding.from_range(
                self.scheme,
                (self.low * self.unit).double().cpu().numpy(),
                (self.high * self.unit).double().cpu().numpy(),
            )


class QATModel(nn.Module):
    """The sim's graph with trainable weights/biases and learned quantizers.

    A quantized weight is stored divided by its initial grid step and a bias by its largest
    magnitude (``units``), so ``weight_lr`` is "grid steps per update" in every layer.
    """

    def __init__(self, sim: QuantSim, learn_ranges: bool) -> None:
        super().__init__()
        sim.torch_executor()
        self.sim = sim
        trainable = set(sim.weight_encodings) | {
            site.bias for site in sim.placement.weights.values() if site.bias
        }
        self.names = sorted(n for n in trainable if n in sim.executor.weights)
        self.units = {name: self._unit(name) for name in self.names}
        self.params = nn.ParameterList(
            [
                nn.Parameter(sim.executor.weights[n].detach().float() / self.units[n])
                for n in self.names
            ]
        )
        self.masks = {name: self._pruning_mask(name) for name in sim.pruned_channels}
        self.weight_quantizers = nn.ModuleDict()
        self.weight_keys = {}
        for index, name in enumerate(sorted(sim.weight_encodings)):
            key = f"w{index}"
            self.weight_keys[name] = key
            self.weight_quantizers[key] = LearnedQuantizer(sim.weight_encodings[name], learn_ranges)
        self.act_quantizers = nn.ModuleDict()
        self.act_keys = {}
        for index, name in enumerate(sorted(sim.activation_encodings)):
            key = f"a{index}"
            self.act_keys[name] = key
            self.act_quantizers[key] = LearnedQuantizer(
                sim.activation_encodings[name], learn_ranges
            )
        # bias -> (its weight's quantizer, its input's quantizer): int32 at s_input * s_weight,
        # as the sim and the runtime hold it; a float bias here would train another model.
        self.bias_grids: dict[str, tuple[str, str]] = {}
        for weight, site in sim.placement.weights.items():
            if site.bias in sim.bias_encodings and weight in self.weight_keys:
                source = sim.quantizer_of(site.input)
                if site.bias is None or source is None:  # a bias grid needs both scales
                    raise ValueError(f"bias of {weight} has an int32 grid but no input grid")
                self.bias_grids[site.bias] = (self.weight_keys[weight], self.act_keys[source])

    def _weight_quantizer(self, key: str) -> LearnedQuantizer:
        return cast(LearnedQuantizer, self.weight_quantizers[key])

    def _act_quantizer(self, key: str) -> LearnedQuantizer:
        return cast(LearnedQuantizer, self.act_quantizers[key])

    def _unit(self, name: str) -> torch.Tensor:
        weight = self.sim.executor.weights[name].detach().float()
        encoding = self.sim.weight_encodings.get(name)
        if encoding is None:  # a bias: its own size
            return weight.abs().max().clamp_min(1e-8)
        scale, _ = encoding.torch_params(weight)
        return scale

    def _pruning_mask(self, name: str) -> torch.Tensor:
        """Channels mixed precision pruned stay at zero: training must not revive them."""
        weight = self.sim.executor.weights[name]
        axis = self.sim.placement.weights[name].channel_axis or 0
        mask = torch.ones(weight.shape[axis])
        mask[self.sim.pruned_channels[name]] = 0.0
        shape = [1] * weight.dim()
        shape[axis] = -1
        return mask.reshape(shape)

    def to(
        self, *args: Any, **kwargs: Any
    ) -> QATModel:  # units and masks travel with the parameters
        super().to(*args, **kwargs)
        device = self.params[0].device if len(self.params) else None
        if device is not None:
            self.units = {name: unit.to(device) for name, unit in self.units.items()}
            self.masks = {name: mask.to(device) for name, mask in self.masks.items()}
        return self

    def trained_weights(self) -> dict[str, torch.Tensor]:
        weights = {}
        for name, param in zip(self.names, self.params, strict=True):
            weight = param * self.units[name]
            weights[name] = weight * self.masks[name] if name in self.masks else weight
        return weights

    def forward(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = {}
        for name, weight in self.trained_weights().items():
            key = self.weight_keys.get(name)
            if key is not None:
                weights[name] = self.weight_quantizers[key](weight)
            elif name in self.bias_grids:
                weight_key, input_key = self.bias_grids[name]
                weight_scale = self._weight_quantizer(weight_key).scale().reshape(-1)
                step = weight_scale * self._act_quantizer(input_key).scale().reshape(-1)
                weights[name] = _round_ste(weight / step) * step
            else:
                weights[name] = weight
        quantizers = {name: self.act_quantizers[key] for name, key in self.act_keys.items()}
        return self.sim.run_trainable(feeds, weights, quantizers)

    def commit(self) -> None:
        """Write the trained weights and learned ranges back into the sim (on the CPU)."""
        sim = self.sim
        with torch.no_grad():
            for name, weight in self.trained_weights().items():
                sim.executor.weights[name] = weight.detach().cpu().clone()
        for name, key in self.weight_keys.items():
            sim.weight_encodings[name] = self._weight_quantizer(key).encoding()
        for name, key in self.act_keys.items():
            sim.activation_encodings[name] = self._act_quantizer(key).encoding()
        sim.derive_bias_encodings()


def _device(config: QATConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_qat(
    sim: QuantSim,
    training: Callable[[int], Iterable[Batch]],
    validation: Callable[[], Iterable[Batch]],
    float_weights: dict[str, torch.Tensor],
    config: QATConfig = QATConfig(),
    progress: Callable[[str, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Fine-tune, select the best epoch on validation, commit it to the sim; report the curve.

    ``training(epoch)`` yields shuffled (feeds, labels-or-None) batches for that epoch. Training
    runs on the GPU when there is one; the sim gets its weights back on the CPU.
    """
    device = _device(config)
    cpu_weights = sim.torch_executor().weights
    sim.executor.weights = {name: value.to(device) for name, value in cpu_weights.items()}
    try:
        report = _train(
            sim, training, validation, float_weights, config, device, progress, should_stop
        )
    finally:
        trained = sim.executor.weights
        sim.executor.weights = {name: value.cpu() for name, value in trained.items()}
    sim.invalidate()
    report["device"] = str(device)
    return report


def _train(
    sim: QuantSim,
    training: Callable[[int], Iterable[Batch]],
    validation: Callable[[], Iterable[Batch]],
    float_weights: dict[str, torch.Tensor],
    config: QATConfig,
    device: torch.device,
    progress: Callable[[str, float], None] | None,
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    float_weights = {name: value.to(device) for name, value in float_weights.items()}
    torch.manual_seed(config.seed)
    model = QATModel(sim, config.learn_ranges).to(device)
    range_params = [
        p
        for p in [*model.weight_quantizers.parameters(), *model.act_quantizers.parameters()]
        if p.requires_grad
    ]
    groups: list[dict[str, Any]] = [{"params": list(model.params), "lr": config.weight_lr}]
    if range_params:
        groups.append({"params": range_params, "lr": config.range_lr})
    optimizer = torch.optim.Adam(groups)

    def epoch_done(epoch: int) -> None:
        if progress:
            progress("qat", epoch / config.epochs)

    supervision = Supervision(sim, float_weights, device)
    loop = TrainingLoop(
        "QAT",
        model,
        optimizer,
        training,
        validation,
        supervision,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(config.epochs, 1)),
        should_stop=should_stop,
        progress=epoch_done,
    )
    fitted = fit(
        loop,
        config.epochs,
        keep_best=True,
        target=config.target_top1,
        prefer_last=config.prefer_last,
    )
    model.commit()
    return {
        "signal": supervision.signal,
        "learned_ranges": config.learn_ranges,
        "best_epoch": fitted.best_epoch,
        "best_validation": fitted.best_validation,
        "selection": fitted.selection,
        "curve": fitted.curve,
    }
