"""The service's operator commands: ``serve`` and ``keys create|list|revoke`` (straight to the
database); the client commands are in ``app.client_cli``. Heavy imports stay inside the
commands."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli_options import CliError
from app.client_cli import CLIENT_COMMANDS, add_client_commands

EXIT_OK = 0


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

    add_client_commands(commands)


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


SERVICE_COMMANDS = {"serve": cmd_serve, "keys": cmd_keys, **CLIENT_COMMANDS}
