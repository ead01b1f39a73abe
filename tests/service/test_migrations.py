"""Alembic is the only way the schema is made: it must match the models, and go down and up
again, on SQLite and on Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

import app
from app.core.config import Settings
from app.core.db import MIGRATIONS_DIR, alembic_config, run_migrations
from app.core.tables import Base
from tests.service.conftest import REPO, scratch_database


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_settings(request, tmp_path):
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path)
        return
    with scratch_database("qaas_mig") as url:
        yield Settings(data_dir=tmp_path, database_url=url)


def schema_diff(settings: Settings) -> list:
    engine = create_engine(settings.sqlalchemy_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    return diff


def tables(settings: Settings) -> set[str]:
    engine = create_engine(settings.sqlalchemy_url)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def test_migrations_match_models_and_reverse(fresh_settings):
    run_migrations(fresh_settings)
    assert schema_diff(fresh_settings) == []
    assert {"tenants", "api_keys", "models", "datasets", "jobs"} <= tables(fresh_settings)
    command.downgrade(alembic_config(fresh_settings), "base")
    assert tables(fresh_settings) <= {"alembic_version"}
    run_migrations(fresh_settings)
    assert schema_diff(fresh_settings) == []


def test_the_command_line_config_finds_the_packaged_migrations():
    """alembic.ini (``alembic upgrade head``, ``make migrate``) names ``app:migrations``, the
    folder inside the package that ``qaas serve`` migrates from, installed or not."""
    cli = ScriptDirectory.from_config(Config(str(REPO / "alembic.ini")))
    packaged = ScriptDirectory.from_config(alembic_config(Settings()))
    assert Path(cli.dir).resolve() == Path(packaged.dir).resolve() == MIGRATIONS_DIR
    assert MIGRATIONS_DIR.parent == Path(app.__file__).resolve().parent
    assert cli.get_heads() == packaged.get_heads() and len(cli.get_heads()) == 1
