"""The client commands, built on the SDK (``qaas.Client``): ``configure``, ``submit``,
``status``, ``wait``, ``jobs list``, ``download``, ``cancel`` and ``delete``.

Exit status of the client commands (``submit --wait``, ``wait`` and ``status`` by the job's
state): 0 done (the job succeeded); 1 the job failed, or a server error or no server; 2 the
command line or the request is at fault (a 4xx answer), or the job failed with
``invalid_input``; 3 the job has not finished (``status`` of a queued or running job, or
``--timeout`` ran out); 4 the job was cancelled; 130 interrupted (Ctrl-C): a job being waited
for goes on running, and ``qaas wait JOB_ID`` follows it again. ``--json`` prints one JSON
object (``jobs list``: an array).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli_options import (
    CliError,
    add_quantize_options,
    add_training_options,
    spec_from_args,
    with_qat_epochs,
)
from app.cli_output import JobProgress, job_line, jobs_table, result_table
from qaas.config import DEFAULT_URL
from qaas.statuses import JOB_STATUSES

if TYPE_CHECKING:
    import qaas

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_PENDING, EXIT_CANCELLED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
DELETE_KINDS = ("job", "model", "dataset")
DATA_ROLES = ("calibration", "evaluation", "training", "validation")


def add_client_commands(commands: Any) -> None:
    configure = commands.add_parser(
        "configure",
        help="save the server URL and API key for the SDK and these commands",
        description="Write the server URL and API key to $XDG_CONFIG_HOME/qaas/config.toml "
        "(~/.config/qaas/config.toml; readable by you alone), after checking them against the "
        "server. Asked for when not given (the key read without echo, or from stdin). "
        "QAAS_URL and QAAS_API_KEY, when set, still come first.",
    )
    configure.add_argument("--url", default=None, help=f"server (default {DEFAULT_URL})")
    configure.add_argument("--api-key", default=None, help="API key (default: asked for)")
    configure.add_argument(
        "--no-verify", action="store_true", help="save without asking the server"
    )
    configure.add_argument("--json", action="store_true", help="one JSON object on stdout")

    submit = commands.add_parser(
        "submit",
        help="quantize on a qaas server",
        description="Upload MODEL and data (or name earlier uploads with --model-id and "
        "--calibration-id...), submit a job with the same options as 'qaas quantize'; the "
        "job id is printed as soon as the job exists. With --wait -o OUTDIR, write the same "
        "files; Ctrl-C stops waiting, not the job.",
    )
    add_quantize_options(submit, model_optional=True)
    add_training_options(submit)
    submit.add_argument("--model-id", metavar="ID", help="a model uploaded before (no MODEL)")
    for role in DATA_ROLES:
        submit.add_argument(
            f"--{role}-id", metavar="ID", help=f"a dataset uploaded before, as --{role}"
        )
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same key and request give back the same job, never a second one "
        "(default: a fresh key)",
    )
    _wait_options(submit)
    _client_options(submit)

    wait = commands.add_parser(
        "wait",
        help="wait for a job to finish (again, after Ctrl-C)",
        description="Follow a job to its end; exit status by its state.",
    )
    wait.add_argument("job", metavar="JOB")
    _wait_options(wait, flag=False)
    _client_options(wait)

    jobs = commands.add_parser("jobs", help="list jobs")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = jobs_commands.add_parser("list", help="this key's jobs, newest first")
    listing.add_argument(
        "--status", action="append", choices=JOB_STATUSES, help="only these (repeatable)"
    )
    listing.add_argument("--limit", type=int, default=20, metavar="N", help="default 20")
    _client_options(listing)

    status = commands.add_parser(
        "status", help="show a job (exit status by its state: 0 succeeded, 3 not finished...)"
    )
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


def _wait_options(parser: argparse.ArgumentParser, *, flag: bool = True) -> None:
    if flag:
        parser.add_argument("--wait", action="store_true", help="wait for the job to finish")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUTDIR",
        help="write the artifacts here once it succeeds" + (" (needs --wait)" if flag else ""),
    )


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help=f"server (QAAS_URL, then qaas configure; else {DEFAULT_URL})"
    )
    parser.add_argument(
        "--api-key", default=None, help="API key (QAAS_API_KEY, then qaas configure)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress")


def _client(args: argparse.Namespace) -> qaas.Client:
    import qaas

    try:
        return qaas.Client(args.url, args.api_key)
    except ValueError as error:  # an unreadable configuration file
        raise CliError(str(error)) from None


def _client_errors(command: Any) -> Any:
    """Map SDK errors to one stderr line and an exit status scripts can rely on."""

    def run(args: argparse.Namespace) -> int:
        from qaas.errors import QaasError, WaitTimeout

        try:
            return command(args)
        except WaitTimeout as error:
            _emit(args, _job_json(error.job), f"qaas: {error.detail}", stream=sys.stderr)
            return EXIT_PENDING
        except QaasError as error:
            print(f"qaas: error: {error.detail}", file=sys.stderr)
            return EXIT_BAD_INPUT if error.client_fault else EXIT_INTERNAL

    run.__doc__ = command.__doc__
    return run


def _emit(args: argparse.Namespace, payload: Any, text: str, stream: Any = None) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text, file=stream or sys.stdout)


def _job_json(job: qaas.Job) -> dict[str, Any]:
    return job.model_dump(mode="json")


def job_exit(job: qaas.Job) -> int:
    """The exit status a job's state gives (the module docstring has the table)."""
    if job.status == "succeeded":
        return EXIT_OK
    if job.status == "cancelled":
        return EXIT_CANCELLED
    if job.status == "failed":
        return EXIT_BAD_INPUT if job.error and job.error.kind == "invalid_input" else EXIT_INTERNAL
    return EXIT_PENDING


@_client_errors
def cmd_configure(args: argparse.Namespace) -> int:
    from qaas.config import read_config, write_config

    try:
        current = read_config()
    except ValueError:
        current = {}  # about to be replaced
    url = args.url or _ask(f"server URL [{current.get('url', DEFAULT_URL)}]: ")
    url = url or current.get("url", DEFAULT_URL)
    key = args.api_key or _ask_key()
    if not key:
        raise CliError("no API key given (--api-key, or type it when asked)")
    tenant = ""
    if not args.no_verify:
        import qaas

        with qaas.Client(url, key) as client:
            tenant = f", tenant {client.whoami()['name']}"
    path = write_config(url, key)
    _emit(args, {"path": str(path), "url": url}, f"wrote {path} (server {url}{tenant})")
    return EXIT_OK


def _ask(prompt: str) -> str:
    if not sys.stdin.isatty():
        return ""
    return input(prompt).strip()


def _ask_key() -> str:
    """Without echo on a terminal; else the first line of stdin (kept out of shell history)."""
    if sys.stdin.isatty():
        return getpass.getpass("API key: ").strip()
    return sys.stdin.readline().strip()


def _submit_inputs(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The model and each dataset role: a path to upload or the id of an earlier upload."""
    if args.model is not None and args.model_id is not None:
        raise CliError("give MODEL (a file to upload) or --model-id ID, not both")
    if args.model is None and args.model_id is None:
        raise CliError("give MODEL (a file to upload), or --model-id ID of an earlier upload")
    data: dict[str, Any] = {}
    for role in DATA_ROLES:
        path, given_id = getattr(args, role), getattr(args, f"{role}_id")
        if path is not None and given_id is not None:
            raise CliError(f"give --{role} or --{role}-id, not both")
        data[role] = path if path is not None else given_id
    for path in (args.model, *data.values(), args.energy_profile):
        if isinstance(path, Path) and not path.is_file():
            raise CliError(f"file not found: {path}")
    return args.model if args.model is not None else args.model_id, data


@_client_errors
def cmd_submit(args: argparse.Namespace) -> int:
    if args.output is not None and not args.wait:
        raise CliError("-o/--output needs --wait")
    # The same flags, checked the same way, as 'qaas quantize'.
    spec = with_qat_epochs(spec_from_args(args), args)
    model, data = _submit_inputs(args)
    energy_profile = _read_energy_profile(args.energy_profile)
    with _client(args) as client:
        if isinstance(model, Path):
            model = client.upload_model(model, external_data_of(model))
        uploaded = {
            role: client.upload_dataset(value) if isinstance(value, Path) else value
            for role, value in data.items()
        }
        job = client.submit(
            model,
            uploaded["calibration"],
            uploaded["evaluation"],
            training=uploaded["training"],
            validation=uploaded["validation"],
            quantization=spec.model_dump(mode="json"),
            # the job's own target is a fraction (0.01 = one point); the flag is in points
            max_accuracy_drop=(
                None if args.max_accuracy_drop is None else args.max_accuracy_drop / 100.0
            ),
            energy_profile=energy_profile,
            idempotency_key=args.idempotency_key,
        )
        if not args.wait:
            _emit(args, _job_json(job), job.id)
            return EXIT_OK
        print(f"qaas: job {job.id} {job.status}; to follow it: qaas wait {job.id}", file=sys.stderr)
        return _follow(client, job, args)


@_client_errors
def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, client.get_job(args.job), args)


def _follow(client: qaas.Client, job: qaas.Job, args: argparse.Namespace) -> int:
    """Wait with one progress bar; Ctrl-C stops the waiting, never the job."""
    progress = JobProgress(not (args.quiet or args.json))
    try:
        job.wait(timeout=args.timeout, progress=progress, raise_on_failure=False)
    except KeyboardInterrupt:
        progress.close()
        print(
            f"\nqaas: stopped waiting; job {job.id} goes on. Follow it again: qaas wait {job.id}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        progress.close()
    files: dict[str, Path] = {}
    if job.status == "succeeded" and args.output is not None:
        files = job.download(args.output)
    text = job_line(job)
    if job.status == "succeeded" and not args.quiet:
        text += "\n" + result_table(job.report)
    if files:
        text += f"\nwrote {', '.join(str(p) for p in files.values())}"
    _emit(args, {**_job_json(job), "files": {k: str(v) for k, v in files.items()}}, text)
    return job_exit(job)


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
        job = client.get_job(args.job)
    _emit(args, _job_json(job), job_line(job))
    return job_exit(job)


@_client_errors
def cmd_jobs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, not {args.limit}")
    with _client(args) as client:
        jobs = list(client.jobs(status=args.status, limit=args.limit))
    _emit(args, [_job_json(job) for job in jobs], jobs_table(jobs))
    return EXIT_OK


@_client_errors
def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        files = client.get_job(args.job).download(args.output)
    payload = {"job": args.job, "files": {k: str(v) for k, v in files.items()}}
    _emit(args, payload, f"wrote {', '.join(str(p) for p in files.values())}")
    return EXIT_OK


@_client_errors
def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job).cancel()
    _emit(args, _job_json(job), job_line(job))
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


CLIENT_COMMANDS = {
    "configure": cmd_configure,
    "submit": cmd_submit,
    "wait": cmd_wait,
    "jobs": cmd_jobs,
    "status": cmd_status,
    "download": cmd_download,
    "cancel": cmd_cancel,
    "delete": cmd_delete,
}
