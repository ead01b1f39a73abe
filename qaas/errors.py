"""The SDK's one exception hierarchy: catch ``QaasError`` for everything, or a subclass for
what a caller can act on.

    QaasError                 status (HTTP status, 0 when there was no answer), code, detail
    ├── ConnectionFailed      no answer from the server (after the retries)
    ├── AuthError             401/403: missing, wrong or revoked API key
    ├── NotFound              404: no such job, model or dataset for this key's tenant
    ├── Conflict              409: e.g. an Idempotency-Key reused for another request
    ├── InvalidRequest        other 4xx: the request, upload or spec is at fault
    ├── RateLimited           429 still refused after the retries; ``retry_after`` seconds
    ├── ServerError           5xx (503 and 507 carry ``retry_after`` too)
    ├── JobFailed             a waited-for job ended failed or cancelled; ``job``
    └── WaitTimeout           ``Job.wait(timeout=...)`` ran out; ``job`` is still running
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qaas.resources import Job


class QaasError(Exception):
    """An error answer from the API (``status`` 4xx/5xx), or no answer (``status`` 0)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status}, {code})" if status else detail)
        self.status = status
        self.code = code
        self.detail = detail

    @property
    def client_fault(self) -> bool:
        """The request (or what it names) is at fault: retrying it unchanged will not help."""
        return 400 <= self.status < 500


class ConnectionFailed(QaasError):
    def __init__(self, detail: str) -> None:
        super().__init__(0, "unreachable", detail)


class AuthError(QaasError):
    pass


class NotFound(QaasError):
    pass


class Conflict(QaasError):
    pass


class InvalidRequest(QaasError):
    pass


class RateLimited(QaasError):
    def __init__(self, status: int, code: str, detail: str, retry_after: float | None) -> None:
        super().__init__(status, code, detail)
        self.retry_after = retry_after


class ServerError(QaasError):
    def __init__(
        self, status: int, code: str, detail: str, retry_after: float | None = None
    ) -> None:
        super().__init__(status, code, detail)
        self.retry_after = retry_after


class JobFailed(QaasError):
    """The job ended ``failed`` (``code`` is its error kind) or ``cancelled``."""

    def __init__(self, job: Job) -> None:
        kind = job.error.kind if job.error else job.status
        detail = job.error.detail if job.error and job.error.detail else job.status
        super().__init__(0, kind, f"job {job.id} {job.status}: {detail}")
        self.job = job


class WaitTimeout(QaasError):
    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(0, "timeout", f"job {job.id} still {job.status} after {timeout:g} s")
        self.job = job


def error_for(status: int, code: str, detail: str, retry_after: float | None) -> QaasError:
    """The exception class an error answer maps to."""
    if status in (401, 403):
        return AuthError(status, code, detail)
    if status == 404:
        return NotFound(status, code, detail)
    if status == 409:
        return Conflict(status, code, detail)
    if status == 429:
        return RateLimited(status, code, detail, retry_after)
    if status >= 500:
        return ServerError(status, code, detail, retry_after)
    return InvalidRequest(status, code, detail)
