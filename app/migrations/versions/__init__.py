"""Alembic revisions; Alembic loads them by path, nothing imports them."""
