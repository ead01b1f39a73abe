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
    # 8-bit grids, or 7-bit for a GEMM's weights where the CPU has no int8 dot product
    # (targets.KernelChoice.weight_bits); a symmetric grid's AIMET offset is -2^(bits-1)
    weights = [e for e in encodings["param_encodings"] if e["bw"] in (7, 8)]
    biases = [e for e in encodings["param_encodings"] if e["bw"] == 32]
    assert len(weights) == 3 and len(biases) == 3
    assert all(e["enc_type"] == "PER_CHANNEL" and e["is_sym"] for e in weights)
    assert all(set(e["offset"]) == {-(2 ** (e["bw"] - 1))} for e in weights)
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
        "bad metric": ([str(tiny_model), "--metric", "logits=iou"], "OUTPUT=METRIC"),
        "metric for no output": ([str(tiny_model), "--metric", "boxes=sqnr"], "no output 'boxes'"),
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
    assert report["metrics"]["samples"] == {"measured": 10, "available": 48, "simulated": 10}
    assert report["spec"]["max_evaluation_samples"] == 10
    assert main([*common, "--evaluation-samples", "all", "-o", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["metrics"]["samples"] == {"measured": 48, "available": 48, "simulated": 16}
    assert report["spec"]["max_evaluation_samples"] == "all"
    every = ["--evaluation-samples", "all", "--simulation-samples", "all"]
    assert main([*common, *every, "-o", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["metrics"]["samples"] == {"measured": 48, "available": 48, "simulated": 48}
    assert report["spec"]["max_simulation_samples"] == "all"
    assert main([*common, "--simulation-samples", "5", "-o", str(tmp_path / "d")]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["metrics"]["samples"]["simulated"] == 5
    assert main([*common, "--simulation-samples", "some", "-o", str(tmp_path / "e")]) == 2


def test_strict_bits_and_min_sqnr_reach_the_spec(tiny_model, tiny_data, tmp_path):
    common = ["quantize", str(tiny_model), "--calibration", str(tiny_data[0]), "--quiet"]
    assert main([*common, "--strict-bits", "--min-sqnr", "45", "-o", str(tmp_path / "s")]) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["spec"]["strict_bits"] is True and report["spec"]["min_sqnr_db"] == 45
    assert report["strict_bits"] is True and report["rules"] == []
    assert main([*common, "-o", str(tmp_path / "d")]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["spec"]["strict_bits"] is False and report["spec"]["min_sqnr_db"] == 30


def test_metric_and_min_cosine_reach_the_spec(tiny_model, tiny_data, tmp_path):
    common = ["quantize", str(tiny_model), "--calibration", str(tiny_data[0]), "--quiet"]
    named = ["--metric", "0=cosine", "--min-cosine", "0.5", "-o", str(tmp_path / "m")]
    assert main([*common, *named]) == 0
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["spec"]["output_metrics"] == {"0": "cosine"}
    assert report["spec"]["min_cosine"] == 0.5
    verdict = report["fidelity"]["outputs"]["logits"]
    assert verdict["metric"] == "cosine" and verdict["named"] and verdict["target"] == 0.5
    assert verdict["met"] == (verdict["value"] >= 0.5)
    assert main([*common, "-o", str(tmp_path / "d")]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["spec"]["output_metrics"] == {} and report["spec"]["min_cosine"] == 0.99
    # unlabelled calibration data and no top-1 target: the worst per-channel SQNR judges
    assert report["fidelity"]["outputs"]["logits"]["metric"] == "sqnr"
    assert main([*common, "--metric", "logits=top1", "--metric", "logits=sqnr"]) == 2


# The client commands' checks made before any request (the service tests run them against a
# real server: tests/service/test_sdk.py).


@pytest.fixture
def no_server(monkeypatch, tmp_path):
    """No QAAS_URL/QAAS_API_KEY, a configuration folder of the test's own, nothing listening."""
    for name in ("QAAS_URL", "QAAS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return "http://127.0.0.1:9"  # the discard port: connection refused


def test_configure_writes_a_private_file_that_the_sdk_reads(no_server, tmp_path, monkeypatch):
    import io

    import qaas

    monkeypatch.setattr(sys, "stdin", io.StringIO("qaas_from-stdin\n"))  # not a terminal
    assert main(["configure", "--url", no_server, "--no-verify"]) == 0
    path = tmp_path / "config" / "qaas" / "config.toml"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert 'api_key = "qaas_from-stdin"' in path.read_text()
    with qaas.Client() as client:
        assert client.url == no_server
        assert client.api.http.headers["authorization"] == "Bearer qaas_from-stdin"
    monkeypatch.setenv("QAAS_API_KEY", "qaas_from-env")  # the environment comes first
    with qaas.Client() as client:
        assert client.api.http.headers["authorization"] == "Bearer qaas_from-env"


def test_submit_options_are_checked_before_any_request(no_server, tiny_model, tmp_path, capsys):
    cases = {
        "MODEL and --model-id": ([str(tiny_model), "--model-id", "m1"], "not both"),
        "neither": (["--activations", "float"], "MODEL"),
        "a file and its id": (
            [str(tiny_model), "--calibration", str(tiny_model), "--calibration-id", "d1"],
            "--calibration or --calibration-id",
        ),
        "-o without --wait": ([str(tiny_model), "-o", str(tmp_path)], "needs --wait"),
        "bad metric": ([str(tiny_model), "--metric", "sqnr"], "OUTPUT=METRIC"),
    }
    for name, (argv, message) in cases.items():
        assert main(["submit", *argv, "--url", no_server]) == 2, name
        assert message in capsys.readouterr().err, name
    assert main(["jobs", "list", "--limit", "0", "--url", no_server]) == 2


def test_an_unreachable_server_is_one_line_and_exit_1(no_server, capsys):
    assert main(["status", "0" * 32, "--url", no_server]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qaas: error: cannot reach http://127.0.0.1:9") and "Traceback" not in err


def job_info(**changes):
    from qaas.types import JobInfo

    fields = dict.fromkeys(
        ("phase", "model_id", "calibration_id", "evaluation_id", "training_id", "validation_id")
    )
    fields |= dict.fromkeys(("max_accuracy_drop", "energy_profile", "error", "metrics"))
    fields |= dict.fromkeys(("started_at", "finished_at"))
    moment = "2026-01-01T00:00:00Z"
    base = {**fields, "id": "job1", "status": "queued", "progress": 0.0, "attempts": 0}
    base |= {"quantization": {}, "steps": [], "step_reports": {}, "artifacts": []}
    return JobInfo(**{**base, "created_at": moment, "updated_at": moment, **changes})


@pytest.mark.parametrize("tty", [True, False])
def test_one_overall_bar_with_phase_and_queue_position(tty, capsys):
    from app.cli_output import JobProgress

    progress = JobProgress(True)
    progress.tty = progress.lines.tty = tty  # capsys is no terminal: rich draws once, at stop
    progress(job_info(queue_position=2))
    progress(job_info(status="running", phase="calibration", overall_progress=0.4))
    progress(job_info(status="succeeded", phase="done", overall_progress=1.0))
    progress.close()
    err = capsys.readouterr().err
    if tty:
        assert "100%" in err and "succeeded" in err
    else:
        assert err.splitlines() == [
            "job1 0% queued (position 2)",
            "job1 25% running: calibration",
            "job1 100% succeeded",
        ]


def test_fix_input_flags_become_the_specs_fixed_inputs():
    from app.cli import build_parser, spec_from_args
    from app.cli_options import CliError

    def spec(*flags: str):
        return spec_from_args(build_parser().parse_args(["quantize", "m.onnx", "-o", "o", *flags]))

    fixed = spec("--fix-input", "sr=16000", "--fix-input", "gain=0.5", "--fix-input", "sr=16000")
    assert fixed.fixed_inputs == {"sr": 16000, "gain": 0.5}
    with pytest.raises(CliError, match="--fix-input names input 'sr' twice, with different values"):
        spec("--fix-input", "sr=16000", "--fix-input", "sr=8000")
    with pytest.raises(CliError, match="--fix-input: 'sr' is not NAME=VALUE"):
        spec("--fix-input", "sr")
