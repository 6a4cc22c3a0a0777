"""What the per-message hooks receive: a message as it arrived, and what became of it."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Settlement(StrEnum):
    """How a message left the host."""

    ACKED = "acked"
    RETRIED = "retried"
    DEAD_LETTERED = "dead-lettered"
    #: Left unacknowledged (shutdown, a lost channel): the broker delivers it again.
    UNSETTLED = "unsettled"


class DeadLetterReason(StrEnum):
    """Why a message was dead-lettered; the value goes in the ``x-rabbitworker-reason`` header."""

    HANDLER_ERROR = "handler-error"
    TIMEOUT = "timeout"
    PERMANENT_ERROR = "permanent-error"
    INVALID_PAYLOAD = "invalid-payload"
    UNKNOWN_TASK = "unknown-task"
    MISSING_TASK = "missing-task"
    INVALID_TASK = "invalid-task"
    INVALID_JSON = "invalid-json"
    INVALID_UTF8 = "invalid-utf8"
    NOT_AN_OBJECT = "not-an-object"
    TOO_LARGE = "too-large"
    WRONG_CONTENT_TYPE = "wrong-content-type"
    DELIVERY_LIMIT = "delivery-limit"

    @property
    def retryable(self) -> bool:
        """Only a handler that failed or ran out of time may succeed on another try."""
        return self in (DeadLetterReason.HANDLER_ERROR, DeadLetterReason.TIMEOUT)


@dataclass(slots=True)
class Delivery:
    """A message delivered to one of the host's queues.

    ``attempt`` counts tries of this message (1 the first time, 2 on the first retry).

    ``context`` is the ``contextvars`` context its handler ran in, with what the
    ``rabbitworker_handler_context`` hooks made current; the host publishes the message's
    retry or dead-letter copy in it. ``None`` when no plugin implements that hook, or when
    no handler ran.
    """

    queue: str
    task: str | None
    message_id: str | None
    redelivered: bool
    headers: dict[str, Any]
    attempt: int = 1
    context: contextvars.Context | None = None


@dataclass(slots=True, frozen=True)
class Outcome:
    """What the host did with a message.

    ``reason`` and ``detail`` are set for retried and dead-lettered messages; ``detail`` is
    the human-readable cause (for a handler error: ``"ValueError: bad address"``).
    ``retry_in`` is the delay before the retry, for retried messages.
    """

    settlement: Settlement
    duration: float
    reason: DeadLetterReason | None = None
    detail: str | None = None
    result: Any = None
    retry_in: float | None = None
