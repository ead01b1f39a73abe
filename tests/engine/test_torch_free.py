"""A post-training job never imports torch; anything that runs the graph in torch still can.

The PTQ passes run in ONNX Runtime and numpy (see ``qaas_engine.graph.lazy``); torch costs about
a second of start-up and a few hundred MiB, more than ONNX Runtime's whole quantizer on a small
model. Learning steps and graphs ORT cannot load build the torch executor on first use.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from qaas_engine.graph.executor import GraphExecutor
from qaas_engine.graph.kernels import TORCH_KERNEL_OPS
from qaas_engine.graph.lazy import LazyExecutor, materialized
from qaas_engine.graph.registry import OP_REGISTRY

# modules a local quantize never needs: the SDK's HTTP client and its typed response bodies
# (the CLI's parser reads only qaas.config and qaas.statuses; building qaas.types' pydantic
# models cost every job about 75 ms) and ONNX's reference evaluator (for ops without a torch
# kernel)
UNNEEDED = ("httpx", "qaas.client", "qaas.types", "onnx.reference")
QUANTIZE_AND_LIST_MODULES = f"""
import json, sys
from app.cli import main
code = main(sys.argv[1:])
loaded = [name for name in {UNNEEDED!r} if name in sys.modules]
print(json.dumps({{"code": code, "torch": "torch" in sys.modules, "unneeded": loaded}}))
"""


def _quantize_in_a_fresh_process(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", QUANTIZE_AND_LIST_MODULES, "quantize", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_post_training_quantization_never_imports_torch(tiny_model, tiny_data, tmp_path):
    calibration, evaluation = tiny_data
    out = tmp_path / "out"
    run = _quantize_in_a_fresh_process(
        str(tiny_model), "--calibration", str(calibration), "--evaluation", str(evaluation),
        "--pipeline", "cle", "-o", str(out),
    )  # fmt: skip
    assert run == {"code": 0, "torch": False, "unneeded": []}
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["onnxruntime"]["sqnr_db"] > 25
    assert report["energy"]["quantized_pj"] < report["energy"]["float_pj"]
    assert report["analysis"]["layers"] and report["model"]["macs"] > 0


def test_a_step_that_runs_the_graph_in_torch_imports_it(tiny_model, tiny_data, tmp_path):
    calibration, _ = tiny_data
    run = _quantize_in_a_fresh_process(
        str(tiny_model), "--calibration", str(calibration), "--pipeline", "bias_correction",
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert run["code"] == 0 and run["torch"] is True


def test_the_kernel_table_placement_reads_is_the_registry(tiny_model):
    assert frozenset(OP_REGISTRY) == TORCH_KERNEL_OPS


def test_lazy_executor_reads_the_graph_then_builds_the_torch_executor_on_first_run(tiny_model):
    import onnx

    model = onnx.load(tiny_model)
    lazy = LazyExecutor(model)
    built = GraphExecutor(model)
    assert not lazy.built
    assert lazy.input_names == built.input_names and lazy.output_names == built.output_names
    assert [n.name for n in lazy.nodes] == [n.name for n in built.nodes]
    assert all(isinstance(w, np.ndarray) for w in lazy.weights.values())
    feeds = {"input": torch.zeros(2, 1, 8, 8)}
    out = lazy.run(feeds)  # any attribute beyond names and weights builds the executor
    assert lazy.built and all(isinstance(w, torch.Tensor) for w in lazy.weights.values())
    torch.testing.assert_close(out["logits"], built.run(feeds)["logits"])
    assert materialized(lazy) is materialized(lazy)
    assert materialized(built) is built
