"""A job's statuses, apart from the typed response bodies: the command line offers them as
choices, and importing ``qaas.types`` (its pydantic models) cost every ``qaas quantize`` about
75 ms before the engine had done anything."""

from __future__ import annotations

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")
