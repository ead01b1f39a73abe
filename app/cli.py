"""The ``qaas`` command.

``qaas quantize`` runs the engine locally with no server. Exit status: 0 on success, 2 with a
one-line cause when the model, data or options are at fault, 1 for an internal error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.cli_options import (
    CliError,
    add_quantize_options,
    add_training_options,
    spec_from_args,
    with_qat_epochs,
)
from app.cli_output import ProgressLine, result_table
from app.service_cli import SERVICE_COMMANDS, add_service_commands

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


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
    quantize.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads to use (default: QAAS_THREADS, else every core)",
    )
    add_service_commands(commands)
    return parser


def cmd_quantize(args: argparse.Namespace) -> int:
    from qaas_engine import job
    from qaas_engine.allocator import keep_freed_memory
    from qaas_engine.sessions import set_thread_count

    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be at least 1, not {args.threads}")
    set_thread_count(args.threads)
    keep_freed_memory()  # this process ends with its job (the worker keeps glibc's defaults)
    spec = with_qat_epochs(spec_from_args(args), args)
    saved = job.run(
        args.model,
        {role: getattr(args, role) for role in job.DATA_ROLES},
        spec,
        args.output,
        progress=ProgressLine(not args.quiet),
        energy_profile=args.energy_profile,
        max_accuracy_drop=None if spec.max_accuracy_drop is None else spec.max_accuracy_drop / 100,
    )
    if not args.quiet:
        print(result_table(saved.report))
        print(f"wrote {', '.join(str(p) for p in saved.written.values())}")
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
