"""What becomes of a message: pure decisions, no broker.

A delivery is decoded into a task (or refused with a reason), its handler runs, and the
outcome of that run becomes a :class:`Decision`: acknowledge it, retry it later, dead-letter
it, or leave it unacknowledged for the broker to deliver again. The settler
(:mod:`rabbitworker.settler`) carries decisions out; nothing here does I/O, so every rule is
tested as a plain function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import ValidationError

from rabbitworker.config import QueueConfig
from rabbitworker.delays import without_delay_trace
from rabbitworker.errors import InvalidPayloadError, PermanentError
from rabbitworker.events import DeadLetterReason, Settlement

#: Header names the host writes. ``x-first-death-*`` follow RabbitMQ's own names.
HEADER_QUEUE = "x-rabbitworker-queue"
HEADER_REASON = "x-rabbitworker-reason"
HEADER_ERROR = "x-rabbitworker-error"
HEADER_EXCEPTION_TYPE = "x-rabbitworker-exception-type"
HEADER_EXCEPTION_MESSAGE = "x-rabbitworker-exception-message"
HEADER_TASK = "x-rabbitworker-task"
HEADER_DEAD_LETTERED_AT = "x-rabbitworker-dead-lettered-at"
HEADER_ATTEMPT = "x-rabbitworker-attempt"
HEADER_ATTEMPTS = "x-rabbitworker-attempts"
#: Set by the round-1 host on requeued copies; read so such copies keep their count.
HEADER_REDELIVERIES = "x-rabbitworker-redeliveries"
#: RabbitMQ's own count of returns, on quorum queues.
HEADER_DELIVERY_COUNT = "x-delivery-count"

#: Headers that describe past failures (ours and RabbitMQ's); a replayed message drops them.
FAILURE_HEADERS = frozenset(
    {
        HEADER_QUEUE,
        HEADER_REASON,
        HEADER_ERROR,
        HEADER_EXCEPTION_TYPE,
        HEADER_EXCEPTION_MESSAGE,
        HEADER_TASK,
        HEADER_DEAD_LETTERED_AT,
        HEADER_ATTEMPT,
        HEADER_ATTEMPTS,
        HEADER_REDELIVERIES,
        HEADER_DELIVERY_COUNT,
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
        "x-death",
    }
)

#: Content types a JSON body may come with: JSON itself, and what generic clients send when
#: they say nothing precise. Anything else declared (XML, HTML, msgpack, ...) is a wrong type.
JSON_CONTENT_TYPES = frozenset(
    {
        "application/json",
        "text/json",
        "text/plain",
        "application/octet-stream",
        "binary/octet-stream",
    }
)
#: Header values the host writes are cut to this many characters, so a copy never grows a
#: message by more than a few kilobytes.
MAX_HEADER_TEXT = 2048


class BadInput(Exception):
    """A message that cannot reach a handler as it is: carries the dead-letter reason."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _is_json_content_type(content_type: str | None) -> bool:
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_CONTENT_TYPES or media.endswith("+json")


def decode_task(body: bytes, content_type: str | None, max_bytes: int) -> dict[str, Any]:
    """Turn a body into a task message, or raise :class:`BadInput` naming what is wrong."""
    if len(body) > max_bytes:
        raise BadInput(
            DeadLetterReason.TOO_LARGE,
            f"body is {len(body)} bytes, above RABBITWORKER_MAX_MESSAGE_BYTES={max_bytes}",
        )
    if not _is_json_content_type(content_type):
        raise BadInput(
            DeadLetterReason.WRONG_CONTENT_TYPE,
            f"content type {content_type!r} is not JSON; publish with application/json",
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            raise BadInput(
                DeadLetterReason.INVALID_UTF8, f"body is not UTF-8: {utf8_error}"
            ) from None
        raise BadInput(DeadLetterReason.INVALID_JSON, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput(
            DeadLetterReason.NOT_AN_OBJECT,
            f"body is a JSON {type(data).__name__}, not an object with a 'task' field",
        )
    task = data.get("task")
    if task is None:
        raise BadInput(DeadLetterReason.MISSING_TASK, "body has no 'task' field")
    if not isinstance(task, str):
        raise BadInput(
            DeadLetterReason.INVALID_TASK,
            f"'task' must be a string, got {type(task).__name__}",
        )
    return data


def int_header(headers: Mapping[str, Any], name: str, default: int) -> int:
    """A non-negative integer header, ``default`` when absent or malformed."""
    value = headers.get(name, default)
    if isinstance(value, bool):
        return default
    try:
        return max(int(value), default)
    except (TypeError, ValueError):
        return default


# -- handler outcomes ----------------------------------------------------------------------


class Interruption(StrEnum):
    """Why the host stopped a handler before it finished (not the handler's fault)."""

    SHUTDOWN = "the host stopped before the message was settled"
    CHANNEL_LOST = "the channel to the broker closed before the message was settled"


@dataclass(frozen=True, slots=True)
class Returned:
    """The handler returned ``result``."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class Raised:
    """The handler raised ``error``."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class TimedOut:
    """The handler ran past ``handler_timeout`` and was cancelled."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The host cancelled the handler (shutdown, lost channel): whatever it then did, its
    work is unfinished."""

    why: Interruption


@dataclass(frozen=True, slots=True)
class Refused:
    """The message never reached a handler (bad input, unknown task, delivery limit)."""

    reason: DeadLetterReason
    detail: str


HandlerOutcome = Returned | Raised | TimedOut | Interrupted | Refused


# -- decisions -----------------------------------------------------------------------------


class Action(StrEnum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"
    #: Leave unacknowledged: the broker delivers it again (to this host or another).
    LEAVE = "leave"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one delivery, and why.

    ``exception`` is the handler's exception, for the dead letter's headers; ``retry_in``
    and ``retry_queue`` are set for retries.
    """

    action: Action
    reason: DeadLetterReason | None = None
    detail: str | None = None
    exception: BaseException | None = None
    retry_in: float | None = None
    retry_queue: str | None = None
    result: Any = None

    @property
    def settlement(self) -> Settlement:
        """How the message leaves the host once the decision is carried out."""
        return _SETTLEMENTS[self.action]


_SETTLEMENTS = {
    Action.ACK: Settlement.ACKED,
    Action.RETRY: Settlement.RETRIED,
    Action.DEAD_LETTER: Settlement.DEAD_LETTERED,
    Action.LEAVE: Settlement.UNSETTLED,
}


def retry_queue_name(config: QueueConfig, delay: float) -> str:
    """The delay queue a message of ``config`` waits in before its retry: ``q.retry.5000ms``."""
    return f"{config.name}.retry.{round(delay * 1000)}ms"


def classify(error: BaseException) -> DeadLetterReason:
    """The dead-letter reason of a handler's exception."""
    if isinstance(error, ValidationError | InvalidPayloadError):
        return DeadLetterReason.INVALID_PAYLOAD
    if isinstance(error, PermanentError):
        return DeadLetterReason.PERMANENT_ERROR
    return DeadLetterReason.HANDLER_ERROR


def decide(config: QueueConfig, attempt: int, outcome: HandlerOutcome) -> Decision:
    """The decision for a delivery of ``config``'s queue whose ``attempt``-th try ended so.

    Interrupted handlers leave their message for redelivery even if they returned: a handler
    that catches the host's cancellation and returns did not finish its work.
    """
    match outcome:
        case Returned(result):
            return Decision(Action.ACK, result=result)
        case Interrupted(why):
            return Decision(Action.LEAVE, detail=why.value)
        case Refused(reason, detail):
            return Decision(Action.DEAD_LETTER, reason, detail)
        case TimedOut(seconds):
            reason, detail = (
                DeadLetterReason.TIMEOUT,
                (f"handler did not finish within handler_timeout={seconds:g} s"),
            )
            error: BaseException | None = TimeoutError(f"handler_timeout={seconds:g} s")
        case Raised(raised):
            reason, detail, error = classify(raised), f"{type(raised).__name__}: {raised}", raised
    if reason.retryable and attempt < 1 + config.max_retries:
        delay = config.retry_delay(attempt)
        return Decision(
            Action.RETRY,
            reason,
            detail,
            error,
            retry_in=delay,
            retry_queue=retry_queue_name(config, delay),
        )
    return Decision(Action.DEAD_LETTER, reason, detail, error)


def delivery_limit_exceeded(
    config: QueueConfig, returns: int, clean_returns: int
) -> Refused | None:
    """Refuse a message the broker gave back more than ``delivery_limit`` times without its
    being settled, not counting the times a clean shutdown gave it back.

    :param returns: how often it was delivered before without being settled (on quorum
        queues the broker's ``x-delivery-count``).
    :param clean_returns: how many of those were clean shutdowns (the ledger's record).
    """
    crashes = returns - clean_returns
    if crashes <= config.delivery_limit:
        return None
    return Refused(
        DeadLetterReason.DELIVERY_LIMIT,
        f"delivered {crashes + 1} times without being settled (the worker crashed or lost "
        f"its connection each time); delivery_limit is {config.delivery_limit}",
    )


# -- the headers of copies -----------------------------------------------------------------


def _cut(text: str) -> str:
    return text if len(text) <= MAX_HEADER_TEXT else text[: MAX_HEADER_TEXT - 1] + "…"


def retry_headers(headers: Mapping[str, Any], attempt: int, decision: Decision) -> dict[str, Any]:
    """The headers of the copy that waits in a delay queue for attempt ``attempt + 1``."""
    copy = without_delay_trace(headers)
    copy.pop(HEADER_DELIVERY_COUNT, None)
    copy[HEADER_ATTEMPT] = attempt + 1
    copy[HEADER_REASON] = str(decision.reason)
    copy[HEADER_ERROR] = _cut(decision.detail or "")
    return copy


def dead_letter_headers(
    headers: Mapping[str, Any],
    *,
    queue: str,
    exchange: str,
    task: str | None,
    attempt: int,
    decision: Decision,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The headers of a dead letter: where it failed, why, after how many attempts."""
    copy = without_delay_trace(headers)
    copy.pop(HEADER_DELIVERY_COUNT, None)
    copy.setdefault("x-first-death-queue", queue)
    copy.setdefault("x-first-death-reason", "rejected")
    copy.setdefault("x-first-death-exchange", exchange)
    copy[HEADER_QUEUE] = queue
    copy[HEADER_REASON] = str(decision.reason)
    copy[HEADER_ERROR] = _cut(decision.detail or "")
    copy[HEADER_ATTEMPTS] = attempt
    copy[HEADER_DEAD_LETTERED_AT] = (now or datetime.now(UTC)).isoformat()
    if task is not None:
        copy[HEADER_TASK] = task
    if decision.exception is not None:
        copy[HEADER_EXCEPTION_TYPE] = type(decision.exception).__qualname__
        copy[HEADER_EXCEPTION_MESSAGE] = _cut(str(decision.exception))
    return copy
