"""The service's CLI commands: ``serve``, ``keys create|list|revoke``, and the client commands
``submit``, ``status``, ``download``, ``cancel`` and ``delete``. Heavy imports stay inside the
commands.

Client commands exit 0 on success, 2 when the request or the job's input is at fault (4xx, or
a job failed with ``invalid_input``), 3 when ``--wait`` timed out, 1 otherwise (server error,
unreachable server, job failed internally or cancelled). ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from app.cli_options import (
    CliError,
    add_quantize_options,
    add_training_options,
    spec_from_args,
    with_qat_epochs,
)
from app.cli_output import ProgressLine, result_table

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_TIMEOUT = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:8000"
DELETE_KINDS = ("job", "model", "dataset")


def add_service_commands(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the API and one worker (embedded default: no external services)",
        description="Start the API and one worker. With no QAAS_* settings, data (SQLite, "
        "broker, artifacts) lives in ./qaas-data (QAAS_DATA_DIR).",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser(
        "create", help="create an API key; the key alone is printed on the last line"
    )
    create.add_argument("--tenant", required=True, metavar="NAME")
    listing = key_commands.add_parser(
        "list", help="list API keys: id, tenant, prefix, created, revoked (never the key)"
    )
    listing.add_argument("--tenant", metavar="NAME", help="only this tenant's keys")
    revoke = key_commands.add_parser(
        "revoke", help="revoke an API key at once; the /ui sessions made with it end"
    )
    revoke.add_argument("key_id", metavar="ID")

    submit = commands.add_parser(
        "submit",
        help="quantize on a qaas server",
        description="Upload MODEL and data, submit a job with the same options as "
        "'qaas quantize'; with --wait -o OUTDIR, write the same files.",
    )
    add_quantize_options(submit)
    add_training_options(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the job to finish")
    submit.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    submit.add_argument("-o", "--output", type=Path, metavar="OUTDIR", help="needs --wait")
    _client_options(submit)

    status = commands.add_parser("status", help="show a job")
    status.add_argument("job", metavar="JOB")
    _client_options(status)

    download = commands.add_parser("download", help="download a finished job's artifacts")
    download.add_argument("job", metavar="JOB")
    download.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    _client_options(download)

    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job", metavar="JOB")
    _client_options(cancel)

    delete = commands.add_parser(
        "delete",
        help="delete a job (and its artifacts), a model or a dataset",
        description="Delete a job (a queued or running one is cancelled first) with its "
        "artifacts, or a model or dataset with its files, freeing its quota. A model or dataset "
        "that a queued or running job needs is refused (exit status 2).",
    )
    delete.add_argument("kind", choices=DELETE_KINDS)
    delete.add_argument("id", metavar="ID")
    _client_options(delete)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help=f"server (QAAS_URL; default {DEFAULT_URL})")
    parser.add_argument("--api-key", default=None, help="API key (QAAS_API_KEY)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress")


def cmd_serve(args: argparse.Namespace) -> int:
    from app.core.config import Settings
    from app.serve import serve

    return serve(Settings(), args.host, args.port)


def cmd_keys(args: argparse.Namespace) -> int:
    """``keys create|list|revoke``: straight to the database, for the operator (no API key
    needed, so it works before the first key exists or after every key was revoked)."""
    from app.core.config import Settings
    from app.core.db import make_engine, make_sessionmaker, run_migrations, transaction
    from app.core.errors import NotFound

    settings = Settings()
    run_migrations(settings)
    engine = make_engine(settings, pooled=False)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            lines = KEY_COMMANDS[args.keys_command](args, session)
    except NotFound as error:
        raise CliError(error.detail) from None
    finally:
        engine.dispose()
    print("\n".join(lines))  # only once committed
    return EXIT_OK


def _keys_create(args: argparse.Namespace, session: Any) -> list[str]:
    from app.auth.service import AuthService

    tenant, key = AuthService(session=session).create_key(tenant_name=args.tenant)
    return [
        f"created an API key for tenant '{args.tenant}' ({tenant.id}); it is shown only once:",
        key,
    ]


def _keys_list(args: argparse.Namespace, session: Any) -> list[str]:
    from app.auth.service import AuthService

    lines = [f"{'ID':32}  {'TENANT':20}  {'PREFIX':9}  {'CREATED (UTC)':19}  REVOKED (UTC)"]
    for key, tenant in AuthService(session=session).keys(tenant_name=args.tenant):
        revoked = _utc(key.revoked_at) if key.revoked_at else "-"
        lines.append(f"{key.id:32}  {tenant:20}  {key.prefix:9}  {_utc(key.created_at)}  {revoked}")
    return lines


def _keys_revoke(args: argparse.Namespace, session: Any) -> list[str]:
    from app.auth.service import AuthService

    key = AuthService(session=session).revoke_key(key_id=args.key_id)
    return [f"revoked API key {key.id} ({key.prefix}...) at {_utc(key.revoked_at)} UTC"]


def _utc(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


KEY_COMMANDS = {"create": _keys_create, "list": _keys_list, "revoke": _keys_revoke}


def _client(args: argparse.Namespace) -> Any:
    from app.client import QaasClient

    url = args.url or os.environ.get("QAAS_URL") or DEFAULT_URL
    key = args.api_key or os.environ.get("QAAS_API_KEY")
    return QaasClient(url, key)


def _client_errors(command: Any) -> Any:
    """Map client errors to one stderr line and an exit status scripts can rely on."""

    def run(args: argparse.Namespace) -> int:
        from app.client import QaasError, WaitTimeout

        try:
            return command(args)
        except WaitTimeout as error:
            _emit(args, error.job, f"qaas: {error.detail}", stream=sys.stderr)
            return EXIT_TIMEOUT
        except QaasError as error:
            print(f"qaas: error: {error.detail}", file=sys.stderr)
            return EXIT_BAD_INPUT if error.client_fault else EXIT_INTERNAL

    run.__doc__ = command.__doc__
    return run


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str, stream: Any = None) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text, file=stream or sys.stdout)


def _job_line(job: dict[str, Any]) -> str:
    line = f"{job['id']}  {job['status']}"
    if job["status"] in ("queued", "running") and job.get("phase"):
        line += f"  {job['phase']} {int(100 * (job.get('progress') or 0))}%"
    if job.get("error"):
        line += f"\n  {job['error']['kind']}: {job['error']['detail']}"
    return line


def _job_exit(job: dict[str, Any]) -> int:
    if job["status"] == "succeeded":
        return EXIT_OK
    error = job.get("error") or {}
    return EXIT_BAD_INPUT if error.get("kind") == "invalid_input" else EXIT_INTERNAL


@_client_errors
def cmd_submit(args: argparse.Namespace) -> int:
    if args.output is not None and not args.wait:
        raise CliError("-o/--output needs --wait")
    # The same flags, checked the same way, as 'qaas quantize'.
    spec = with_qat_epochs(spec_from_args(args), args)
    data_files = {
        role: getattr(args, role)
        for role in ("calibration", "evaluation", "training", "validation")
    }
    for path in (args.model, *data_files.values(), args.energy_profile):
        if path is not None and not path.is_file():
            raise CliError(f"file not found: {path}")
    energy_profile = _read_energy_profile(args.energy_profile)
    with _client(args) as client:
        model = client.upload_model(args.model, external_data_of(args.model))
        ids = {
            f"{role}_id": client.upload_dataset(path)["id"] if path is not None else None
            for role, path in data_files.items()
        }
        job = client.submit(
            model["id"],
            **ids,
            quantization=spec.model_dump(mode="json"),
            # the job's own target is a fraction (0.01 = one point); the flag is in points
            max_accuracy_drop=(
                None if args.max_accuracy_drop is None else args.max_accuracy_drop / 100.0
            ),
            energy_profile=energy_profile,
            idempotency_key=str(uuid.uuid4()),
        )
        if not args.wait:
            _emit(args, job, job["id"])
            return EXIT_OK
        progress = ProgressLine(not (args.quiet or args.json))
        job = client.wait(job["id"], timeout=args.timeout, on_progress=progress)
        files: dict[str, Path] = {}
        if job["status"] == "succeeded" and args.output is not None:
            files = client.download(job["id"], args.output)
        report = client.report(job["id"]) if job["status"] == "succeeded" else None
    text = _job_line(job)
    if report is not None and not args.quiet:
        text += "\n" + result_table(report)
    if files:
        text += f"\nwrote {', '.join(str(p) for p in files.values())}"
    _emit(args, {**job, "files": {k: str(v) for k, v in files.items()}}, text)
    return _job_exit(job)


def external_data_of(model: Path) -> list[str]:
    """The external-data files an ONNX model names (they are uploaded with it)."""
    if model.suffix != ".onnx":
        return []
    import onnx
    from onnx import external_data_helper

    try:
        proto = onnx.load_model(model, load_external_data=False)
    except Exception:  # not ONNX after all: the server says what is wrong with it
        return []
    return sorted(
        {
            external_data_helper.ExternalDataInfo(tensor).location
            for tensor in external_data_helper._get_all_tensors(proto)
            if external_data_helper.uses_external_data(tensor)
        }
    )


def _read_energy_profile(path: Path | None) -> dict[str, Any] | None:
    """The file's JSON object, sent as is: the server checks its fields."""
    if path is None:
        return None
    try:
        profile = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CliError(f"energy profile {path}: {error}") from None
    if not isinstance(profile, dict):
        raise CliError(f"energy profile {path}: expected a JSON object")
    return profile


@_client_errors
def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.job)
    _emit(args, job, _job_line(job))
    return EXIT_OK


@_client_errors
def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        files = client.download(args.job, args.output)
    payload = {"job": args.job, "files": {k: str(v) for k, v in files.items()}}
    _emit(args, payload, f"wrote {', '.join(str(p) for p in files.values())}")
    return EXIT_OK


@_client_errors
def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job)
    _emit(args, job, _job_line(job))
    return EXIT_OK


@_client_errors
def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        delete = {
            "job": client.delete_job,
            "model": client.delete_model,
            "dataset": client.delete_dataset,
        }[args.kind]
        delete(args.id)
    _emit(
        args, {"kind": args.kind, "id": args.id, "deleted": True}, f"deleted {args.kind} {args.id}"
    )
    return EXIT_OK


SERVICE_COMMANDS = {
    "serve": cmd_serve,
    "keys": cmd_keys,
    "submit": cmd_submit,
    "status": cmd_status,
    "download": cmd_download,
    "cancel": cmd_cancel,
    "delete": cmd_delete,
}
