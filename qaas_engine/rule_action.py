"""One line of the report's ``rules``: its own module so every rule module can build one
without importing the others (``qaas_engine.rules`` runs them in order)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RuleAction:
    """Which rule, where, what it did and why."""

    rule: str
    node: str
    action: str
    why: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)
