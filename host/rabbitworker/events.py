"""What the per-message hooks receive: a message as it arrived, and what became of it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Settlement(StrEnum):
    """How a message left the host."""

    ACKED = "acked"
    DEAD_LETTERED = "dead-lettered"


class DeadLetterReason(StrEnum):
    """Why a message was dead-lettered; the value goes in the ``x-rabbitworker-reason`` header."""

    HANDLER_ERROR = "handler-error"
    UNKNOWN_TASK = "unknown-task"
    MISSING_TASK = "missing-task"
    INVALID_TASK = "invalid-task"
    INVALID_JSON = "invalid-json"
    NOT_AN_OBJECT = "not-an-object"


@dataclass(slots=True)
class Delivery:
    """A message delivered to one of the host's queues."""

    queue: str
    task: str | None
    message_id: str | None
    redelivered: bool
    headers: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Outcome:
    """What the host did with a message.

    ``reason`` and ``detail`` are set only for dead-lettered messages; ``detail`` is the
    human-readable cause (for a handler error: ``"ValueError: bad address"``).
    """

    settlement: Settlement
    duration: float
    reason: DeadLetterReason | None = None
    detail: str | None = None
    result: Any = None
