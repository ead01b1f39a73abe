"""The worker's Celery app: the configuration the API sends with (``app.core.queue``), plus
the tasks.

``celery -A worker.celery_app worker`` in the distributed mode; ``qaas serve`` starts the same
worker in the embedded mode.
"""

from __future__ import annotations

from app.core.config import Settings
from app.core.queue import make_celery

celery_app = make_celery(Settings(), include=["worker.tasks"])
app = celery_app
