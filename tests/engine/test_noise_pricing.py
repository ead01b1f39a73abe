"""Each quantizer's output noise measured in ONNX Runtime (``noise_pricing``): what one grid alone
does to the outputs, equal to a measurement in the torch executor, ranked as the first-order
torch pricing ranks it, chosen where it costs less, and a small model's default job then never
imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qaas_engine.noise_pricing import WEIGHTS, choose, measure_noise, ort_cost
from qaas_engine.quant import sensitivity
from qaas_engine.tensors import to_torch
from tests.conftest import export_legacy
from tests.support.strict_sims import Branchy, strict_sim


@pytest.fixture(scope="module")
def priced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pricing")
    state, sim, calibration = strict_sim(Branchy, tmp, (1, 1, 12, 12), 16)
    feeds = {k: np.asarray(v) for k, v in next(calibration.batches(1, 1))[0].items()}
    return state, sim, feeds


def _one_quantized(sim, feeds, name):
    """The outputs' squared error with ``name`` alone fake-quantized, in the torch executor."""
    encoding = sim.activation_encodings[name]

    def hook(tensor, value):
        return encoding.fake_quantize(value) if tensor == name else value

    inputs = to_torch(feeds)
    with torch.no_grad():
        clean = sim.executor.run(inputs, hook=lambda n, v: v)
        noisy = sim.executor.run(inputs, hook=hook)
    return sum(float(((noisy[k].double() - clean[k].double()) ** 2).sum()) for k in clean), sum(
        float((clean[k].double() ** 2).sum()) for k in clean
    )


def test_each_activations_noise_is_what_its_grid_alone_does_to_the_outputs(priced):
    state, sim, feeds = priced
    estimate = measure_noise(state.model, sim, feeds)

    assert set(estimate.activations) == set(sim.activation_encodings)
    assert "input" in estimate.activations  # a graph input is priced too
    assert list(estimate.weights) == [WEIGHTS] and estimate.weights[WEIGHTS] > 0
    for name in estimate.activations:
        noise, signal = _one_quantized(sim, feeds, name)
        assert estimate.signal == pytest.approx(signal, rel=1e-5)
        assert estimate.activations[name] == pytest.approx(noise, rel=1e-3, abs=1e-9 * signal)
    assert max(estimate.activations.values()) > 0
    # the weights together, on their grids, activations float
    executor = sim.torch_executor()
    inputs = to_torch(feeds)
    quantized = {
        name: encoding.fake_quantize(executor.weights[name])
        for name, encoding in sim.weight_encodings.items()
    }
    with torch.no_grad():
        clean = executor.run(inputs)
        noisy = executor.run(inputs, weights=quantized)
    noise = sum(float(((noisy[k].double() - clean[k].double()) ** 2).sum()) for k in clean)
    assert estimate.weights[WEIGHTS] == pytest.approx(noise, rel=1e-3)


def test_the_measured_noise_ranks_activations_as_the_first_order_pricing_does(priced):
    state, sim, feeds = priced
    measured = measure_noise(state.model, sim, feeds)
    first_order = sensitivity.estimate_noise(sim, feeds, seed=0)

    names = sorted(measured.activations)
    by_measure = sorted(names, key=lambda n: -measured.activations[n])
    by_gradient = sorted(names, key=lambda n: -first_order.activations[n])
    assert by_measure[0] == by_gradient[0]
    assert len(set(by_measure[:3]) & set(by_gradient[:3])) >= 2
    # the same units: the predicted 8-bit SQNRs agree within a few dB
    assert abs(measured.sqnr_db() - first_order.sqnr_db()) < 3.0


def test_onnxruntime_prices_where_it_costs_less_and_torch_where_it_does_not(priced):
    _, sim, _ = priced
    small = choose(sim, macs_per_sample=10_000, budget=1e6)
    assert small.engine == "onnxruntime" and small.per_sample == ort_cost(sim)
    # fewer runs than torch's pass costs: ONNX Runtime, however large the model
    assert choose(sim, macs_per_sample=10**13, budget=1e6).engine == "onnxruntime"
    many = SimpleNamespace(activation_encodings=dict.fromkeys(range(100)), weight_encodings={1: 1})
    assert ort_cost(many) == 102  # type: ignore[arg-type]
    # a large model with many activations: their runs cost more than torch's import
    large = choose(many, macs_per_sample=10**10, budget=1e6)  # type: ignore[arg-type]
    assert large.engine == "torch" and large.per_sample == 40.0
    assert choose(many, macs_per_sample=10**8, budget=1e6).engine == "onnxruntime"  # type: ignore[arg-type]
    # ONNX Runtime's runs overrun the budget, torch's pass fits
    tight = choose(many, macs_per_sample=10_000, budget=60.0)  # type: ignore[arg-type]
    assert tight.engine == "torch" and tight.per_sample == 40.0
    # neither fits: the cheaper, whose cost the caller reports as over budget
    assert choose(many, macs_per_sample=10_000, budget=0.0).per_sample == 102  # type: ignore[arg-type]


def test_a_small_models_default_job_prices_its_noise_without_importing_torch(tmp_path):
    from tests.engine.test_rules import OutlierChannel

    torch.manual_seed(0)
    model = export_legacy(OutlierChannel().eval(), tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    data = tmp_path / "c.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((32, 1, 8, 8), np.float32))
    code = (
        "import sys, json\n"
        "from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize\n"
        f"imported = import_model({str(model)!r})\n"
        f"calibration = load_npz({str(data)!r}, model_inputs(imported.model))\n"
        "report = quantize(imported, QuantSpec(), calibration=calibration).report\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'rules': report['rules'],\n"
        "    'sqnr': report['metrics']['onnxruntime']['sqnr_db']}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(line["rule"] == "sensitive_tensor" for line in result["rules"])
    assert result["sqnr"] > 30
    assert result["torch"] is False


def test_where_onnx_runtime_cannot_run_the_probe_torch_prices_instead(priced, monkeypatch):
    from qaas_engine import noise_pricing, rules

    state, sim, feeds = priced
    chosen = noise_pricing.Pricing("onnxruntime", noise_pricing.ort_cost(sim))
    assert rules._priced(state.model, sim, feeds, True, 0, 1e6, chosen).weights == {
        WEIGHTS: pytest.approx(
            measure_noise(state.model, sim, feeds, per_channel=True).weights[WEIGHTS]
        )
    }

    def broken(*args, **kwargs):
        raise RuntimeError("an op the probe cannot follow")

    monkeypatch.setattr(noise_pricing, "build_probe", broken)
    fallback = rules._priced(state.model, sim, feeds, True, 0, 1e6, chosen)
    expected = sensitivity.estimate_noise(sim, feeds, seed=0, per_channel=True)
    assert fallback.activations == expected.activations and WEIGHTS not in fallback.weights
