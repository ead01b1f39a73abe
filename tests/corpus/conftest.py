"""The corpus runs against the API of the service suite (Postgres, Redis, in-process app)."""

import uuid

import pytest

from app.auth.service import AuthService
from app.core.db import transaction
from tests.service.conftest import (  # noqa: F401  (fixtures)
    api,
    make_tenant,
    pg_url,
    redis_client,
    sessions,
    settings,
)


@pytest.fixture(scope="module")
def corpus_tenant(sessions) -> dict[str, str]:  # noqa: F811  (the fixture above)
    """One tenant for a module's uploads (cheaper than a tenant per case)."""
    with transaction(sessions) as session:
        _, key = AuthService(session=session).create_key(tenant_name=f"corpus-{uuid.uuid4().hex}")
    return {"Authorization": f"Bearer {key}"}
