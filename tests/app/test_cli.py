"""``qaas quantize``: artifacts and report on success; exit 2 with one line on bad input."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app.cli import main
from tests.conftest import export_legacy


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_quantize_writes_artifacts_and_report(tiny_model, tiny_data, tmp_path):
    calibration, evaluation = tiny_data
    out = tmp_path / "out"
    code = main(
        [
            "quantize",
            str(tiny_model),
            "--calibration",
            str(calibration),
            "--evaluation",
            str(evaluation),
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    model = onnx.load(out / "model.quant.onnx")
    onnx.checker.check_model(model)
    session = ort.InferenceSession(
        str(out / "model.quant.onnx"), providers=["CPUExecutionProvider"]
    )
    outputs = session.run(None, {"input": np.zeros((3, 1, 8, 8), np.float32)})
    assert outputs[0].shape == (3, 10)

    report = json.loads((out / "report.json").read_text())
    for key in ("float", "simulated", "onnxruntime"):
        metrics = report["metrics"][key]
        assert set(metrics) >= {"top1", "sqnr_db", "top1_agreement", "cosine"}
        assert 0 <= metrics["top1"] <= 1 and 0 <= metrics["top1_agreement"] <= 1
    assert report["metrics"]["simulated"]["sqnr_db"] > 25
    assert report["metrics"]["simulation_vs_onnxruntime"]["top1_agreement"] >= 0.99
    assert {s["name"] for s in report["steps"]} >= {"import", "calibration", "export", "evaluation"}
    assert all(isinstance(s["seconds"], float) for s in report["steps"])
    assert report["model"]["params"] > 0 and report["model"]["macs"] > 0
    assert report["size_bytes"]["quantized"] < report["size_bytes"]["float"]
    assert set(report["versions"]) >= {"engine", "torch", "onnx", "onnxruntime"}


def test_encodings_cover_every_qdq_tensor(tiny_model, tiny_data, tmp_path):
    calibration, _ = tiny_data
    out = tmp_path / "out"
    assert (
        main(
            [
                "quantize",
                str(tiny_model),
                "--calibration",
                str(calibration),
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    encodings = json.loads((out / "encodings.json").read_text())
    assert encodings["version"] == "1.0.0"
    named = {e["name"] for e in encodings["activation_encodings"] + encodings["param_encodings"]}
    model = onnx.load(out / "model.quant.onnx")
    carried = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            carried.add(node.input[0].removesuffix("_clipped").removesuffix("_float"))
        elif node.op_type == "DequantizeLinear" and not node.input[0].endswith("_quantized"):
            carried.add(node.input[0])
    assert carried and carried == named
    weights = [e for e in encodings["param_encodings"] if e["bw"] == 8]
    biases = [e for e in encodings["param_encodings"] if e["bw"] == 32]
    assert len(weights) == 3 and len(biases) == 3
    assert all(e["enc_type"] == "PER_CHANNEL" and e["is_sym"] for e in weights)
    assert all(set(e["offset"]) == {-128} for e in weights)
    assert all(set(e["offset"]) == {-(2**31)} for e in biases)


def test_no_quantizer_between_conv_and_its_relu(tiny_model, tiny_data, tmp_path):
    calibration, _ = tiny_data
    out = tmp_path / "out"
    main(
        ["quantize", str(tiny_model), "--calibration", str(calibration), "-o", str(out), "--quiet"]
    )
    model = onnx.load(out / "model.quant.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Relu", "Clip") and node.input[0] in producer:
            assert producer[node.input[0]].op_type in ("Conv", "Gemm")  # not a DequantizeLinear


@pytest.mark.parametrize(
    "weights,activations,granularity",
    [
        ("int4", "int8", "per-tensor"),
        ("int8", "float", "per-channel"),
        ("int16", "int8", "per-channel"),
        ("int8", "int16", "per-channel"),
        ("int2", "int4", "per-channel"),
    ],
)
def test_bit_widths_run_in_onnx_runtime(
    tiny_model, tiny_data, tmp_path, weights, activations, granularity
):
    calibration, evaluation = tiny_data
    out = tmp_path / "out"
    code = main(
        [
            "quantize",
            str(tiny_model),
            "--calibration",
            str(calibration),
            "--evaluation",
            str(evaluation),
            "--weights",
            weights,
            "--activations",
            activations,
            "--weights-granularity",
            granularity,
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    gap = report["metrics"]["simulation_vs_onnxruntime"]
    assert gap["top1_agreement"] >= 0.97
    assert gap["sqnr_db"] > 30  # the exported graph computes what the simulation computed


def test_weights_only_needs_no_calibration(tiny_model, tmp_path):
    out = tmp_path / "out"
    assert (
        main(["quantize", str(tiny_model), "--activations", "float", "-o", str(out), "--quiet"])
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["quantizers"]["activations"] == 0 and report["quantizers"]["weights"] == 3


def _bad_inputs(tmp_path, tiny_model):
    random_bytes = tmp_path / "random.onnx"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, np.uint8).tobytes())
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_model.read_bytes()[:300])
    disguised = tmp_path / "model.pt2"
    disguised.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    wrong_keys = tmp_path / "wrong_keys.npz"
    np.savez(wrong_keys, image=np.zeros((4, 1, 8, 8), np.float32))
    no_batchnorm = export_legacy(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
        tmp_path / "linear.onnx",
        torch.randn(1, 1, 8, 8),
    )
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, input=np.zeros((4, 3, 8, 8), np.float32))
    return {
        "random bytes": ([str(random_bytes)], "not an ONNX model"),
        "truncated onnx": ([str(truncated)], "not an ONNX model|truncated"),
        "pickle named .pt2": ([str(disguised)], "pickle"),
        "npz with wrong keys": ([str(tiny_model), "--calibration", str(wrong_keys)], "input"),
        "npz with wrong shape": ([str(tiny_model), "--calibration", str(wrong_shape)], "shape"),
        "no calibration, no BN statistics": ([str(no_batchnorm)], "calibration data"),
        "bad bit-width": ([str(tiny_model), "--weights", "int1"], "bit-width"),
        "unknown step": ([str(tiny_model), "--pipeline", "magic"], "unknown pipeline step"),
        "repeated step": ([str(tiny_model), "--pipeline", "cle,cle"], "more than once"),
        "long node name": ([str(tiny_model), "--keep-float", "n" * 257], "at most 256 char"),
        "missing file": ([str(tmp_path / "nope.onnx")], "not found"),
        "bad evaluation count": ([str(tiny_model), "--evaluation-samples", "many"], "count or"),
        "zero evaluation count": ([str(tiny_model), "--evaluation-samples", "0"], "greater"),
        "zero threads": ([str(tiny_model), "--threads", "0"], "at least 1"),
    }


def test_bad_inputs_exit_2_with_one_line(tiny_model, tmp_path):
    cases = _bad_inputs(tmp_path, tiny_model)
    for name, (args, pattern) in cases.items():
        result = run_cli("quantize", *args, "-o", str(tmp_path / "out"))
        assert result.returncode == 2, (name, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith("qaas: error:")]
        assert len(lines) == 1, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        import re

        assert re.search(pattern, lines[0]), (name, lines[0])
    assert not (tmp_path / "out" / "model.quant.onnx").exists()  # nothing half-written


def test_evaluation_samples_and_threads(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("QAAS_THREADS", raising=False)  # --threads sets it: undone afterwards
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this process's pool
    calibration, evaluation = tiny_data
    common = ["quantize", str(tiny_model), "--calibration", str(calibration), "--quiet"]
    common += ["--evaluation", str(evaluation), "--threads", "1"]
    assert main([*common, "--evaluation-samples", "10", "-o", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["metrics"]["samples"] == {"measured": 10, "available": 48}
    assert report["spec"]["max_evaluation_samples"] == 10
    assert main([*common, "--evaluation-samples", "all", "-o", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["metrics"]["samples"] == {"measured": 48, "available": 48}
    assert report["spec"]["max_evaluation_samples"] == "all"
