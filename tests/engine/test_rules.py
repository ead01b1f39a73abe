"""Rules for the ways real models break, on by default, each reported, all off with strict bits:
a join of very different ranges (boxes in pixels beside probabilities) stays float."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.artifacts.html import render_html
from tests.conftest import export_legacy
from tests.engine.test_fidelity import _model
from tests.support.strict_sims import strict_sim


def test_a_join_of_very_different_ranges_stays_float_and_says_why(tmp_path):
    imported, calibration = _model(tmp_path)
    strict = quantize(imported, QuantSpec(strict_bits=True), calibration=calibration).report
    ruled = quantize(imported, QuantSpec(), calibration=calibration).report

    assert strict["rules"] == [] and strict["strict_bits"] is True
    (line,) = ruled["rules"]
    assert line["rule"] == "wide_join" and "Concat" in line["node"]
    assert "kept the join in float" in line["action"] and "differ" in line["why"]
    assert "rule wide_join" in render_html(ruled) and "rule wide_join" not in render_html(strict)

    before = strict["metrics"]["outputs"]["detections"]["onnxruntime"]
    after = ruled["metrics"]["outputs"]["detections"]["onnxruntime"]
    # the scores (channels 4..6) no longer sit on the boxes' grid
    assert after["worst_channel_sqnr_db"] > before["worst_channel_sqnr_db"] + 15
    assert after["worst_channel_sqnr_db"] > 30
    # and simulation = runtime still holds for the float join
    gap = ruled["metrics"]["outputs"]["detections"]["simulation_vs_onnxruntime"]
    assert gap["sqnr_db"] > 40


def test_joins_of_similar_ranges_are_left_alone(tiny_imported):
    imported, calibration, _ = tiny_imported
    report = quantize(imported, QuantSpec(), calibration=calibration).report
    assert report["rules"] == [] and report["strict_bits"] is False


class OutlierChannel(torch.nn.Module):
    """One channel of the first conv's output is 1000x the others (as an exporter's folded
    scales leave it), and a depthwise conv scales it back: one 8-bit grid over that tensor
    leaves the small channels a level or two, so the output is destroyed unless the tensor gets
    16 bits (the weights, per channel, lose nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.second = torch.nn.Conv2d(4, 4, 1, groups=4)
        with torch.no_grad():
            self.first.weight[0] *= 1000.0
            self.first.bias[0] *= 1000.0
            self.second.weight[0] /= 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x)).mean((2, 3))


def _outlier_channel(tmp_path):
    torch.manual_seed(0)
    model = export_legacy(OutlierChannel().eval(), tmp_path / "m.onnx", torch.randn(1, 1, 8, 8))
    data = tmp_path / "c.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((32, 1, 8, 8), np.float32))
    imported = import_model(model)
    return imported, load_npz(data, model_inputs(imported.model))


def test_a_tensor_that_8_bits_destroy_gets_16_bits_and_says_why(tmp_path):
    imported, calibration = _outlier_channel(tmp_path)
    strict = quantize(imported, QuantSpec(strict_bits=True), calibration=calibration).report
    ruled = quantize(imported, QuantSpec(), calibration=calibration).report

    assert strict["metrics"]["onnxruntime"]["sqnr_db"] < 20
    lines = [line for line in ruled["rules"] if line["rule"] == "sensitive_tensor"]
    assert lines and all("16-bit" in line["action"] for line in lines)
    assert len(lines) <= 4 and "dB" in lines[0]["why"]
    assert ruled["metrics"]["onnxruntime"]["sqnr_db"] > 30
    assert ruled["metrics"]["simulation_vs_onnxruntime"]["sqnr_db"] > 40
    assert ruled["metrics"]["runtime_graph"]["sixteen_bit_qdq"] >= 1


def test_pricing_that_would_overrun_its_budget_is_skipped_and_says_so(tmp_path):
    from qaas_engine.pipeline import build_sim, build_state
    from qaas_engine.rules import sensitive_tensors
    from qaas_engine.state import Timer

    imported, calibration = _outlier_channel(tmp_path)
    state = build_state(imported, QuantSpec(strict_bits=True), calibration, None)
    sim = build_sim(state, Timer())
    before = dict(sim.activation_encodings)
    (line,) = sensitive_tensors(state, sim, budget=0.0)
    assert line.action.startswith("not applied") and "budget" in line.why
    assert sim.activation_encodings == before


class SpikedInput(torch.nn.Module):
    """Two convs; a calibration set with one spiked pixel stretches the first conv's min/max
    range about 60x past what every other sample reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.second = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def _spiked(tmp_path):
    torch.manual_seed(0)
    model = export_legacy(SpikedInput().eval(), tmp_path / "m.onnx", torch.randn(1, 1, 32, 32))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((32, 1, 32, 32), np.float32)
    images[20, 0, 4, 4] = 200.0  # one sensor glitch among 32,768 pixels
    data = tmp_path / "c.npz"
    np.savez(data, input=images)
    held_out = tmp_path / "e.npz"
    np.savez(held_out, input=rng.standard_normal((64, 1, 32, 32), np.float32))
    imported = import_model(model)
    inputs = model_inputs(imported.model)
    return imported, load_npz(data, inputs), load_npz(held_out, inputs)


def test_ranges_a_glitch_stretched_are_set_again_by_the_estimator_that_measures_best(tmp_path):
    imported, calibration, evaluation = _spiked(tmp_path)

    def run(spec: QuantSpec):
        return quantize(imported, spec, calibration=calibration, evaluation=evaluation)

    strict, ruled = run(QuantSpec(strict_bits=True)).report, run(QuantSpec())
    named = run(QuantSpec(calibration_method="minmax"))

    (line,) = [line for line in ruled.report["rules"] if line["rule"] == "range_method"]
    chosen = line["action"].split(" by the ")[1].split()[0]
    assert chosen in ("mse", "percentile") and "minmax" in line["why"]
    # scored on the 8 probe samples with ranges set on the other 24: fitting them cannot win
    assert "ranges set on the other 24 calibration samples" in line["why"]
    # measured on held-out data the rules never saw
    before = strict["metrics"]["onnxruntime"]["sqnr_db"]
    assert ruled.report["metrics"]["onnxruntime"]["sqnr_db"] > before + 6
    assert ruled.report["metrics"]["simulation_vs_onnxruntime"]["sqnr_db"] > 35
    # the encodings say which estimator set the ranges; a named estimator is kept as given
    assert ruled.encodings["quantizer_args"]["quant_scheme"] == chosen
    assert not [line for line in named.report["rules"] if line["rule"] == "range_method"]
    assert named.encodings["quantizer_args"]["quant_scheme"] == "minmax"


class AliasedActivation(torch.nn.Module):
    """A conv whose output is also read under a second name (an Identity), then two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.second = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.first(x * 2.0))
        return self.second(hidden).mean((2, 3)) + hidden.mean((1, 2, 3))[:, None]


def _zero_probe_noise(sim, feeds):
    """The estimate as first written: a zero tensor added at every activation, its gradient
    read. The reference the cheaper pass must match exactly."""
    from qaas_engine.quant.sensitivity import PROJECTIONS, NoiseEstimate, _noise_power
    from qaas_engine.tensors import to_torch

    executor = sim.torch_executor()
    weights = {n: executor.weights[n].detach().requires_grad_(True) for n in sim.weight_encodings}
    probes = {}

    def hook(name, value):
        if name in sim.activation_encodings and value.is_floating_point():
            probes[name] = torch.zeros_like(value, requires_grad=True)
            return value + probes[name]
        return value

    generator = torch.Generator().manual_seed(0)
    estimate = NoiseEstimate()
    assert PROJECTIONS == 1
    outputs = executor.run(to_torch(dict(feeds)), hook=hook, weights=weights)
    floats = [o for o in outputs.values() if o.is_floating_point()]
    estimate.signal = float(sum(float((o.detach() ** 2).sum()) for o in floats))
    projection = torch.stack(
        [(torch.randn(o.shape, generator=generator) * o).sum().float() for o in floats]
    ).sum()
    names, tensors = [*probes, *weights], [*probes.values(), *weights.values()]
    grads = torch.autograd.grad(projection, tensors, allow_unused=True)
    for name, grad in zip(names, grads, strict=True):
        if grad is not None:
            table = estimate.activations if name in probes else estimate.weights
            encodings = sim.activation_encodings if name in probes else sim.weight_encodings
            table[name] = _noise_power(encodings[name], grad)
    return estimate


def test_noise_pricing_reads_computed_tensors_own_gradients_exactly(tmp_path, monkeypatch):
    """The pricing pass takes the gradient of each computed activation itself instead of a
    zero tensor added to it (an allocation and an addition per activation: about half of the
    pass on PP-OCRv4's detector); the feed and an aliased name still get a zero probe each.
    The estimate is the same to the bit."""
    from qaas_engine.quant import sensitivity

    state, sim, calibration = strict_sim(AliasedActivation, tmp_path, (1, 1, 8, 8), 8)
    feeds = next(calibration.batches(4, 4))[0]

    expected = _zero_probe_noise(sim, feeds)
    zeros = []
    real_zeros_like = torch.zeros_like
    monkeypatch.setattr(
        torch, "zeros_like", lambda *a, **k: zeros.append(1) or real_zeros_like(*a, **k)
    )
    estimate = sensitivity.estimate_noise(sim, feeds, seed=0)

    assert estimate.signal == expected.signal
    assert estimate.activations == expected.activations and len(estimate.activations) >= 3
    assert estimate.weights == expected.weights and estimate.weights
    # only what the graph did not compute from the weights gets a zero probe
    assert 0 < len(zeros) < len(estimate.activations)


def _probe_both_ways(imported, calibration, spec, monkeypatch):
    """The rules' probe read from calibration's pass, and run on its own, on the same sim."""
    from qaas_engine import rules
    from qaas_engine.pipeline import build_state, calibrate
    from qaas_engine.quant.placement import place_quantizers
    from qaas_engine.quant.sim import QuantSim
    from qaas_engine.tapped import TappedModel

    state = build_state(imported, spec, calibration, None)
    sim = QuantSim(state.executor, place_quantizers(state.model), spec)
    sim.compute_weight_encodings()
    calibrate(state, sim)  # as build_sim does, before the rules
    assert state.calibration_probe is not None
    runs = []
    real_run = TappedModel.run
    monkeypatch.setattr(
        TappedModel, "run", lambda self, feeds: runs.append(1) or real_run(self, feeds)
    )
    recorded = rules.probe(state, sim)
    assert runs == []  # no float pass of its own
    assert state.calibration_probe is None
    own = rules.probe(state, sim)
    assert runs  # nothing recorded left: it ran the float model
    return recorded, own


def _same_probe(recorded, own):
    assert recorded.samples == own.samples
    assert len(recorded.references) == len(own.references)
    for mine, theirs in zip(recorded.references, own.references, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
    assert recorded.stats.keys() == own.stats.keys() and recorded.stats
    for name, stats in own.stats.items():
        mine = recorded.stats[name]
        assert sum(v.size for v in mine.values) == sum(v.size for v in stats.values)
        np.testing.assert_array_equal(np.concatenate(mine.values), np.concatenate(stats.values))


def test_the_probe_reads_the_samples_calibration_ran_instead_of_running_them_again(
    tiny_imported, monkeypatch
):
    """The rules' probe (float outputs and attention statistics of the first 8 calibration
    samples) is recorded while calibration runs those samples: batched data (a calibration
    batch of 32 holds the 8), the same figures as a pass of its own."""
    imported, calibration, _ = tiny_imported
    assert not calibration.one_at_a_time and calibration.num_samples > 8
    _same_probe(*_probe_both_ways(imported, calibration, QuantSpec(), monkeypatch))


def test_the_probe_reads_samples_calibration_ran_one_at_a_time(tmp_path, monkeypatch):
    imported, calibration = _outlier_channel(tmp_path)
    one = _one_at_a_time(calibration)
    _same_probe(*_probe_both_ways(imported, one, QuantSpec(), monkeypatch))


def _one_at_a_time(calibration):
    from qaas_engine.data import Dataset

    return Dataset(
        dict(calibration.arrays),
        dict(calibration.stacked),
        calibration.labels,
        calibration.num_samples,
        one_at_a_time=True,
    )


def _streamed(tmp_path):
    """A stream's step: y = x + (s * (1 + x / 100) - s), the state ``s`` zero in the first
    chunk (a stream's start) and up to 100 in the rest, where its product and difference on
    8-bit grids leave a fraction of a step of x / 100 * s (a cancellation, as the STFT power
    spectrum and an LSTM's cell state on Silero VAD). Batch fixed at 1: calibration comes one
    sample at a time."""
    from onnx import TensorProto, helper

    width = 8
    nodes = [
        helper.make_node("Mul", ["x", "hundredth"], ["scaled"]),
        helper.make_node("Add", ["scaled", "one"], ["gate"]),
        helper.make_node("Mul", ["s", "gate"], ["gated"]),
        helper.make_node("Sub", ["gated", "s"], ["change"]),
        helper.make_node("Add", ["x", "change"], ["y"]),
    ]
    constants = [
        helper.make_tensor("hundredth", TensorProto.FLOAT, [], [0.01]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, width]) for n in "xs"]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])
    graph = helper.make_graph(nodes, "stream", inputs, [output], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "stream.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    # enough chunks that the rules' budget (3 forwards a calibration sample) prices 8 of them
    x = rng.standard_normal((96, 1, width)).astype(np.float32)
    s = rng.uniform(-100, 100, (96, 1, width)).astype(np.float32)
    s[0] = 0.0  # the stream starts from a zero state
    data = tmp_path / "c.npz"
    np.savez(data, x=x, s=s)
    imported = import_model(str(path))
    return imported, load_npz(data, model_inputs(imported.model))


def test_a_stream_is_priced_on_more_than_its_first_chunk(tmp_path):
    imported, calibration = _streamed(tmp_path)
    assert calibration.one_at_a_time
    spec = QuantSpec(calibration_method="minmax")
    strict = quantize(imported, QuantSpec(strict_bits=True), calibration=calibration).report
    ruled = quantize(imported, spec, calibration=calibration).report

    assert strict["metrics"]["onnxruntime"]["sqnr_db"] < 20
    # the first chunk's noise is all x's (s = 0 is on every grid): priced on it alone, nothing
    # is promoted; priced on the probe's chunks, the cancelling product is
    lines = [line for line in ruled["rules"] if line["rule"] == "sensitive_tensor"]
    kept = [line["node"] for line in lines if line["action"].startswith("16-bit")]
    assert "gated" in kept, lines
    after, before = (r["metrics"]["onnxruntime"]["sqnr_db"] for r in (ruled, strict))
    assert after > before + 10


def test_the_histogram_pass_reads_a_capped_sample_spread_over_the_data(tmp_path, monkeypatch):
    """Past ``HISTOGRAM_SAMPLES`` the rules' histogram pass reads every k-th batch after the
    probe's samples (the last part of an ordered set too); at or under it, every sample."""
    from qaas_engine import rules
    from qaas_engine.tapped import TappedModel
    from tests.support.strict_sims import Branchy

    state, sim, _ = strict_sim(Branchy, tmp_path, (1, 1, 12, 12), 40)
    state.spec = state.spec.model_copy(update={"batch_size": 2})
    whole = rules.calibration_histograms(state, sim, skip=8)
    assert whole.samples == 32 and whole.apart
    read: list[float] = []
    run = TappedModel.run

    def recording(self, feeds):
        read.append(float(np.asarray(feeds["input"])[0].sum()))  # which batch, by its values
        return run(self, feeds)

    monkeypatch.setattr(TappedModel, "run", recording)
    monkeypatch.setattr(rules, "HISTOGRAM_SAMPLES", 8)
    capped = rules.calibration_histograms(state, sim, skip=8)
    # 16 batches of 2 past the probe, every 4th: batches 0, 4, 8 and 12 of them
    values = np.load(tmp_path / "c.npz")["input"]
    expected = [float(values[8 + 2 * i].sum()) for i in (0, 4, 8, 12)]
    np.testing.assert_allclose(read, expected, rtol=1e-6)
    assert capped.samples == 8
    assert all(hist.counts.sum() > 0 for hist in capped.histograms.values())
    assert sum(h.counts.sum() for h in capped.histograms.values()) < sum(
        h.counts.sum() for h in whole.histograms.values()
    )
