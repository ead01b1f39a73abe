"""AIMET's AdaRound (and its nearest rounding) on the bench's nets; runs in AIMET's venv.

Started by ``bench/adaround_vs_peers.py`` with ``bench/.venvs/aimet/bin/python`` and
``PYTHONPATH=<repo>/../shared/peers/tv_stub:<repo>``. The AIMET venv has torch and aimet-torch but
none of the project's dependencies, so the net is loaded from its zoo file alone:
``DepthwiseReLUNet`` from ``qaas_engine/zoo/imbalance.py`` (``--model depthwise``, see
``aimet_dfq.load_net_class``) or ``MobileNetV2Like`` from ``qaas_engine/zoo/models.py``
(``--model mobilenetv2``, the bundled example's architecture).

Inputs: a ``state_dict`` saved with ``torch.save`` (loaded with ``weights_only=True``) and an
``.npz`` with ``x_calib``, ``x_eval`` and ``y_eval``. Each variant is ``<rounding>-<granularity>``
with rounding ``nearest`` or ``adaround`` and granularity ``pt`` (``default_config.json``, named
explicitly: aimet-torch 2.42's ``config_file=None`` is per-channel) or ``pc``
(``default_config_per_channel.json``). AIMET's documented flow, per variant:

1. ``prepare_model`` (functional add/mean become modules, so they are quantized too), then
   ``fold_all_batch_norms`` (qaas folds BN while preparing, so both quantize folded weights);
   with ``--cle``, ``equalize_model`` instead (it folds BN itself, then scales across layers and
   absorbs high biases), AIMET's recommended step before AdaRound;
2. ``adaround`` only: ``Adaround.apply_adaround(model, dummy, AdaroundParameters(loader,
   num_batches, default_num_iterations=N), path, prefix, default_param_bw=bits,
   default_quant_scheme=scheme, default_config_file=config)``: the calibration images in
   batches of ``--batch-size``, all of them (``num_batches = ceil(n / batch_size)``);
3. ``QuantizationSimModel`` (W``bits`` A8, same config and scheme) on the resulting model;
   ``adaround`` only: ``set_and_freeze_param_encodings(<prefix>.encodings)`` (deprecated in 2.42
   in favour of ``load_encodings``, still there and what AIMET's AdaRound docs use);
4. ``compute_encodings`` over the calibration images; top-1 of ``sim.model`` on the eval images.

Timed: everything from the float model to computed encodings. Also measured, outside the timing:
per layer, the fraction of weights whose quantized value differs from rounding to nearest under
the same frozen encoding, and the weight quantizer's scale(s). Output: one JSON file.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import logging
import math
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.peers.aimet_dfq import load_net_class, top1, weight_granularity

CONFIGS = {"pt": "default_config.json", "pc": "default_config_per_channel.json"}
ZOO_MODELS = Path(__file__).resolve().parents[2] / "qaas_engine" / "zoo" / "models.py"


def load_model_class(name: str) -> type[torch.nn.Module]:
    """The bench's net class from its zoo file alone (the rest of qaas_engine is not importable)."""
    if name == "depthwise":
        return load_net_class()
    spec = importlib.util.spec_from_file_location("_bench_zoo_models", ZOO_MODELS)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {ZOO_MODELS}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MobileNetV2Like


def _first_sentence(text: str) -> str:
    """A warning's first sentence, without the ANSI colour codes AIMET wraps it in."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    return plain.split(". ")[0]


def flipped_fractions(
    sim: Any, float_weights: dict[str, torch.Tensor], supported: tuple[type, ...]
) -> dict[str, float]:
    """Per layer: share of weights whose quantized value is not the nearest one (same encoding)."""
    fractions: dict[str, float] = {}
    with torch.no_grad():
        for name, module in sim.model.named_modules():
            quantizers = getattr(module, "param_quantizers", None)
            if quantizers is None or name not in float_weights:
                continue
            original = (
                module.get_original_module() if hasattr(module, "get_original_module") else module
            )
            if not isinstance(original, supported):
                continue
            quantizer = quantizers["weight"]
            if quantizer is None:
                continue
            learned = quantizer(module.weight.detach())
            nearest = quantizer(float_weights[name])
            learned = learned.dequantize() if hasattr(learned, "dequantize") else learned
            nearest = nearest.dequantize() if hasattr(nearest, "dequantize") else nearest
            fractions[name] = float((learned != nearest).float().mean())
    return fractions


def weight_scales(sim: Any, names: set[str]) -> dict[str, list[float]]:
    """Per layer: the weight quantizer's scale(s), flattened (one per channel when per-channel)."""
    scales: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, module in sim.model.named_modules():
            quantizers = getattr(module, "param_quantizers", None)
            if quantizers is None or name not in names or quantizers["weight"] is None:
                continue
            scales[name] = [float(v) for v in quantizers["weight"].get_scale().flatten()]
    return scales


def run_variant(
    variant: str,
    float_model: torch.nn.Module,
    x_calib: torch.Tensor,
    x_eval: torch.Tensor,
    y_eval: np.ndarray,
    config_dir: Path,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    from aimet_torch.adaround.adaround_weight import (
        Adaround,
        AdaroundParameters,
        AdaroundSupportedModules,
    )
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.cross_layer_equalization import equalize_model
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    rounding, granularity = variant.split("-")
    config_file = str(config_dir / CONFIGS[granularity])
    scheme = {
        "tf": QuantScheme.post_training_tf,
        "tf_enhanced": QuantScheme.post_training_tf_enhanced,
    }[args.scheme]
    dummy = x_calib[:1]
    steps: dict[str, float] = {}
    notes: list[str] = []

    start = time.perf_counter()
    model = copy.deepcopy(float_model).eval()
    mark = time.perf_counter()
    model = prepare_model(model)
    steps["prepare_model"] = time.perf_counter() - mark
    mark = time.perf_counter()
    if args.cle:
        equalize_model(model, dummy_input=dummy)
        steps["equalize_model"] = time.perf_counter() - mark
        folded: list[Any] = []
    else:
        folded = fold_all_batch_norms(model, tuple(dummy.shape), dummy_input=dummy)
        steps["fold_all_batch_norms"] = time.perf_counter() - mark
    float_weights = {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, AdaroundSupportedModules)
    }

    encodings_path = None
    num_batches = math.ceil(len(x_calib) / args.batch_size)
    if rounding == "adaround":
        loader = torch.utils.data.DataLoader(x_calib, batch_size=args.batch_size, shuffle=False)
        params = AdaroundParameters(
            data_loader=loader,
            num_batches=num_batches,
            default_num_iterations=args.iterations,
        )
        prefix = f"adaround_{variant}"
        mark = time.perf_counter()
        model = Adaround.apply_adaround(
            model,
            dummy,
            params,
            path=str(workdir),
            filename_prefix=prefix,
            default_param_bw=args.bits,
            default_quant_scheme=scheme,
            default_config_file=config_file,
        )
        steps["apply_adaround"] = time.perf_counter() - mark
        encodings_path = workdir / f"{prefix}.encodings"

    mark = time.perf_counter()
    sim = QuantizationSimModel(
        model,
        dummy_input=dummy,
        quant_scheme=scheme,
        default_output_bw=8,
        default_param_bw=args.bits,
        config_file=config_file,
    )
    steps["quantsim"] = time.perf_counter() - mark
    if encodings_path is not None:
        mark = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sim.set_and_freeze_param_encodings(str(encodings_path))
        notes.extend(sorted({_first_sentence(str(w.message)) for w in caught}))
        steps["set_and_freeze_param_encodings"] = time.perf_counter() - mark

    def forward(quantized: torch.nn.Module, _: Any = None) -> None:
        with torch.no_grad():
            for i in range(0, len(x_calib), args.batch_size):
                quantized(x_calib[i : i + args.batch_size])

    mark = time.perf_counter()
    sim.compute_encodings(forward)
    steps["compute_encodings"] = time.perf_counter() - mark
    seconds = time.perf_counter() - start

    flipped = flipped_fractions(sim, float_weights, AdaroundSupportedModules)
    return {
        "top1": top1(sim.model, x_eval, y_eval),
        "float_top1_after_fold": top1(model, x_eval, y_eval) if rounding == "nearest" else None,
        "seconds": seconds,
        "steps": steps,
        "weight_granularity": weight_granularity(sim),
        "config_file": CONFIGS[granularity],
        "cle": args.cle,
        "batchnorms_folded": len(folded),
        "num_batches": num_batches if rounding == "adaround" else None,
        "iterations_per_layer": args.iterations if rounding == "adaround" else None,
        "rounded_away_from_nearest": flipped,
        "weight_scales": weight_scales(sim, set(float_weights)),
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--scheme", choices=("tf", "tf_enhanced"), default="tf")
    parser.add_argument("--variants", default="nearest-pt,adaround-pt,nearest-pc,adaround-pc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=("depthwise", "mobilenetv2"), default="depthwise")
    parser.add_argument("--cle", action="store_true", help="equalize_model before AdaRound")
    parser.add_argument(
        "--launched-at", type=float, default=None, help="parent's time.time() at launch"
    )
    args = parser.parse_args(argv)
    startup_seconds = None if args.launched_at is None else time.time() - args.launched_at
    torch.set_num_threads(args.threads)
    # AIMET's AdaRound draws its mini-batches from torch's and numpy's global generators.
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    mark = time.perf_counter()
    # Timed: AIMET's import cost is part of using it.
    import aimet_torch
    import aimet_torch.adaround.adaround_weight  # noqa: F401
    import aimet_torch.batch_norm_fold  # noqa: F401
    import aimet_torch.model_preparer  # noqa: F401
    import aimet_torch.quantsim  # noqa: F401

    import_seconds = time.perf_counter() - mark
    logging.getLogger("Quant").setLevel(logging.WARNING)
    config_dir = Path(aimet_torch.__file__).parent / "common" / "quantsim_config"
    for name in CONFIGS.values():
        if not (config_dir / name).is_file():
            raise FileNotFoundError(f"aimet-torch ships no {config_dir / name}")

    net_class = load_model_class(args.model)
    model = net_class()
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()
    with np.load(args.data, allow_pickle=False) as data:
        x_calib = torch.from_numpy(data["x_calib"])
        x_eval = torch.from_numpy(data["x_eval"])
        y_eval = data["y_eval"]

    result: dict[str, Any] = {
        "versions": {
            "aimet-torch": importlib.metadata.version("aimet-torch"),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "startup_seconds": startup_seconds,
        "import_seconds": import_seconds,
        "scheme": args.scheme,
        "bits": args.bits,
        "float_top1": top1(model, x_eval, y_eval),
        "threads": torch.get_num_threads(),
        "variants": {},
        "errors": {},
    }
    with tempfile.TemporaryDirectory(prefix="aimet-adaround-") as tmp:
        for variant in args.variants.split(","):
            try:
                result["variants"][variant] = run_variant(
                    variant, model, x_calib, x_eval, y_eval, config_dir, args, Path(tmp)
                )
            except Exception as error:  # one variant failing must not hide the others
                result["errors"][variant] = f"{type(error).__name__}: {error}"
            args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
