"""The options ``qaas quantize`` and ``qaas submit`` share, and the ``QuantSpec`` made from
them, so both commands accept and check the same flags the same way."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qaas_engine.step_registry import STEPS

if TYPE_CHECKING:
    from qaas_engine import QuantSpec


class CliError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


def add_quantize_options(parser: argparse.ArgumentParser, *, model_optional: bool = False) -> None:
    """The model, data and quantization options shared by ``quantize`` and ``submit``
    (where MODEL may be left out for ``--model-id``)."""
    parser.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help=".onnx or .pt2",
        nargs="?" if model_optional else None,
    )
    parser.add_argument("--calibration", type=Path, metavar="NPZ")
    parser.add_argument("--evaluation", type=Path, metavar="NPZ")
    parser.add_argument("--weights", default="int8", metavar="intN", help="int2..int16")
    parser.add_argument(
        "--weights-granularity", default="per-channel", choices=["per-tensor", "per-channel"]
    )
    parser.add_argument("--activations", default="int8", metavar="intN|float")
    parser.add_argument(
        "--calibration-method",
        default="auto",
        choices=["auto", "minmax", "percentile", "mse"],
        help="activation range estimator; auto starts at min/max and keeps mse or percentile "
        "ranges where they measure better (rule range_method; --strict-bits keeps min/max)",
    )
    parser.add_argument(
        "--pipeline",
        default="",
        metavar="STEP,STEP,...",
        help=f"steps in order, from {', '.join(STEPS)}; or auto (alone)",
    )
    parser.add_argument(
        "--keep-float",
        default="",
        metavar="NAME|OP,...",
        help="node names or op types to leave in float",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--target",
        default="onnxruntime-cpu",
        metavar="TARGET",
        help="kernels the model is laid out for: onnxruntime-cpu (this CPU decides), "
        "onnxruntime-cpu:vnni, onnxruntime-cpu:avx2 (8-bit weights, u8u8 kernels) or "
        "onnxruntime-cpu:avx2-s7 (7-bit GEMM weights, u8s8 kernels, exact without VNNI); "
        "qnn-htp (Qualcomm HTP) or tensorrt "
        "(NVIDIA), checked against their documented rules, not run (default %(default)s)",
    )
    parser.add_argument(
        "--objective",
        choices=("energy", "latency"),
        default="energy",
        help="energy: every node the rules allow is int8, and --pipeline auto picks the "
        "cheapest configuration by the energy model; latency: also keep float the nodes (entry "
        "conv, head, residual joins) whose int8 form measured slower in ONNX Runtime on this "
        "machine; report.json target.objective says what was timed and kept (default "
        "%(default)s)",
    )
    parser.add_argument(
        "--strict-bits",
        action="store_true",
        help="exactly the grids asked for: no rule may keep a join float or widen a tensor's "
        "grid to 16 bits (report.json rules lists what the rules did)",
    )
    parser.add_argument(
        "--min-sqnr",
        type=float,
        default=30.0,
        metavar="DB",
        help="output SQNR against float below which the rules give the noisiest activations "
        "16-bit grids, and the fidelity target of --pipeline auto without labels: the worst "
        "per-channel SQNR of every output (default %(default)s)",
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="OUTPUT=top1|sqnr|cosine",
        help="the metric that judges an output (name or index) in --pipeline auto's verdict and "
        "the report; repeatable (default: top1 for the first output with labels or "
        "--max-accuracy-drop, sqnr otherwise)",
    )
    parser.add_argument(
        "--fix-input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an input that always has this value where the model is deployed (e.g. a sample "
        "rate, sr=16000): branches on it are resolved and the quantized model keeps the input "
        "but does not read it; repeatable",
    )
    parser.add_argument(
        "--min-cosine",
        type=float,
        default=0.99,
        metavar="COS",
        help="the cosine similarity an output judged by cosine must reach (default %(default)s)",
    )
    parser.add_argument(
        "--evaluation-samples",
        metavar="N|all",
        help="the report measures on the first N samples, or all (default: 1000 evaluation "
        "samples; 64 of the calibration data when no --evaluation is given, fewer for a model "
        "whose samples cost over 10^10/64 multiply-accumulates each, at least 8)",
    )
    parser.add_argument(
        "--simulation-samples",
        metavar="N|all",
        help="the simulation (the exported graph with ONNX Runtime's integer kernels emulated "
        "op by op) is checked against the deployed graph on the first N of the samples "
        "measured, or all (default: 16; it costs 5-10x the deployed graph a sample)",
    )
    parser.add_argument(
        "--adaround-iterations",
        type=int,
        default=1000,
        metavar="N",
        help="upper bound per layer; a layer stops early once settled",
    )


def _sample_count(text: str | None, field: str, flag: str) -> dict[str, int | str]:
    """The spec field for a ``--*-samples N|all`` flag; none when not given (the spec's
    default)."""
    if text is None:
        return {}
    if text.strip().lower() == "all":
        return {field: "all"}
    try:
        return {field: int(text)}
    except ValueError:
        raise CliError(f"{flag} takes a count or 'all', not {text!r}") from None


def _name_value_flags(
    given: list[str], parse: Callable[[str], tuple[str, Any]], flag: str, of: tuple[str, str]
) -> dict[str, Any]:
    """Repeated ``NAME=VALUE`` flags as a dict; a name given twice must agree with itself.
    ``of``: what the name and the value are, for the error (``("output", "metrics")``)."""
    values: dict[str, Any] = {}
    for text in given:
        try:
            name, value = parse(text)
        except ValueError as error:
            raise CliError(f"{flag}: {error}") from None
        if values.get(name, value) != value:
            raise CliError(f"{flag} names {of[0]} '{name}' twice, with different {of[1]}")
        values[name] = value
    return values


def _output_metrics(given: list[str]) -> dict[str, str]:
    """``--metric OUTPUT=METRIC`` flags as the spec's ``output_metrics``."""
    from qaas_engine.spec import parse_metric

    return _name_value_flags(given, parse_metric, "--metric", ("output", "metrics"))


def _fixed_inputs(given: list[str]) -> dict[str, int | float]:
    """``--fix-input NAME=VALUE`` flags as the spec's ``fixed_inputs``."""
    from qaas_engine.spec import parse_fixed_input

    return _name_value_flags(given, parse_fixed_input, "--fix-input", ("input", "values"))


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The qat step's data and the energy profile, shared by ``quantize`` and ``submit``."""
    parser.add_argument(
        "--training",
        type=Path,
        metavar="NPZ",
        help="data for the qat step; labels used when present",
    )
    parser.add_argument(
        "--validation",
        type=Path,
        metavar="NPZ",
        help="model selection for qat (default: 10%% held out of --training)",
    )
    parser.add_argument("--qat-epochs", type=int, default=15, metavar="N")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="POINTS",
        help="top-1 points the result may lose: the target of --pipeline auto (default 1.0); "
        "qat stops early once it is met",
    )
    parser.add_argument(
        "--energy-profile",
        type=Path,
        metavar="JSON",
        help="your hardware's energy figures for the report (default: the 45 nm table)",
    )


def with_qat_epochs(spec: QuantSpec, args: argparse.Namespace) -> QuantSpec:
    if args.qat_epochs < 1:
        raise CliError("--qat-epochs must be at least 1")
    return spec.model_copy(update={"qat_epochs": args.qat_epochs})


def spec_from_args(args: argparse.Namespace) -> QuantSpec:
    from pydantic import ValidationError

    from qaas_engine import QuantSpec
    from qaas_engine.spec import is_op_type, parse_bits

    try:
        weight_bits = parse_bits(args.weights, allow_float=False)
        activation_bits = parse_bits(args.activations, allow_float=True)
    except ValueError as error:
        raise CliError(str(error)) from None
    keep = [item.strip() for item in args.keep_float.split(",") if item.strip()]
    try:
        return QuantSpec(
            weight_bits=weight_bits,
            weight_granularity=args.weights_granularity,
            activation_bits=activation_bits,
            calibration_method=args.calibration_method,
            pipeline=tuple(s.strip() for s in args.pipeline.split(",") if s.strip()),
            keep_float_ops=tuple(k for k in keep if is_op_type(k)),
            keep_float_nodes=tuple(k for k in keep if not is_op_type(k)),
            batch_size=args.batch_size,
            target=args.target,
            strict_bits=args.strict_bits,
            objective=getattr(args, "objective", "energy"),
            min_sqnr_db=args.min_sqnr,
            min_cosine=args.min_cosine,
            output_metrics=_output_metrics(args.metric),
            fixed_inputs=_fixed_inputs(args.fix_input),
            **_sample_count(
                args.evaluation_samples, "max_evaluation_samples", "--evaluation-samples"
            ),
            **_sample_count(
                args.simulation_samples, "max_simulation_samples", "--simulation-samples"
            ),
            adaround_iterations=args.adaround_iterations,
            max_accuracy_drop=getattr(args, "max_accuracy_drop", None),
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CliError(f"{where + ': ' if where else ''}{first['msg']}") from None
