"""The simulation computes ONNX Runtime's integer kernels as ORT computes them: the exported
graph with its fused groups emulated, run with the optimizer off or in the simulation's session
(float ops optimized as deployed, ORT's Q/DQ rewrites off), equals ORT's optimized run bit for
bit, where the plain DQ -> op -> Q graph does not."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qaas_engine.ort_emulation import emulated, load_optimized
from qaas_engine.sessions import session

# int8 weights within [-64, 64]: ORT's u8s8 kernels sum them exactly on any CPU (without an int8
# dot product they add pairs of products in int16, which 8-bit weights overflow; the engine
# exports no such layout for such a CPU: targets.KernelChoice)
WEIGHT_REACH = 64


def _qdq_model() -> onnx.ModelProto:
    """x -> Conv (int8 per-channel weights, int32 bias) -> + x -> * x -> MatMul -> outputs, every
    tensor on a u8 grid; scales chosen so that many results fall on rounding ties."""
    rng = np.random.default_rng(0)
    channels = 8
    inits, nodes = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def q(tensor, scale, zero, out):
        nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [tensor, const(out + "_s", np.float32(scale)), const(out + "_z", np.uint8(zero))],
                [out],
            )
        )
        nodes.append(
            helper.make_node("DequantizeLinear", [out, out + "_s", out + "_z"], [out + "_dq"])
        )
        return out + "_dq"

    x = q("x", 0.1, 128, "xq")
    w_scale = (rng.uniform(0.002, 0.01, channels)).astype(np.float32)
    w = rng.integers(-WEIGHT_REACH, WEIGHT_REACH + 1, (channels, channels, 3, 3)).astype(np.int8)
    bias = rng.integers(-5000, 5000, channels).astype(np.int32)
    const("w", w)
    const("w_s", w_scale)
    const("w_z", np.zeros(channels, np.int8))
    const("b", bias)
    const("b_s", (np.float32(0.1) * w_scale).astype(np.float32))
    const("b_z", np.zeros(channels, np.int32))
    nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["w_dq"], axis=0))
    nodes.append(helper.make_node("DequantizeLinear", ["b", "b_s", "b_z"], ["b_dq"], axis=0))
    nodes.append(helper.make_node("Conv", [x, "w_dq", "b_dq"], ["conv"], pads=[1, 1, 1, 1]))
    conv = q("conv", 0.1, 128, "convq")
    nodes.append(helper.make_node("Add", [conv, x], ["add"]))
    added = q("add", 0.2, 128, "addq")  # (a + b) / 2 on the input grid: half of them ties
    nodes.append(helper.make_node("Mul", [added, x], ["mul"]))
    product = q("mul", 0.3, 128, "mulq")
    const("m", rng.integers(-WEIGHT_REACH, WEIGHT_REACH + 1, (16, 16)).astype(np.int8))
    const("m_s", np.float32(0.013))
    const("m_z", np.int8(0))
    nodes.append(helper.make_node("DequantizeLinear", ["m", "m_s", "m_z"], ["m_dq"]))
    nodes.append(helper.make_node("MatMul", [product, "m_dq"], ["matmul"]))
    matmul = q("matmul", 0.37, 128, "matmulq")
    nodes.append(helper.make_node("Identity", [matmul], ["y"]))
    nodes.append(helper.make_node("MatMul", [x, "m_dq"], ["z"]))  # float out: MatMulIntegerToFloat
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 16, 16])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _session(model: onnx.ModelProto, optimized: bool, save: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if save:
        options.optimized_model_filepath = save
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _simulations(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    """The emulated graph's outputs with the optimizer off, and in the simulation's session,
    where ORT's float passes (NCHWc layout, Conv+Mul folding...) run on the emulation's ops."""
    return [
        _session(model, optimized=False).run(None, feeds),
        session(model, qdq_fusions=False).run(None, feeds),
    ]


def test_emulated_graph_computes_what_onnxruntime_deploys_bit_for_bit():
    model = _qdq_model()
    feeds = {"x": np.random.default_rng(1).normal(0, 4, (1, 8, 16, 16)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as folder:
        saved = str(Path(folder) / "optimized.onnx")
        deployed = _session(model, optimized=True, save=saved).run(None, feeds)
        emulation = emulated(model, load_optimized(saved))
    assert {"QLinearConv", "QLinearAdd", "QLinearMul", "QLinearMatMul"} <= set(emulation.emulated)
    assert "MatMulIntegerToFloat" in emulation.emulated
    plain = _session(model, optimized=False).run(None, feeds)
    # the premise: DQ -> op -> Q in float rounds some ties the other way than ORT's kernels
    assert any(not np.array_equal(p, d) for p, d in zip(plain, deployed, strict=True))
    for simulated in _simulations(emulation.model, feeds):
        for sim, dep in zip(simulated, deployed, strict=True):
            np.testing.assert_array_equal(sim, dep)


def test_groups_onnxruntime_leaves_unfused_are_left_as_exported():
    """No optimized graph fusion named: nothing is rewritten, the graph is the exported one."""
    model = _qdq_model()
    unfused = onnx.ModelProto()
    unfused.CopyFrom(model)
    emulation = emulated(model, unfused)
    assert not emulation.changed and emulation.emulated == {}
    assert emulation.model.SerializeToString() == model.SerializeToString()


def test_report_simulation_equals_onnxruntime_on_a_fused_cnn(tiny_imported):
    """Conv -> Relu -> Q, Conv -> Clip -> Q (ORT drops the activation into the Q) and Gemm:
    the report's simulated outputs are ORT's deployed ones exactly."""
    from qaas_engine import quantize
    from qaas_engine.spec import QuantSpec

    imported, calibration, _ = tiny_imported
    metrics = quantize(imported, QuantSpec(), calibration=calibration).report["metrics"]
    assert metrics["simulation_kernels"]["emulated"] == {"QGemm": 1, "QLinearConv": 2}
    assert metrics["simulation_kernels"]["not_emulated"] == {}
    assert "integer kernels computed as it computes them" in metrics["engines"]["simulated"]
    gap = metrics["simulation_vs_onnxruntime"]
    assert gap["max_abs_diff"] == 0.0 and gap["sqnr_db"] == 200.0


def _softmax_pool_model() -> onnx.ModelProto:
    """Attention-style Softmax on u8 (ORT's QLinearSoftmax: a float32 exp table and a
    floor(1 / s_y) multiplier, not s_y) and a GlobalAveragePool (QLinearGlobalAveragePool)."""
    inits, nodes = [], []

    def qdq(tensor, scale, zero, out):
        inits.append(numpy_helper.from_array(np.float32(scale), out + "_s"))
        inits.append(numpy_helper.from_array(np.uint8(zero), out + "_z"))
        nodes.append(helper.make_node("QuantizeLinear", [tensor, out + "_s", out + "_z"], [out]))
        nodes.append(
            helper.make_node("DequantizeLinear", [out, out + "_s", out + "_z"], [out + "_dq"])
        )
        return out + "_dq"

    x = qdq("x", 0.05, 120, "xq")
    nodes.append(helper.make_node("Softmax", [x], ["soft"], axis=-1))
    nodes.append(helper.make_node("Identity", [qdq("soft", 0.0026678, 0, "softq")], ["y"]))
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    nodes.append(helper.make_node("Identity", [qdq("pool", 0.0173, 101, "poolq")], ["z"]))
    graph = helper.make_graph(
        nodes,
        "softmax_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 24])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_softmax_and_average_pool_kernels_are_emulated_bit_for_bit():
    model = _softmax_pool_model()
    feeds = {"x": np.random.default_rng(2).normal(0, 2, (2, 4, 6, 24)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as folder:
        saved = str(Path(folder) / "optimized.onnx")
        deployed = _session(model, optimized=True, save=saved).run(None, feeds)
        emulation = emulated(model, load_optimized(saved))
    assert emulation.emulated == {"QLinearSoftmax": 1, "QLinearGlobalAveragePool": 1}
    plain = _session(model, optimized=False).run(None, feeds)
    assert not np.array_equal(plain[0], deployed[0])  # floor(1 / s_y): another output grid
    for simulated in _simulations(emulation.model, feeds):
        for sim, dep in zip(simulated, deployed, strict=True):
            np.testing.assert_array_equal(sim, dep)


def test_a_double_qdq_pair_that_onnxruntime_merges_is_simulated_on_its_merged_grid():
    """Q1 -> DQ1 -> Cast -> Q2 -> DQ2 on two grids: ORT drops the no-op Cast and merges the two
    pairs into one on a grid of its own (DoubleQDQPairsRemover); the simulation rounds there."""
    inits, nodes = [], []

    def qdq(tensor, scale, zero, out):
        inits.append(numpy_helper.from_array(np.float32(scale), out + "_s"))
        inits.append(numpy_helper.from_array(np.uint8(zero), out + "_z"))
        nodes.append(helper.make_node("QuantizeLinear", [tensor, out + "_s", out + "_z"], [out]))
        nodes.append(
            helper.make_node("DequantizeLinear", [out, out + "_s", out + "_z"], [out + "_dq"])
        )
        return out + "_dq"

    first = qdq("x", 0.031, 128, "xq")
    nodes.append(helper.make_node("Cast", [first], ["cast"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Sqrt", [qdq("cast", 0.023, 140, "castq")], ["y"]))
    graph = helper.make_graph(
        nodes,
        "double_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    feeds = {"x": np.random.default_rng(3).uniform(0, 3.5, (64, 64)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as folder:
        saved = str(Path(folder) / "optimized.onnx")
        deployed = _session(model, optimized=True, save=saved).run(None, feeds)[0]
        emulation = emulated(model, load_optimized(saved))
    assert emulation.emulated == {"merged Q/DQ pairs": 1}
    plain = _session(model, optimized=False).run(None, feeds)[0]
    assert not np.array_equal(plain, deployed)
    for simulated in _simulations(emulation.model, feeds):
        np.testing.assert_array_equal(simulated[0], deployed)


def test_softmax_keeps_the_exported_axis_where_onnxruntime_moves_a_transpose_across_it():
    """YOLOv8's DFL head: Transpose -> Softmax(axis=1). ORT pushes the transpose past the fused
    QLinearSoftmax and renumbers that kernel's axis; the exported axis is the one that holds."""
    inits, nodes = [], []

    def qdq(tensor, scale, zero, out):
        inits.append(numpy_helper.from_array(np.float32(scale), out + "_s"))
        inits.append(numpy_helper.from_array(np.uint8(zero), out + "_z"))
        nodes.append(helper.make_node("QuantizeLinear", [tensor, out + "_s", out + "_z"], [out]))
        nodes.append(
            helper.make_node("DequantizeLinear", [out, out + "_s", out + "_z"], [out + "_dq"])
        )
        return out + "_dq"

    x = qdq("x", 0.05, 120, "xq")
    inits.append(numpy_helper.from_array(np.array([1, 4, 16, 50], np.int64), "shape"))
    nodes.append(helper.make_node("Reshape", [x, "shape"], ["reshaped"]))
    moved = qdq("reshaped", 0.05, 120, "reshapedq")
    nodes.append(helper.make_node("Transpose", [moved], ["transposed"], perm=[0, 2, 1, 3]))
    nodes.append(
        helper.make_node(
            "Softmax", [qdq("transposed", 0.05, 120, "tq")], ["soft"], "softmax", axis=1
        )
    )
    # the 1x1 conv after it (QLinearConv, laid out NHWC) is what pulls the transpose across
    inits.append(numpy_helper.from_array(np.arange(16, dtype=np.int8).reshape(1, 16, 1, 1), "w"))
    inits.append(numpy_helper.from_array(np.float32(0.01), "w_s"))
    inits.append(numpy_helper.from_array(np.int8(0), "w_z"))
    nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["w_dq"]))
    nodes.append(
        helper.make_node("Conv", [qdq("soft", 0.0026678, 0, "softq"), "w_dq"], ["conv"], "conv")
    )
    nodes.append(helper.make_node("Identity", [qdq("conv", 0.01, 0, "convq")], ["y"]))
    graph = helper.make_graph(
        nodes,
        "dfl",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 50])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": np.random.default_rng(4).normal(0, 2, (1, 64, 50)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as folder:
        saved = str(Path(folder) / "optimized.onnx")
        deployed = _session(model, optimized=True, save=saved).run(None, feeds)[0]
        emulation = emulated(model, load_optimized(saved))
    assert emulation.emulated == {"QLinearSoftmax": 1, "QLinearConv": 1}
    for simulated in _simulations(emulation.model, feeds):
        np.testing.assert_array_equal(simulated[0], deployed)


def _conv_model(channels: int, per_channel: bool = True, batch: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    w_scale = np.asarray(rng.uniform(0.002, 0.01, channels if per_channel else None), np.float32)
    inits = [
        numpy_helper.from_array(np.float32(0.1), "x_s"),
        numpy_helper.from_array(np.uint8(3), "x_z"),
        numpy_helper.from_array(
            rng.integers(-WEIGHT_REACH, WEIGHT_REACH + 1, (channels, channels, 3, 3), np.int8), "w"
        ),
        numpy_helper.from_array(w_scale, "w_s"),
        numpy_helper.from_array(np.zeros(channels if per_channel else (), np.int8), "w_z"),
        numpy_helper.from_array(np.float32(0.37), "y_s"),
        numpy_helper.from_array(np.uint8(128), "y_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["conv"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv", "y_s", "y_z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_conv_accumulates_in_float_only_where_float32_holds_every_partial_sum():
    """8 channels: the sums stay below 2^24, a float Conv on the integers is exact (and fast);
    256 channels of large weights: they may not, so ConvInteger; both equal ORT's kernel."""
    # 4096 samples: were the Conv's multiplier folded into its weights (ORT's ConvMulFusion,
    # off in the simulation's session: w * m rounded, then summed), some would round otherwise
    for channels, accumulator, per_channel, batch in (
        (8, "Conv", True, 4096),
        (8, "Conv", False, 4096),
        (256, "ConvInteger", True, 1),
    ):
        model = _conv_model(channels, per_channel, batch)
        feeds = {"x": np.random.default_rng(6).uniform(-1, 25, (batch, channels, 6, 6))}
        feeds["x"] = feeds["x"].astype(np.float32)
        with tempfile.TemporaryDirectory() as folder:
            saved = str(Path(folder) / "optimized.onnx")
            deployed = _session(model, optimized=True, save=saved).run(None, feeds)[0]
            emulation = emulated(model, load_optimized(saved))
        assert emulation.emulated == {"QLinearConv": 1}
        assert accumulator in {node.op_type for node in emulation.model.graph.node}
        for simulated in _simulations(emulation.model, feeds):
            np.testing.assert_array_equal(simulated[0], deployed)


def test_float_ops_before_a_fine_grid_run_as_deployed_in_the_simulation_session():
    """A float Conv whose output goes onto a 16-bit grid (a tensor ``auto`` kept at 16 bits):
    deployed, ORT lays the Conv out in NCHWc blocks, whose sums round differently in the last
    bit from the plain kernel's, and the fine grid turns some of those bits into whole steps.
    The simulation's session optimizes float ops as deployed, so it computes the same steps."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (32, 16, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 32).astype(np.float32), "b"),
        numpy_helper.from_array(np.float32(1e-3), "s"),
        numpy_helper.from_array(np.uint16(32768), "z"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "float_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    feeds = {"x": rng.normal(0, 1, (4, 16, 32, 32)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as folder:
        saved = str(Path(folder) / "optimized.onnx")
        deployed = _session(model, optimized=True, save=saved).run(None, feeds)[0]
        layouts = {node.domain for node in load_optimized(saved).graph.node}
    simulated = session(model, qdq_fusions=False).run(None, feeds)[0]
    np.testing.assert_array_equal(simulated, deployed)
    if "com.microsoft.nchwc" in layouts:  # the premise, on CPUs with MLAS's NCHWc kernels
        plain = _session(model, optimized=False).run(None, feeds)[0]
        assert not np.array_equal(plain, deployed)
