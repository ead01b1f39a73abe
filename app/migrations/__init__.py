"""Alembic migrations, shipped inside the package (alembic.ini: ``app:migrations``)."""
