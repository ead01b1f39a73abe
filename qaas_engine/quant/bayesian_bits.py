"""Bayesian Bits (van Baalen et al. 2020): learn a bit-width per quantizer, and prune channels.

Every gated tensor is quantized on nested grids of 2, 4, 8 and 16 bits over the same range,
``x_b = s_b * clamp(round(x / s_b) ...)``, and the simulated value is the gated sum of residuals

    x_q = z2 * (x_2 + z4 * (e_4 + z8 * (e_8 + z16 * e_16))),   e_b = x_b - x_{b/2}

so that gates on up to width ``b`` and off above give exactly ``x_b`` (the sum telescopes),
whatever the gates' values. Each gate is hard-concrete (Louizos et al. 2018) with a learned
``log_alpha``; the 2-bit gate of a weight is one per output channel and prunes the channel, the
2-bit gate of an activation is always on. The loss is the task loss (labels, or distillation
from the float model) plus ``strength`` times the expected cost: the energy model (compute at
E[b_w] * E[b_a], weight and activation traffic at E[b]) or bit-operations, relative to the
cost of the spec's uniform bit-widths, so ``strength`` means the same on every model.

Then the gates are fixed to their decisions, the weights are fine-tuned at the chosen widths
(selected on validation), and the sim takes the chosen grids: because the fixed-gate model *is*
the sim with those grids, the exported QDQ model is the model that was trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from qaas_engine.cost.energy import EnergyProfile, bit_operations, expected_energy_pj
from qaas_engine.cost.shapes import LayerShape
from qaas_engine.quant.gated import GatedQuantizer
from qaas_engine.quant.qat import QATConfig, train_qat
from qaas_engine.quant.sim import QuantSim
from qaas_engine.quant.training import Batch, Penalty, Supervision, TrainingLoop, fit

BIT_LADDER = (2, 4, 8, 16)


@dataclass(frozen=True)
class BayesianBitsConfig:
    epochs: int = 8  # gate learning
    finetune_epochs: int = 4  # QAT at the fixed widths
    strength: float = 0.5  # lambda: weight of the relative expected cost
    cost: Literal["energy", "bops"] = "energy"
    max_bits: int = 16
    start_bits: int = 8  # gates start on up to max(this, the spec's width): room to go up
    prune: bool = True
    weight_lr: float = 0.0  # weights held during gate learning: gates judge the trained weights
    gate_lr: float = 5e-2
    seed: int = 0
    threads: int = 1  # small per-batch work: one thread is as fast, and the result reproducible


@dataclass(frozen=True)
class CostTerm:
    """One layer's share of the modelled cost, with the quantizers whose bits set it."""

    layer: str
    macs: int
    weight_elements: int
    input_elements: int
    weight: str | None
    activation: str | None


class CostModel:
    """Expected cost (energy in pJ, or bit-operations) of the gated model, and its reference."""

    def __init__(
        self,
        terms: list[CostTerm],
        kind: Literal["energy", "bops"],
        profile: EnergyProfile,
        float_bits: int = 32,
    ) -> None:
        self.terms = terms
        self.kind = kind
        self.profile = profile
        self.float_bits = float_bits

    def layer_cost(
        self, macs_share: torch.Tensor, w_bits: torch.Tensor, a_bits: torch.Tensor, term: CostTerm
    ) -> torch.Tensor:
        if self.kind == "bops":
            return bit_operations(term.macs, macs_share, w_bits, a_bits)
        return expected_energy_pj(
            self.profile,
            term.macs,
            term.weight_elements,
            term.input_elements,
            macs_share,
            w_bits,
            a_bits,
        )

    def expected(
        self,
        weight_q: Mapping[str, GatedQuantizer],
        act_q: Mapping[str, GatedQuantizer],
        fixed_bits: Mapping[str, int],
    ) -> torch.Tensor:
        total = torch.tensor(0.0)
        for term in self.terms:
            w_bits, share = self._bits(term.weight, weight_q, fixed_bits)
            a_bits, _ = self._bits(term.activation, act_q, fixed_bits)
            total = total + self.layer_cost(share, w_bits, a_bits, term)
        return total

    def uniform(self, weight_bits: int, activation_bits: int) -> float:
        total = 0.0
        for term in self.terms:
            w = torch.tensor(float(weight_bits if term.weight else self.float_bits))
            a = torch.tensor(float(activation_bits if term.activation else self.float_bits))
            total += float(self.layer_cost(torch.tensor(1.0), w, a, term))
        return total

    def _bits(
        self,
        name: str | None,
        quantizers: Mapping[str, GatedQuantizer],
        fixed_bits: Mapping[str, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if name is not None and name in quantizers:
            q = quantizers[name]
            return q.expected_bits(), q.active_fraction()
        bits = fixed_bits.get(name, self.float_bits) if name is not None else self.float_bits
        return torch.tensor(float(bits)), torch.tensor(1.0)


def cost_terms(sim: QuantSim, layers: Iterable[LayerShape]) -> list[CostTerm]:
    """Weighted layers with the quantizer of their weight and of their input's grid."""
    quantizers = sim.activation_quantizers()
    sources = {name: sim.quantizer_of(name) for name in quantizers}
    terms = []
    for layer in layers:
        if layer.kind != "mac":
            continue
        site = sim.placement.weights.get(layer.weight) if layer.weight else None
        activation = None
        for tensor in layer.inputs:
            if tensor in sources:
                activation = sources[tensor]
        terms.append(
            CostTerm(
                layer.name,
                layer.macs,
                layer.weight_elements,
                layer.input_elements,
                layer.weight if site is not None and layer.weight in sim.weight_encodings else None,
                activation,
            )
        )
    return terms


class BayesianBitsModel(nn.Module):
    """The sim's graph with trainable weights, gated weight quantizers and gated activations.

    Only quantizers that feed a weighted layer carry gates (they are the ones with a cost);
    the rest keep the spec's grid.
    """

    def __init__(self, sim: QuantSim, terms: list[CostTerm], config: BayesianBitsConfig) -> None:
        super().__init__()
        sim.torch_executor()
        self.sim = sim
        levels = tuple(b for b in BIT_LADDER if b <= config.max_bits)
        trainable = set(sim.weight_encodings) | {
            site.bias for site in sim.placement.weights.values() if site.bias
        }
        self.names = sorted(n for n in trainable if n in sim.executor.weights)
        self.params = nn.ParameterList(
            [nn.Parameter(sim.executor.weights[n].detach().clone().float()) for n in self.names]
        )
        gated_acts = {t.activation for t in terms if t.activation}
        self.gated_activations = gated_acts
        self.weight_keys: dict[str, str] = {}
        self.weight_q = nn.ModuleDict()
        for index, name in enumerate(sorted(sim.weight_encodings)):
            encoding = sim.weight_encodings[name]
            channels = None
            axis = sim.placement.weights[name].channel_axis
            if config.prune and axis is not None:
                channels = int(sim.executor.weights[name].shape[axis])
                if not encoding.scheme.per_channel:
                    encoding = replace(encoding, scheme=replace(encoding.scheme, axis=axis))
            key = f"w{index}"
            self.weight_keys[name] = key
            self.weight_q[key] = GatedQuantizer(
                encoding,
                levels,
                max(encoding.scheme.bits, config.start_bits),
                channels if channels else None,
            )
        self.act_keys: dict[str, str] = {}
        self.act_q = nn.ModuleDict()
        for index, name in enumerate(sorted(sim.activation_encodings)):
            encoding = sim.activation_encodings[name]
            key = f"a{index}"
            self.act_keys[name] = key
            gated = name in gated_acts
            start = max(encoding.scheme.bits, config.start_bits) if gated else encoding.scheme.bits
            quantizer = GatedQuantizer(encoding, levels, start, None, fixed=not gated)
            self.act_q[key] = quantizer
            if name not in gated_acts:
                quantizer.freeze()

    def weight_quantizers(self) -> dict[str, GatedQuantizer]:
        return {
            name: cast(GatedQuantizer, self.weight_q[key]) for name, key in self.weight_keys.items()
        }

    def activation_quantizers(self) -> dict[str, GatedQuantizer]:
        return {name: cast(GatedQuantizer, self.act_q[key]) for name, key in self.act_keys.items()}

    def _all_quantizers(self) -> list[GatedQuantizer]:
        return [*self.weight_quantizers().values(), *self.activation_quantizers().values()]

    def forward(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = {}
        for name, param in zip(self.names, self.params, strict=True):
            key = self.weight_keys.get(name)
            weights[name] = self.weight_q[key](param) if key else param
        return self.sim.run_trainable(feeds, weights, self.activation_quantizers())

    def gate_parameters(self) -> list[nn.Parameter]:
        return [
            p
            for q in self._all_quantizers()
            for p in (q.log_alpha, q.channel_log_alpha)
            if p.requires_grad
        ]

    def freeze(self) -> None:
        for q in self._all_quantizers():
            q.freeze()

    def commit(self) -> dict[str, np.ndarray]:
        """The sim takes the fine-tuned weights (pruned channels zeroed) and the chosen grids."""
        sim = self.sim
        pruned = {}
        for name, param in zip(self.names, self.params, strict=True):
            sim.executor.weights[name] = param.detach().clone()
        for name, q in self.weight_quantizers().items():
            keep = q.kept_channels()
            if q.prunable and not keep.all():
                mask = torch.from_numpy(keep.astype(np.float32))
                shape = [1] * sim.executor.weights[name].dim()
                shape[q.axis] = -1
                sim.executor.weights[name] = sim.executor.weights[name] * mask.reshape(shape)
                pruned[name] = np.flatnonzero(~keep)
            sim.weight_encodings[name] = q.decided_encoding()
        for name, q in self.activation_quantizers().items():
            sim.activation_encodings[name] = q.decided_encoding()
        sim.pruned_channels = {k: v.tolist() for k, v in pruned.items()}
        sim.derive_bias_encodings()
        sim.invalidate()
        return pruned


def train_bayesian_bits(
    sim: QuantSim,
    training: Callable[[int], Iterable[Batch]],
    validation: Callable[[], Iterable[Batch]],
    float_weights: dict[str, torch.Tensor],
    terms: list[CostTerm],
    profile: EnergyProfile,
    config: BayesianBitsConfig = BayesianBitsConfig(),
    progress: Callable[[str, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Learn the gates, fix them, fine-tune at the chosen widths, commit; report the choices."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(
            sim, training, validation, float_weights, terms, profile, config, progress, should_stop
        )
    finally:
        torch.set_num_threads(threads)


def _train(
    sim: QuantSim,
    training: Callable[[int], Iterable[Batch]],
    validation: Callable[[], Iterable[Batch]],
    float_weights: dict[str, torch.Tensor],
    terms: list[CostTerm],
    profile: EnergyProfile,
    config: BayesianBitsConfig,
    progress: Callable[[str, float], None] | None,
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    spec_bits = {name: e.scheme.bits for name, e in sim.weight_encodings.items()}
    spec_bits.update({name: e.scheme.bits for name, e in sim.activation_encodings.items()})
    model = BayesianBitsModel(sim, terms, config)
    costs = CostModel(terms, config.cost, profile)
    reference = costs.uniform(sim.spec.weight_bits, sim.spec.activation_bits or 32)
    optimizer = torch.optim.Adam(
        [
            {"params": list(model.params), "lr": config.weight_lr},
            {"params": model.gate_parameters(), "lr": config.gate_lr},
        ]
    )
    total_epochs = config.epochs + config.finetune_epochs

    def relative_cost() -> tuple[torch.Tensor, float]:
        """The expected cost as a loss term, and relative to the spec's uniform widths."""
        cost = costs.expected(model.weight_quantizers(), model.activation_quantizers(), spec_bits)
        return config.strength * cost / reference, float(cost.detach()) / reference

    def epoch_done(epoch: int) -> None:
        if progress:
            progress("bayesian_bits", epoch / max(total_epochs, 1))

    supervision = Supervision(sim, float_weights)
    gates = TrainingLoop(
        "Bayesian Bits",
        model,
        optimizer,
        training,
        validation,
        supervision,
        penalty=Penalty("expected_relative_cost", relative_cost),
        tags={"phase": "gates"},
        should_stop=should_stop,
        progress=epoch_done,
    )
    curve = fit(gates, config.epochs).curve
    model.freeze()
    pruned = model.commit()
    finetune = None
    if config.finetune_epochs > 0:
        # The chosen widths, fine-tuned as QAT does it (learned ranges, pruned channels held at
        # zero, best epoch on validation, the freeze point included), so export equals training.
        def finetune_progress(_: str, fraction: float) -> None:
            if progress:
                done = config.epochs + fraction * config.finetune_epochs
                progress("bayesian_bits", done / total_epochs)

        finetune = train_qat(
            sim, training, validation, float_weights,
            # The fine-tune starts from trained widths and weights; its start stays a
            # candidate on equal terms (measured: keeping its last epoch cost 0.75-1.25
            # points of test top-1 on the redundant net).
            QATConfig(epochs=config.finetune_epochs, seed=config.seed, prefer_last=False),
            finetune_progress, should_stop,
        )  # fmt: skip
    chosen = costs.expected(model.weight_quantizers(), model.activation_quantizers(), spec_bits)
    return {
        "signal": supervision.signal,
        "cost": config.cost,
        "strength": config.strength,
        "relative_cost": {
            "chosen": round(float(chosen) / reference, 4),
            "reference": f"uniform W{sim.spec.weight_bits}A{sim.spec.activation_bits or 'float'}",
        },
        "finetune": finetune,
        "weights": [
            {
                "tensor": name,
                "layer": sim.placement.weights[name].node,
                "bits": q.decided_bits(),
                "channels": int(q.kept_channels().size) if q.prunable else None,
                "pruned_channels": pruned[name].tolist() if name in pruned else [],
            }
            for name, q in sorted(model.weight_quantizers().items())
        ],
        "activations": [
            {"tensor": name, "bits": q.decided_bits(), "gated": name in model.gated_activations}
            for name, q in sorted(model.activation_quantizers().items())
        ],
        "curve": curve,
    }
