"""AIMET's data-free path on the bench's imbalanced depthwise net; runs in AIMET's own venv.

Started by ``bench/dfq_vs_peers.py`` with ``bench/.venvs/aimet/bin/python`` and
``PYTHONPATH=<repo>/../shared/peers/tv_stub:<repo>``. The AIMET venv has torch and aimet-torch
but none of the project's dependencies, so ``DepthwiseReLUNet`` is loaded from
``qaas_engine/zoo/imbalance.py`` alone (``spec_from_file_location``), never through the
``qaas_engine`` package.

Inputs: a ``state_dict`` saved with ``torch.save`` (loaded with ``weights_only=True``) and an
``.npz`` with ``x_calib``, ``x_eval`` and ``y_eval``. For each variant (``quantsim``: per-tensor
W8A8 only; ``cle``: ``equalize_model`` (BN fold, cross-layer scaling, high-bias fold) first) it
prepares the model (``prepare_model``, so functional adds are quantized too), builds
``QuantizationSimModel`` with ``default_config.json`` named explicitly (per-tensor weights; the
``config_file=None`` default of aimet-torch 2.42 is per-channel), min-max ranges, 8-bit params and
outputs, runs ``compute_encodings`` on the calibration images and evaluates top-1 on the eval
images. Timed: everything from the float model to computed encodings. Output: one JSON file.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
IMBALANCE = REPO / "qaas_engine" / "zoo" / "imbalance.py"


def load_net_class() -> type[torch.nn.Module]:
    """``DepthwiseReLUNet`` from its file alone (the rest of qaas_engine is not importable here)."""
    spec = importlib.util.spec_from_file_location("_bench_imbalance", IMBALANCE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {IMBALANCE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DepthwiseReLUNet


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray, batch_size: int = 100) -> float:
    predictions = torch.cat(
        [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    )
    return float((predictions.numpy() == y).mean())


def weight_granularity(sim: Any) -> str:
    """'per-tensor' when every weight quantizer holds one scale, else 'per-channel'."""
    shapes = set()
    for module in sim.model.modules():
        quantizers = getattr(module, "param_quantizers", None)
        if quantizers is None or "weight" not in quantizers:
            continue
        quantizer = quantizers["weight"]
        if quantizer is None:
            continue
        shapes.add(int(np.prod(tuple(quantizer.shape))) if len(quantizer.shape) else 1)
    if not shapes:
        return "no weight quantizers"
    return "per-tensor" if shapes == {1} else "per-channel"


def run_variant(
    name: str,
    float_model: torch.nn.Module,
    x_calib: torch.Tensor,
    x_eval: torch.Tensor,
    y_eval: np.ndarray,
    config_file: str,
    batch_size: int,
) -> dict[str, Any]:
    from aimet_common.defs import QuantScheme
    from aimet_torch.cross_layer_equalization import equalize_model
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    # Imported (and timed) in main() already; these lines only bind the names.
    dummy = x_calib[:1]
    steps: dict[str, float] = {}
    start = time.perf_counter()
    model = copy.deepcopy(float_model).eval()
    mark = time.perf_counter()
    model = prepare_model(model)
    steps["prepare_model"] = time.perf_counter() - mark
    if name == "cle":
        mark = time.perf_counter()
        equalize_model(model, dummy_input=dummy)
        steps["equalize_model"] = time.perf_counter() - mark
    mark = time.perf_counter()
    sim = QuantizationSimModel(
        model,
        dummy_input=dummy,
        quant_scheme=QuantScheme.post_training_tf,  # min-max
        default_output_bw=8,
        default_param_bw=8,
        config_file=config_file,
    )
    steps["quantsim"] = time.perf_counter() - mark

    def forward(quantized: torch.nn.Module) -> None:
        with torch.no_grad():
            for i in range(0, len(x_calib), batch_size):
                quantized(x_calib[i : i + batch_size])

    mark = time.perf_counter()
    sim.compute_encodings(forward)
    steps["compute_encodings"] = time.perf_counter() - mark
    seconds = time.perf_counter() - start
    return {
        "top1": top1(sim.model, x_eval, y_eval),
        "float_top1_after_transforms": top1(model, x_eval, y_eval),
        "seconds": seconds,
        "steps": steps,
        "weight_granularity": weight_granularity(sim),
    }


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variants", default="quantsim,cle")
    parser.add_argument(
        "--launched-at", type=float, default=None, help="parent's time.time() at launch"
    )
    args = parser.parse_args(argv)
    startup_seconds = None if args.launched_at is None else time.time() - args.launched_at
    torch.set_num_threads(args.threads)

    mark = time.perf_counter()
    # Timed: AIMET's import cost is part of using it.
    import aimet_common.defs  # noqa: F401
    import aimet_torch
    import aimet_torch.cross_layer_equalization  # noqa: F401
    import aimet_torch.model_preparer  # noqa: F401
    import aimet_torch.quantsim  # noqa: F401

    import_seconds = time.perf_counter() - mark
    config_dir = Path(aimet_torch.__file__).parent / "common" / "quantsim_config"
    config_file = config_dir / "default_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"aimet-torch ships no {config_file}")
    config = json.loads(config_file.read_text())
    per_channel_setting = config["defaults"].get("per_channel_quantization")

    net_class = load_net_class()
    model = net_class()
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()
    with np.load(args.data, allow_pickle=False) as data:
        x_calib = torch.from_numpy(data["x_calib"])
        x_eval = torch.from_numpy(data["x_eval"])
        y_eval = data["y_eval"]

    has_bias_correction = any(
        _module_exists(name)
        for name in ("aimet_torch.bias_correction", "aimet_torch.v1.bias_correction")
    )
    result: dict[str, Any] = {
        "versions": {
            "aimet-torch": importlib.metadata.version("aimet-torch"),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "startup_seconds": startup_seconds,
        "import_seconds": import_seconds,
        "config_file": str(config_file),
        "config_per_channel_quantization": per_channel_setting,
        "bias_correction_available": has_bias_correction,
        "float_top1": top1(model, x_eval, y_eval),
        "threads": torch.get_num_threads(),
        "variants": {},
    }
    for name in args.variants.split(","):
        result["variants"][name] = run_variant(
            name, model, x_calib, x_eval, y_eval, str(config_file), args.batch_size
        )
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
