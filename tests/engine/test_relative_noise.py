"""auto's float and 16-bit rungs rank quantizers by the noise each adds to every output channel
relative to that channel's power: the worst-channel SQNR target is hurt by noise on a
small-range channel that an absolute ranking counts as nothing beside a large-range one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs
from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.noise_pricing import measure_noise
from qaas_engine.pipeline import PipelineData, run_pipeline
from qaas_engine.quant.sensitivity import estimate_noise
from qaas_engine.state import Timer


class TwoRanges(torch.nn.Module):
    """Two heads on separate branches: one in pixels (x300), one near 0..1."""

    def __init__(self) -> None:
        super().__init__()
        self.big = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.small = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.big_head = torch.nn.Linear(4, 2)
        self.small_head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        big = self.big_head(torch.relu(self.big(x)).mean((2, 3))) * 300.0
        small = self.small_head(torch.relu(self.small(x)).mean((2, 3)))
        return big, small


@pytest.fixture(scope="module")
def two_ranges(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_ranges")
    torch.manual_seed(0)
    path = folder / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TwoRanges().eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=False,
            opset_version=17, input_names=["input"], output_names=["big", "small"],
            dynamic_axes={"input": {0: "batch"}},
        )  # fmt: skip
    data = folder / "calibration.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((16, 1, 8, 8), np.float32))
    imported = import_model(path)
    calibration = load_npz(data, model_inputs(imported.model))
    state, sim, _ = run_pipeline(
        imported, QuantSpec(), PipelineData(calibration), Timer(), EnergyProfile()
    )
    return sim, {"input": calibration.arrays["input"][:8]}, state.model


def _branch(sim, name: str) -> str:
    """Which head a quantizer's noise reaches: the small branch's weights and tensors only."""
    consumers = {n.outputs[0]: n.inputs for n in sim.executor.nodes if n.outputs}
    small = {"small"}
    changed = True
    while changed:  # every tensor upstream of the small output that is not shared
        changed = False
        for output, inputs in consumers.items():
            if output in small:
                for tensor in inputs:
                    if tensor not in small and tensor != "input":
                        small.add(tensor)
                        changed = True
    return "small" if name in small else "big"


def _largest(estimate, sim, branch: str) -> float:
    power = {**estimate.activations, **estimate.weights}
    return max(p for name, p in power.items() if _branch(sim, name) == branch)


def test_relative_ranking_counts_noise_on_the_small_range_head(two_ranges):
    sim, feeds, _ = two_ranges
    absolute = estimate_noise(sim, feeds)
    relative = estimate_noise(sim, feeds, per_channel=True)
    # in the outputs' units the pixel head's noise is ~300² times the small head's
    absolute_ratio = _largest(absolute, sim, "small") / _largest(absolute, sim, "big")
    assert absolute_ratio < 1e-3
    # relative to each channel's power that factor is gone: the heads compare as SQNR does
    relative_ratio = _largest(relative, sim, "small") / _largest(relative, sim, "big")
    assert relative_ratio > 1e3 * absolute_ratio
    # the relative figures sum to a predicted SQNR over the 4 output channels
    assert relative.signal == 4


def test_measured_noise_relative_to_each_channel_counts_the_small_range_head(two_ranges):
    """ONNX Runtime's measured noise in the same units: each output channel's squared error
    over that channel's power, so the small head's activations are not drowned by the pixels'."""
    sim, feeds, model = two_ranges
    absolute = measure_noise(model, sim, feeds)
    relative = measure_noise(model, sim, feeds, per_channel=True)
    assert set(relative.activations) == set(absolute.activations)
    absolute_ratio = _largest_activation(absolute, sim, "small") / _largest_activation(
        absolute, sim, "big"
    )
    relative_ratio = _largest_activation(relative, sim, "small") / _largest_activation(
        relative, sim, "big"
    )
    assert absolute_ratio < 1e-3 and relative_ratio > 1e3 * absolute_ratio
    assert relative.signal == 4  # the output channels
    # every relative figure is the absolute one over its channels' power: none can exceed
    # the channel count's worth of full-scale noise here (8-bit noise is small)
    assert sum(relative.activations.values()) < relative.signal


def _largest_activation(estimate, sim, branch: str) -> float:
    return max(p for name, p in estimate.activations.items() if _branch(sim, name) == branch)
