"""The corpus runs against the API of the service suite (Postgres, Redis, in-process app)."""

from tests.service.conftest import (  # noqa: F401  (fixtures)
    api,
    make_tenant,
    pg_url,
    redis_client,
    sessions,
    settings,
)
