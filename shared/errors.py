"""Domain errors carry the rule broken, the field at fault and a human reason.

HTTP edges map them to 4xx bodies; consumers map them to dead-letter reasons.
"""

from __future__ import annotations


class DomainError(Exception):
    status_code = 422

    def __init__(self, rule: str, reason: str, field: str | None = None) -> None:
        super().__init__(f"{rule}: {reason}" + (f" (field {field})" if field else ""))
        self.rule = rule
        self.reason = reason
        self.field = field

    def as_dict(self) -> dict[str, str | None]:
        return {"rule": self.rule, "field": self.field, "reason": self.reason}


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class Forbidden(DomainError):
    status_code = 403
