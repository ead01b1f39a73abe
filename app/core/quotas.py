"""Per-tenant limits: stored bytes (413), jobs queued or running and submissions per minute
(429 with Retry-After). Counted from the rows themselves, so every API process agrees without
shared memory, in the embedded mode as in the distributed one; job submissions are counted under
a lock on the tenant (see ``check_submission``)."""

from __future__ import annotations

import math
from datetime import timedelta

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import utcnow
from app.core.errors import QuotaExceeded, TooManyRequests
from app.datasets.repository import DatasetRepository
from app.jobs.repository import JobRepository
from app.models_.repository import ModelRepository

RATE_WINDOW = timedelta(minutes=1)
ACTIVE_RETRY_AFTER_S = 30


class Quotas:
    def __init__(self, *, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    def stored_bytes(self, tenant_id: str) -> int:
        """What the quota counts: models as stored, datasets at their expanded size."""
        return ModelRepository(self.session).stored_bytes(tenant_id) + DatasetRepository(
            self.session
        ).stored_bytes(tenant_id)

    def upload_allowance(self, *, tenant_id: str, limit: int, declared_length: int | None) -> int:
        """The most bytes this upload may have: the per-file limit or what the quota leaves."""
        quota = self.settings.quota_stored_bytes
        used = self.stored_bytes(tenant_id)
        left = quota - used
        wanted = declared_length if declared_length is not None else 1
        if wanted > left and (declared_length is None or declared_length <= limit):
            raise QuotaExceeded(
                f"storage quota exceeded: this tenant stores {used} of its {quota} bytes and "
                f"the upload needs {wanted} more"
            )
        return min(limit, left)

    def check_expanded(self, *, tenant_id: str, expanded_bytes: int) -> None:
        """A dataset counts at its expanded size: a small compressed archive of zeros must not
        slip a large dataset past the quota (its compressed bytes were counted as it streamed)."""
        quota = self.settings.quota_stored_bytes
        used = self.stored_bytes(tenant_id)
        if used + expanded_bytes > quota:
            raise QuotaExceeded(
                f"storage quota exceeded: this tenant stores {used} of its {quota} bytes and "
                f"the dataset expands to {expanded_bytes} bytes (datasets count expanded)"
            )

    def check_submission(self, *, tenant_id: str, lock: bool) -> None:
        """With ``lock`` the tenant stays locked until the transaction ends: call it right
        before inserting the job, so concurrent submissions cannot all pass on the same count.
        Without it, a cheap early refusal before the request's slower checks."""
        jobs = JobRepository(self.session)
        if lock:
            jobs.lock_tenant_submissions(tenant_id)
        active, most = jobs.count_active(tenant_id), self.settings.quota_active_jobs
        if active >= most:
            raise TooManyRequests(
                f"{active} jobs are queued or running, the most a tenant may have; "
                "submit again when one has finished",
                retry_after_s=ACTIVE_RETRY_AFTER_S,
            )
        per_minute = self.settings.submissions_per_minute
        now = utcnow()
        recent, oldest = jobs.submissions_since(tenant_id, now - RATE_WINDOW, per_minute)
        if recent >= per_minute and oldest is not None:
            wait = (oldest + RATE_WINDOW - now).total_seconds()
            raise TooManyRequests(
                f"more than {per_minute} job submissions in a minute; slow down",
                retry_after_s=math.ceil(wait),
            )
