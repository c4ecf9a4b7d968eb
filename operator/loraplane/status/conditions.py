"""Conditions as in the Kubernetes API conventions, merged so that lastTransitionTime only moves when
the status really changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from loraplane.api.common import Condition, ConditionStatus


@dataclass(frozen=True)
class Observed:
    """One condition as just observed (no timestamps yet)."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def merge(
    previous: list[Condition], observed: list[Observed], generation: int | None, now: datetime
) -> list[Condition]:
    """The new condition list: observed conditions replace earlier ones of the same type; the
    transition time is kept when the status did not change. Types not observed are kept as they were."""
    by_type = {c.type: c for c in previous}
    for seen in observed:
        before = by_type.get(seen.type)
        moved = before is None or before.status != seen.status
        by_type[seen.type] = Condition(
            type=seen.type,
            status=seen.status,
            reason=seen.reason,
            message=seen.message[:32768],
            observed_generation=generation,
            last_transition_time=now if moved or before is None else before.last_transition_time,
        )
    return list(by_type.values())


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
