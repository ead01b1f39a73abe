"""Resource ids: random, so they reveal nothing about other tenants' resources."""

import uuid


def new_id() -> str:
    return uuid.uuid4().hex
