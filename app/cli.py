"""The ``qaas`` command.

``qaas quantize`` runs the engine locally with no server. Exit status: 0 on success, 2 with a
one-line cause when the model, data or options are at fault, 1 for an internal error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.service_cli import SERVICE_COMMANDS, add_service_commands

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    """Bad command-line input; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too, but without a traceback
        self.print_usage(sys.stderr)
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qaas", description="Quantization as a service.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    quantize = commands.add_parser(
        "quantize",
        help="quantize a model locally (no server)",
        description="Quantize an ONNX model or torch.export archive (.pt2) and write "
        "model.quant.onnx, encodings.json, report.json and report.html to OUTDIR.",
    )
    add_quantize_options(quantize)
    add_training_options(quantize)
    quantize.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR")
    quantize.add_argument("--quiet", action="store_true", help="no progress or table")
    add_service_commands(commands)
    return parser


def add_quantize_options(parser: argparse.ArgumentParser) -> None:
    """The model, data and quantization options shared by ``quantize`` and ``submit``."""
    parser.add_argument("model", type=Path, metavar="MODEL", help=".onnx or .pt2")
    parser.add_argument("--calibration", type=Path, metavar="NPZ")
    parser.add_argument("--evaluation", type=Path, metavar="NPZ")
    parser.add_argument("--weights", default="int8", metavar="intN", help="int2..int16")
    parser.add_argument(
        "--weights-granularity", default="per-channel", choices=["per-tensor", "per-channel"]
    )
    parser.add_argument("--activations", default="int8", metavar="intN|float")
    parser.add_argument(
        "--calibration-method", default="minmax", choices=["minmax", "percentile", "mse"]
    )
    parser.add_argument("--pipeline", default="", metavar="STEP,STEP,...")
    parser.add_argument(
        "--keep-float",
        default="",
        metavar="NAME|OP,...",
        help="node names or op types to leave in float",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--adaround-iterations",
        type=int,
        default=1000,
        metavar="N",
        help="upper bound per layer; a layer stops early once settled",
    )


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


def with_qat_epochs(spec, args: argparse.Namespace):
    if args.qat_epochs < 1:
        raise CliError("--qat-epochs must be at least 1")
    return spec.model_copy(update={"qat_epochs": args.qat_epochs})


def spec_from_args(args: argparse.Namespace):
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
            adaround_iterations=args.adaround_iterations,
            max_accuracy_drop=getattr(args, "max_accuracy_drop", None),
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CliError(f"{where + ': ' if where else ''}{first['msg']}") from None


class ProgressLine:
    """One self-overwriting line on a terminal; coarse lines otherwise (logs, CI)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, int] | None = None

    def __call__(self, phase: str, fraction: float) -> None:
        if not self.enabled:
            return
        percent = int(fraction * 100)
        step = percent if self.tty else percent // 25 * 25
        if self.last == (phase, step):
            return
        self.last = (phase, step)
        if self.tty:
            sys.stderr.write(f"\r{phase:<12} {percent:3d}%")
            if percent >= 100:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(f"{phase} {step}%\n")
        sys.stderr.flush()


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def result_table(report: dict) -> str:
    metrics = report["metrics"]
    rows = [f"{'':<14}{'top1':>8}{'SQNR dB':>10}{'agree':>8}{'cosine':>9}"]
    for key in ("float", "simulated", "onnxruntime"):
        m = metrics.get(key, {})
        rows.append(
            f"{key:<14}{_fmt(m.get('top1'), '{:.4f}'):>8}{_fmt(m.get('sqnr_db'), '{:.2f}'):>10}"
            f"{_fmt(m.get('top1_agreement'), '{:.4f}'):>8}{_fmt(m.get('cosine'), '{:.5f}'):>9}"
        )
    gap = metrics.get("simulation_vs_onnxruntime", {})
    size = report["size_bytes"]
    seconds = sum(step["seconds"] for step in report["steps"])
    rows.append(
        f"sim vs ORT agreement {_fmt(gap.get('top1_agreement'), '{:.4f}')}; "
        f"size {size['float']:,} -> {size['quantized']:,} bytes; {seconds:.1f} s"
    )
    rows.extend(auto_lines(report.get("auto")))
    rows.extend(f"warning: {w}" for w in report.get("warnings", []))
    return "\n".join(rows)


def auto_lines(auto: dict | None) -> list[str]:
    """What pipeline auto tried, one line per configuration, and what it chose."""
    if not auto:
        return []
    lines = [f"auto: {auto['message']}"]
    for row in auto["tried"]:
        if "skipped" in row:
            lines.append(f"  {row['name']:<16} skipped: {row['skipped']}")
            continue
        lines.append(
            f"  {row['name']:<16} drop {row['drop_points']:6.2f}  energy "
            f"{row['energy_pj']:>14,.0f} pJ  {row['seconds']:7.1f} s"
            f"{'  <- chosen' if row['name'] == auto['chosen'] else ''}"
        )
    return lines


def cmd_quantize(args: argparse.Namespace) -> int:
    from qaas_engine import import_model, load_npz, model_inputs, quantize

    spec = spec_from_args(args)
    started = time.perf_counter()
    imported = import_model(args.model)
    inputs = model_inputs(imported.model)
    calibration = (
        load_npz(args.calibration, inputs, role="calibration") if args.calibration else None
    )
    evaluation = load_npz(args.evaluation, inputs, role="evaluation") if args.evaluation else None
    training = load_npz(args.training, inputs, role="training") if args.training else None
    validation = load_npz(args.validation, inputs, role="validation") if args.validation else None
    import_seconds = time.perf_counter() - started
    spec = with_qat_epochs(spec, args)
    result = quantize(
        imported,
        spec,
        calibration=calibration,
        evaluation=evaluation,
        training=training,
        validation=validation,
        progress=ProgressLine(not args.quiet),
        energy_profile=args.energy_profile,
    )
    result.report["steps"].insert(0, {"name": "import", "seconds": round(import_seconds, 4)})
    written = result.save(args.output)
    if not args.quiet:
        print(result_table(result.report))
        print(f"wrote {', '.join(str(p) for p in written.values())}")
    return EXIT_OK


COMMANDS = {"quantize": cmd_quantize, **SERVICE_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    from qaas_engine.errors import QaasInputError

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (CliError, QaasInputError) as error:
        print(f"qaas: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("qaas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
