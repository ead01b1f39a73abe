"""Request dependencies as ``Annotated`` aliases; ownership checks live in the loaders."""

# No ``from __future__ import annotations``: ``owned`` declares its loader's parameters from its
# arguments, and FastAPI reads those annotations as objects, not as names in this module.

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth.tables import Tenant
from app.auth.throttle import client_address, verify_throttled
from app.core.context import Context
from app.core.db import run_after_commit
from app.core.owned import Row, TenantRepository
from app.observability.logs import bind


async def get_context(request: Request) -> Context:
    """Async so that it runs in the event loop: a sync dependency costs a thread hop."""
    return request.app.state.context


ContextDep = Annotated[Context, Depends(get_context)]


async def get_session(context: ContextDep) -> AsyncIterator[Session]:
    """One transaction per request: commit on success (before the response is sent), roll back
    on any error; work queued with ``after_commit`` (enqueueing) runs only after the commit.
    A request waits (without a thread) for a free connection slot before it gets a session."""
    async with context.session_slots:
        session = context.sessions()
        try:
            yield session
        except BaseException:
            await _end(_roll_back, session)
            raise
        await _end(_commit, session)


def _commit(session: Session) -> None:
    """Commit, run what waited for the commit (enqueueing), give the connection back: one
    thread hop for the three, as each hop costs more CPU than a poll's own work."""
    try:
        session.commit()
        run_after_commit(session)
    finally:
        session.close()


def _roll_back(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


async def _end(function: Callable[..., object], *args: object) -> None:
    """Run a session's ending on a thread outside the shared pool (as FastAPI ends a sync
    dependency), so it never queues behind requests for one, and shielded from cancellation
    (a client that went away), so the transaction and its connection are always given back."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(function, *args, limiter=anyio.CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# Declared as security schemes (not header parameters) so the OpenAPI document says how to
# authenticate and Swagger UI's "Authorize" sends the key; neither refuses on its own (the
# tenant dependency answers 401 in the envelope, after the throttle).
bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="API key",
    description="`Authorization: Bearer <API key>` (`qaas serve` prints one; `qaas keys create`)",
    auto_error=False,
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    scheme_name="apiKeyHeader",
    description="the same API key in an `X-API-Key` header, for clients that cannot set "
    "Authorization",
    auto_error=False,
)


async def api_key_from_headers(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    x_api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> str | None:
    if bearer is not None and bearer.credentials.strip():
        return bearer.credentials.strip()
    return x_api_key


def get_tenant(
    request: Request,
    session: SessionDep,
    context: ContextDep,
    key: Annotated[str | None, Depends(api_key_from_headers)],
) -> Tenant:
    """The key's tenant; wrong keys are throttled per client address (429 with Retry-After)."""
    _, tenant = verify_throttled(
        session=session, context=context, client=client_address(request), key=key
    )
    bind(tenant_id=tenant.id)  # the request's log lines name the tenant from here on
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def owned(repository: type[TenantRepository[Row]], path_param: str) -> Any:
    """``Annotated[Model, owned(ModelRepository, "model_id")]``: the row the route's
    ``path_param`` names, loaded for the caller's tenant, or 404."""

    def load(
        row_id: Annotated[str, Path(alias=path_param)], tenant: TenantDep, session: SessionDep
    ) -> Any:
        return repository(session).owned(row_id, tenant.id)

    return Depends(load)
