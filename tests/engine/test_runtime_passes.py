"""The gradient-free passes in ONNX Runtime compute what the torch executor computes.

Calibration, evaluation and the per-layer analysis run the float graph (and the exported QDQ
graph) in ORT; the torch executor remains for graphs ORT cannot load and for learning steps.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from qaas_engine import QuantSpec, import_model, load_npz, model_inputs, quantize
from qaas_engine.pipeline import build_sim, build_state
from qaas_engine.reporting.probe import build_probe
from qaas_engine.sessions import THREADS_ENV, session, set_thread_count, thread_count
from qaas_engine.spec import SIMULATION_CHECK_SAMPLES
from qaas_engine.state import Timer
from qaas_engine.tapped import TappedModel


def _calibrated(imported, calibration, *, in_runtime: bool):
    state = build_state(imported, QuantSpec(), calibration, None)
    state.float_weights = dict(state.executor.weights)
    if in_runtime:
        return build_sim(state, Timer())
    spec = state.spec
    from qaas_engine.quant.placement import place_quantizers
    from qaas_engine.quant.sim import QuantSim

    sim = QuantSim(state.executor, place_quantizers(state.model), spec)
    sim.calibrate(state.calibration_arrays)  # no float graph given: the torch executor
    return sim


def test_calibration_in_runtime_matches_the_torch_executor(tiny_imported):
    imported, calibration, _ = tiny_imported
    runtime = _calibrated(imported, calibration, in_runtime=True)
    torch_sim = _calibrated(imported, calibration, in_runtime=False)
    assert runtime.engines["calibration"] == "onnxruntime"
    assert torch_sim.engines["calibration"].startswith("torch")
    assert runtime.activation_encodings.keys() == torch_sim.activation_encodings.keys()
    for name, encoding in runtime.activation_encodings.items():
        other = torch_sim.activation_encodings[name]
        # the same statistics up to float rounding of a different kernel order
        np.testing.assert_allclose(encoding.scale, other.scale, rtol=1e-5)
        assert abs(int(encoding.zero_point[0]) - int(other.zero_point[0])) <= 1


def test_tapped_model_splits_a_batch_to_fit_its_budget(tiny_imported):
    imported, calibration, _ = tiny_imported
    taps = [node.output[0] for node in imported.model.graph.node]
    whole = TappedModel(imported.model, taps)
    tight = TappedModel(imported.model, taps, budget_bytes=1)  # one sample per run
    feeds, _ = next(calibration.batches(16))
    # the first use measures one sample's exposed bytes, and sizes every later chunk by it
    assert tight.chunk_for(feeds) == 1 and whole.chunk_for(feeds) == 16
    [all_at_once] = list(whole.run(feeds))
    chunks = list(tight.run(feeds))
    assert len(chunks) == 16
    for tap in whole.exposed:
        joined = np.concatenate([chunk[tap] for chunk in chunks])
        np.testing.assert_allclose(joined, all_at_once[tap], rtol=1e-5, atol=1e-6)


def test_tapped_model_reads_graph_inputs_from_the_feeds_and_names_unreachable_taps(tiny_imported):
    imported, calibration, _ = tiny_imported
    model = TappedModel(imported.model, ["input", "no_such_tensor"])
    feeds, _ = next(calibration.batches(4))
    [values] = list(model.run(feeds))
    assert np.array_equal(values["input"], feeds["input"])
    assert model.unreachable == ["no_such_tensor"]


def test_probe_with_switches_off_is_the_float_model_and_one_switch_quantizes_one_layer(
    tiny_imported,
):
    imported, calibration, _ = tiny_imported
    sim = _calibrated(imported, calibration, in_runtime=True)
    float_model = build_state(imported, QuantSpec(), calibration, None).model
    weights = dict(sim.weight_encodings)
    activations = dict(sim.activation_encodings)
    probe = build_probe(float_model, weights, activations)
    feeds, _ = next(calibration.batches(8))
    reference = session(float_model).run(None, feeds)[0]
    # equal up to float rounding: the switches change which kernels ORT fuses
    np.testing.assert_allclose(probe.run(feeds), reference, rtol=1e-5, atol=1e-6)
    name, encoding = next(iter(weights.items()))
    quantized = onnx.ModelProto()
    quantized.CopyFrom(float_model)
    for init in quantized.graph.initializer:
        if init.name == name:
            array = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(encoding.fake_quantize_array(array), name))
    expected = session(quantized).run(None, feeds)[0]
    np.testing.assert_allclose(probe.run(feeds, weight=name), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(probe.run(feeds, weight=name), reference)


def test_report_says_which_engine_ran_each_pass_and_bounds_evaluation(tiny_imported):
    imported, calibration, evaluation = tiny_imported
    report = quantize(
        imported, QuantSpec(max_evaluation_samples=20), calibration=calibration,
        evaluation=evaluation,
    ).report  # fmt: skip
    assert report["engines"]["calibration"] == "onnxruntime"
    assert report["metrics"]["engines"]["float"] == "onnxruntime"
    assert report["metrics"]["samples"] == {"measured": 20, "available": 48, "simulated": 16}
    assert report["metrics"]["onnxruntime"]["samples"] == 20
    assert report["analysis"]["engine"] == "onnxruntime"
    everything = quantize(
        imported, QuantSpec(max_evaluation_samples="all"), calibration=calibration,
        evaluation=evaluation,
    ).report  # fmt: skip
    assert everything["metrics"]["samples"] == {"measured": 48, "available": 48, "simulated": 16}


def test_the_simulation_is_a_sampled_check_on_the_first_samples_measured(tiny_imported):
    """By default the simulation runs on the first SIMULATION_CHECK_SAMPLES samples, cut out of
    a batch (32 here) that holds more; its figures are those of the deployed graph on the same
    samples (the tiny net's simulation is exact), and the deployed figures cover them all."""
    imported, calibration, evaluation = tiny_imported
    assert SIMULATION_CHECK_SAMPLES == 16

    def metrics(**spec: object) -> dict:
        spec = {"max_evaluation_samples": "all", **spec}
        data = {"calibration": calibration, "evaluation": evaluation}
        return quantize(imported, QuantSpec(**spec), **data).report["metrics"]

    sampled, on_sixteen = metrics(), metrics(max_evaluation_samples=16)
    assert sampled["samples"] == {"measured": 48, "available": 48, "simulated": 16}
    assert sampled["simulated"]["samples"] == 16 and sampled["onnxruntime"]["samples"] == 48
    assert sampled["simulation_vs_onnxruntime"]["max_abs_diff"] == 0
    assert sampled["simulated"]["sqnr_db"] == on_sixteen["onnxruntime"]["sqnr_db"]
    assert sampled["simulated"]["top1"] == on_sixteen["onnxruntime"]["top1"]
    assert sampled["onnxruntime"]["sqnr_db"] != on_sixteen["onnxruntime"]["sqnr_db"]
    assert "first 16 of the 48 samples" in sampled["engines"]["simulated"]
    every = metrics(max_simulation_samples="all")
    assert every["samples"]["simulated"] == 48
    assert every["simulated"] == every["onnxruntime"]
    assert "first" not in every["engines"]["simulated"]


def test_thread_count_comes_from_the_environment_else_every_core(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert thread_count() >= 1
    monkeypatch.setenv(THREADS_ENV, "1")
    assert thread_count() == 1
    monkeypatch.setenv(THREADS_ENV, "zero")
    with pytest.raises(ValueError, match=THREADS_ENV):
        thread_count()
    pinned = []
    monkeypatch.setattr(torch, "set_num_threads", pinned.append)  # keep this process's pool
    set_thread_count(2)
    assert thread_count() == 2 and pinned == [2]


def test_same_threads_and_seed_give_the_same_model(tiny_imported, monkeypatch):
    imported, calibration, _ = tiny_imported
    monkeypatch.setenv(THREADS_ENV, "2")
    first = quantize(imported, QuantSpec(), calibration=calibration)
    second = quantize(imported, QuantSpec(), calibration=calibration)
    assert first.quantized_model.SerializeToString() == second.quantized_model.SerializeToString()


def test_without_evaluation_data_the_report_measures_a_sample_of_the_calibration_data(
    tiny_imported, tmp_path
):
    imported, _, _ = tiny_imported
    path = tmp_path / "calibration.npz"
    rng = np.random.default_rng(1)
    np.savez(path, input=rng.standard_normal((100, 1, 8, 8)).astype(np.float32))
    calibration = load_npz(path, model_inputs(imported.model))
    report = quantize(imported, QuantSpec(), calibration=calibration).report
    assert report["metrics"]["dataset"] == "calibration"
    assert report["metrics"]["samples"] == {"measured": 64, "available": 100, "simulated": 16}
    asked = quantize(imported, QuantSpec(max_evaluation_samples="all"), calibration=calibration)
    assert asked.report["metrics"]["samples"] == {
        "measured": 100,
        "available": 100,
        "simulated": 16,
    }


def test_samples_whose_batch_is_not_on_axis_0_are_never_cut(tmp_path):
    """A sequence-first input with a fixed batch of 1 ([steps, 1, features]), given stacked:
    the ORT passes run each sample whole instead of slicing it along its time axis."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["out"])],
        "seq_first",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [5, 1, 3])],
        [weight],
    )
    path = tmp_path / "seq_first.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    data = tmp_path / "calibration.npz"
    np.savez(data, x=rng.standard_normal((12, 5, 1, 4)).astype(np.float32))
    imported = import_model(path)
    calibration = load_npz(data, model_inputs(imported.model))
    assert calibration.one_at_a_time
    report = quantize(imported, QuantSpec(), calibration=calibration).report
    assert report["engines"]["calibration"] == "onnxruntime"
    assert report["metrics"]["samples"] == {"measured": 12, "available": 12, "simulated": 12}
    assert report["analysis"]["samples"] == 12 and report["analysis"]["engine"] == "onnxruntime"
    assert report["model"]["macs"] == 5 * 4 * 3


def test_a_scalar_input_goes_whole_into_every_piece():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"]), helper.make_node("Relu", ["y"], ["out"])],
        "scaled",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": np.arange(24, dtype=np.float32).reshape(6, 4), "s": np.array(-2.0, np.float32)}
    tapped = TappedModel(model, ["y"], budget_bytes=1)
    assert tapped.chunk_for(feeds) == 1
    pieces = list(tapped.run(feeds))
    assert len(pieces) == 6
    np.testing.assert_array_equal(np.concatenate([p["y"] for p in pieces]), feeds["x"] * -2.0)


def test_the_probe_quantizes_the_weights_it_is_given(tiny_imported):
    imported, calibration, _ = tiny_imported
    sim = _calibrated(imported, calibration, in_runtime=True)
    float_model = build_state(imported, QuantSpec(), calibration, None).model
    name, encoding = next(iter(sim.weight_encodings.items()))
    current = next(i for i in float_model.graph.initializer if i.name == name)
    moved = onnx.numpy_helper.to_array(current) * 0.5  # as a quantized step may have left it
    probe = build_probe(float_model, {name: encoding}, {}, quantize_from={name: moved})
    default = build_probe(float_model, {name: encoding}, {})
    feeds, _ = next(calibration.batches(8))
    assert not np.allclose(probe.run(feeds, weight=name), default.run(feeds, weight=name))
    np.testing.assert_allclose(probe.run(feeds), default.run(feeds))  # switches off: float


def test_one_sample_shapes_are_run_once_per_executor(tiny_imported, monkeypatch):
    """The rules' budget, the report's MACs and the energy report ask for the same sample's
    shapes: one session and run, not one each."""
    from qaas_engine.cost import shapes as shape_module
    from qaas_engine.graph.lazy import LazyExecutor

    runs = []
    measure = shape_module._measure_shapes

    def counted(*args, **kwargs):
        runs.append(1)
        return measure(*args, **kwargs)

    monkeypatch.setattr(shape_module, "_measure_shapes", counted)
    imported, calibration, _ = tiny_imported
    report = quantize(imported, QuantSpec(), calibration=calibration).report
    assert report["model"]["macs"] > 0 and report["energy"]["float_pj"] > 0
    assert len(runs) == 1

    model = imported.model
    executor = LazyExecutor(model)
    sample = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    macs = shape_module.macs_per_sample(model, executor, {"input": sample})
    assert shape_module.macs_per_sample(model, executor, {"input": sample.copy()}) == macs
    assert len(runs) == 2  # an equal sample: the shapes already measured
    shape_module.macs_per_sample(model, executor, {"input": sample + 1})
    assert len(runs) == 3  # other values (a data-dependent shape could differ): run again


def test_the_default_check_on_calibration_data_is_bounded_by_work(tiny_imported, monkeypatch):
    """Without evaluation data the report measures at most CALIBRATION_CHECK_MACS of work on
    the calibration data (a count from the model, never from a clock); asked, it measures all."""
    from qaas_engine import spec as spec_module
    from qaas_engine.spec import calibration_check_samples

    assert calibration_check_samples(0) == spec_module.CALIBRATION_CHECK_SAMPLES
    assert calibration_check_samples(1000) == spec_module.CALIBRATION_CHECK_SAMPLES
    assert calibration_check_samples(int(spec_module.CALIBRATION_CHECK_MACS // 20)) == 20
    assert calibration_check_samples(10**15) == spec_module.CALIBRATION_CHECK_MIN_SAMPLES

    imported, calibration, _ = tiny_imported
    small = quantize(imported, QuantSpec(), calibration=calibration).report
    assert "limit" not in small["metrics"]["samples"]  # a small model: the count bound alone
    macs = small["model"]["macs"]
    monkeypatch.setattr(spec_module, "CALIBRATION_CHECK_MACS", macs * 10)
    bounded = quantize(imported, QuantSpec(), calibration=calibration).report
    assert bounded["metrics"]["samples"]["measured"] == 10
    assert bounded["metrics"]["samples"]["limit"]["samples"] == 10
    assert bounded["metrics"]["onnxruntime"]["samples"] == 10
    everything = quantize(
        imported, QuantSpec(max_evaluation_samples="all"), calibration=calibration
    ).report
    assert everything["metrics"]["samples"]["measured"] == calibration.num_samples


def test_evaluation_reuses_the_rules_run_of_the_same_graph_on_the_same_samples(
    tiny_imported, monkeypatch
):
    """The rules ran the exported graph as deployed on the first calibration samples; the
    evaluation on the calibration data takes those outputs where graph and feeds are the same,
    emulated integer kernels or not, and its figures are exactly those of running them again."""
    from qaas_engine.simulated_runs import SimulatedRuns

    imported, calibration, _ = tiny_imported
    spec = QuantSpec(batch_size=8)  # the rules measure on one batch of 8: the same first batch
    reused = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert reused["simulation_kernels"]["emulated"]
    assert "1 batches kept from the rules' run" in reused["engines"]["onnxruntime"]
    assert "kept from the rules' run" not in reused["engines"]["simulated"]

    monkeypatch.setattr(SimulatedRuns, "lookup", lambda *args, **kwargs: None)
    again = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert again["engines"]["onnxruntime"] == "onnxruntime, default optimizations"
    for key in ("float", "simulated", "onnxruntime", "simulation_vs_onnxruntime", "outputs"):
        assert reused[key] == again[key]


def test_rules_measuring_with_the_optimizer_off_give_the_evaluation_its_simulation(
    tiny_imported, monkeypatch
):
    """Where the rules measure with the optimizer off (VNNI kernels forced on a CPU without an
    int8 dot product) and ORT fuses nothing the simulation emulates, the evaluation's simulated
    outputs are the rules' run of the same graph; its figures are those of running it again."""
    from qaas_engine import evaluation, rules
    from qaas_engine.ort_emulation import Emulation
    from qaas_engine.simulated_runs import SimulatedRuns

    imported, calibration, _ = tiny_imported
    spec = QuantSpec(batch_size=8, max_simulation_samples="all")
    monkeypatch.setattr(rules, "deployed_measurement", lambda kernels: False)
    # where ORT fuses integer kernels, the simulation computes them as ORT does: another graph
    # than the rules ran, so nothing is reused
    emulating = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert emulating["simulation_kernels"]["emulated"]
    assert "kept from the rules' run" not in emulating["engines"]["simulated"]
    assert "kept from the rules' run" not in emulating["engines"]["onnxruntime"]
    monkeypatch.setattr(evaluation, "emulated", lambda qdq, optimized: Emulation(qdq))
    reused = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert "1 batches kept from the rules' run" in reused["engines"]["simulated"]

    monkeypatch.setattr(SimulatedRuns, "lookup", lambda *args, **kwargs: None)
    again = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert again["engines"]["simulated"] == f"onnxruntime, {evaluation.SIMULATION_SESSION}"
    for key in ("float", "simulated", "onnxruntime", "simulation_vs_onnxruntime", "outputs"):
        assert reused[key] == again[key]


def test_evaluation_batches_as_the_rules_did_to_reuse_their_run(tiny_imported, monkeypatch):
    """With the default batch size (32) the evaluation still takes the rules' run of the first
    8 samples: it cuts its batches as the rules did, and reads calibration's float outputs by
    sample whatever batches calibration ran (before, a batch of 32 matched neither, and a large
    detector ran its exported graph again). The figures are those of running everything."""
    from qaas_engine import evaluation
    from qaas_engine.simulated_runs import SimulatedRuns

    imported, calibration, _ = tiny_imported
    spec = QuantSpec()
    assert spec.batch_size > 8 and calibration.num_samples > 8
    reused = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert "1 batches kept from the rules' run" in reused["engines"]["onnxruntime"]
    assert "batches kept from calibration" in reused["engines"]["float"]

    monkeypatch.setattr(SimulatedRuns, "lookup", lambda *args, **kwargs: None)
    monkeypatch.setattr(SimulatedRuns, "reference", lambda *args: None)
    monkeypatch.setattr(evaluation, "_kept_output", lambda *args: None)
    again = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert again["engines"]["onnxruntime"] == "onnxruntime, default optimizations"
    assert again["engines"]["float"] == "onnxruntime"
    assert reused["samples"] == again["samples"]
    for key in ("float", "simulated", "onnxruntime", "simulation_vs_onnxruntime"):
        for metric, value in reused[key].items():
            if isinstance(value, float):
                assert value == pytest.approx(again[key][metric], abs=1e-3), (key, metric)
            else:
                assert value == again[key][metric], (key, metric)


def test_simulated_runs_answer_only_for_the_same_graph_and_the_same_feeds(tiny_imported):
    from qaas_engine.simulated_runs import SimulatedRuns, graph_digest

    imported, _, _ = tiny_imported
    feeds = {"input": np.ones((2, 1, 8, 8), np.float32)}
    runs = SimulatedRuns([feeds])
    digest = graph_digest(imported.model)
    runs.record(digest, [[np.zeros((2, 10), np.float32)]], optimized=True)
    assert runs.lookup(digest, 0, {"input": feeds["input"].copy()}, optimized=True) is not None
    assert runs.lookup(digest, 0, feeds, optimized=False) is None  # a session made another way
    assert runs.lookup(digest, 1, feeds, optimized=True) is None  # a batch it never ran
    assert runs.lookup(digest, 0, {"input": feeds["input"] * 2}, optimized=True) is None
    assert runs.lookup(digest, 0, {"input": feeds["input"][:1]}, optimized=True) is None
    other = onnx.ModelProto()
    other.CopyFrom(imported.model)
    other.graph.node[0].name += "_renamed"
    assert graph_digest(other) != digest
    assert runs.lookup(graph_digest(other), 0, feeds, optimized=True) is None
    weights = onnx.ModelProto()
    weights.CopyFrom(imported.model)
    first = weights.graph.initializer[0]
    changed = onnx.numpy_helper.to_array(first) + 1
    first.CopyFrom(onnx.numpy_helper.from_array(changed.astype(changed.dtype), first.name))
    assert graph_digest(weights) != digest  # the weights count, not only the graph
    shaped = onnx.ModelProto()
    shaped.CopyFrom(imported.model)
    first = shaped.graph.initializer[0]
    first.dims[:] = [int(np.prod(first.dims))]  # the same bytes in another shape
    assert graph_digest(shaped) != digest
    typed = onnx.ModelProto()
    typed.CopyFrom(imported.model)
    first = typed.graph.initializer[0]
    values = onnx.numpy_helper.to_array(first)
    assert values.dtype == np.float32
    first.ClearField("raw_data")  # the same values in the typed field: serialized whole
    first.float_data.extend(values.reshape(-1).tolist())
    typed_digest = graph_digest(typed)
    assert typed_digest not in (digest, None)
    first.float_data[0] += 1.0
    assert graph_digest(typed) != typed_digest


def test_measuring_a_graph_measured_before_runs_nothing_and_gives_the_same_figure(
    tiny_imported, monkeypatch
):
    """The rules come back to grids they measured (a candidate tried, then the one before it):
    the same graph on the same samples takes its recorded outputs, no session is made, and the
    figure is the first measurement's; another graph is measured in ONNX Runtime again."""
    from qaas_engine import rules

    imported, calibration, _ = tiny_imported
    state = build_state(imported, QuantSpec(), calibration, None)
    sim = build_sim(state, Timer())
    measured = rules.probe(state)
    assert measured is not None and measured.simulated is not None
    first = measured.sqnr_db(state.model, sim)
    made = []
    real_session = rules.session
    monkeypatch.setattr(rules, "session", lambda *a, **k: made.append(1) or real_session(*a, **k))
    assert measured.sqnr_db(state.model, sim) == first
    assert made == []
    name = sorted(sim.activation_encodings)[0]
    sim.activation_encodings[name] = sim.activation_encodings[name].scaled(2.0)
    sim.invalidate()
    measured.sqnr_db(state.model, sim)
    assert made == [1]


def test_a_bounded_check_reads_the_float_outputs_calibration_computed(tiny_imported, monkeypatch):
    """A check bounded below the batch size measures the first rows of calibration's first
    batch: their float outputs were computed while calibrating, not run again."""
    from qaas_engine import evaluation
    from qaas_engine import spec as spec_module
    from qaas_engine.simulated_runs import SimulatedRuns

    imported, calibration, _ = tiny_imported
    spec = QuantSpec(batch_size=32)
    macs = quantize(imported, spec, calibration=calibration).report["model"]["macs"]
    monkeypatch.setattr(spec_module, "CALIBRATION_CHECK_MACS", macs * 10)
    kept = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert kept["samples"]["measured"] == 10
    # every batch of the check (cut as the rules cut theirs: 8, then 2) read them
    assert kept["engines"]["float"] == "onnxruntime, 2 batches kept from calibration"

    monkeypatch.setattr(evaluation, "_kept_output", lambda *args: None)
    monkeypatch.setattr(SimulatedRuns, "reference", lambda *args: None)  # nor the probe's
    again = quantize(imported, spec, calibration=calibration).report["metrics"]
    assert again["engines"]["float"] == "onnxruntime"
    for key in ("simulated", "onnxruntime"):  # the same samples' float outputs, either way
        assert kept[key]["sqnr_db"] == pytest.approx(again[key]["sqnr_db"], abs=0.01)
        assert kept[key]["top1_agreement"] == again[key]["top1_agreement"]


def test_sessions_let_idle_threads_sleep():
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        )
    )
    options = session(model, threads=2).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_torch_threads_sleep_only_where_torch_is_not_loaded_and_no_policy_is_set(monkeypatch):
    import os
    import sys

    from qaas_engine.sessions import sleeping_torch_threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    sleeping_torch_threads()  # torch is loaded in this process: its pool cannot change
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    sleeping_torch_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    sleeping_torch_threads()  # a user's choice stands
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_exporting_again_reuses_the_weight_integers_only_on_the_same_grid(tiny_imported):
    import dataclasses

    from qaas_engine.export.qdq import export_qdq
    from qaas_engine.quant.encoding import Encoding

    imported, calibration, _ = tiny_imported
    sim = _calibrated(imported, calibration, in_runtime=True)
    model = imported.model
    first = export_qdq(model, sim).SerializeToString()
    assert sim.weight_integers  # kept for the next export
    assert export_qdq(model, sim).SerializeToString() == first
    # another grid on one weight: its integers are computed again, as a fresh export does
    name, encoding = next(iter(sim.weight_encodings.items()))
    scheme = dataclasses.replace(encoding.scheme, bits=4)
    sim.weight_encodings[name] = Encoding.from_range(scheme, encoding.low, encoding.high)
    again = export_qdq(model, sim).SerializeToString()
    sim.weight_integers.clear()
    assert again == export_qdq(model, sim).SerializeToString() != first
