"""Built-in plugin: the per-message log lines, written on the same hooks any plugin can use.

Every line starts with ``[queue]`` so one ``grep`` follows a queue. The values are passed
to loguru as keyword arguments, so a line whose level is off costs almost nothing, and
with ``RABBITWORKER_LOG_FORMAT=json`` they become fields: queue, task, message_id,
outcome, reason, duration_ms.
"""

from __future__ import annotations

from loguru import logger

from rabbitworker.events import Delivery, Outcome, Settlement
from rabbitworker.hookspecs import hookimpl
from rabbitworker.settings import HostSettings

#: The level of the per-message lines, from RABBITWORKER_MESSAGE_LOG_LEVEL at start-up.
_level = "INFO"


@hookimpl
def rabbitworker_startup(settings: HostSettings) -> None:
    global _level
    _level = settings.message_log_level


@hookimpl
def rabbitworker_message_received(delivery: Delivery) -> None:
    logger.log(
        _level,
        "[{queue}] received message {message_id} task={task}{again}",
        queue=delivery.queue,
        message_id=delivery.message_id,
        task=delivery.task,
        attempt=delivery.attempt,
        again=" (redelivered)" if delivery.redelivered else "",
        outcome="received",
    )


@hookimpl
def rabbitworker_message_settled(delivery: Delivery, outcome: Outcome) -> None:
    fields = {
        "queue": delivery.queue,
        "message_id": delivery.message_id,
        "task": delivery.task,
        "attempt": delivery.attempt,
        "outcome": outcome.settlement.value,
        "duration_ms": round(outcome.duration * 1000, 3),
    }
    if outcome.settlement is Settlement.ACKED:
        logger.log(
            _level,
            "[{queue}] ACKed message {message_id} for task {task} in {duration_ms} ms",
            **fields,
        )
    elif outcome.settlement is Settlement.RETRIED:
        logger.warning(
            "[{queue}] attempt {attempt} of message {message_id} (task {task}) failed: "
            "{reason}: {detail}; retrying in {retry_in:g} s",
            reason=str(outcome.reason),
            detail=outcome.detail,
            retry_in=outcome.retry_in or 0.0,
            **fields,
        )
    elif outcome.settlement is Settlement.UNSETTLED:
        logger.warning(
            "[{queue}] left message {message_id} (task {task}) unacknowledged, the broker "
            "will deliver it again: {detail}",
            detail=outcome.detail,
            **fields,
        )
    else:
        logger.warning(
            "[{queue}] dead-lettered message {message_id} (task {task}): {reason}: {detail}",
            reason=str(outcome.reason),
            detail=outcome.detail,
            **fields,
        )
