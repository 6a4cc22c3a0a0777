"""Built-in plugin: the per-message log lines, written on the same hooks any plugin can use.

Every message gets one line naming its queue: ``[queue] ACKed message …`` at
``RABBITWORKER_MESSAGE_LOG_LEVEL`` (INFO), or a WARNING when it was retried, dead-lettered or
left unacknowledged. The "received" line is DEBUG. Acked lines take the cheap path
(:class:`rabbitworker.logs.FastLines`); with ``RABBITWORKER_LOG_FORMAT=json`` every line
carries the fields queue, task, message_id, attempt, outcome, duration_ms (and reason,
detail for failures).
"""

from __future__ import annotations

from loguru import logger

from rabbitworker import logs
from rabbitworker.events import Delivery, Outcome, Settlement
from rabbitworker.hookspecs import hookimpl
from rabbitworker.settings import HostSettings

#: The level of the acked-message lines, from RABBITWORKER_MESSAGE_LOG_LEVEL at start-up.
_level = "INFO"
_level_no = 20


@hookimpl
def rabbitworker_startup(settings: HostSettings) -> None:
    global _level, _level_no
    _level = settings.message_log_level
    _level_no = logger.level(_level).no


@hookimpl
def rabbitworker_shutdown() -> None:
    if logs.fast_lines is not None:
        logs.fast_lines.flush()


@hookimpl
def rabbitworker_message_received(delivery: Delivery) -> None:
    logger.debug(
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
    settlement = outcome.settlement
    duration_ms = round(outcome.duration * 1000, 3)
    if settlement is Settlement.ACKED:
        lines = logs.fast_lines
        if lines is not None:
            if lines.enabled(_level_no):
                lines.write(
                    _level,
                    f"[{delivery.queue}] ACKed message {delivery.message_id} for task "
                    f"{delivery.task} in {duration_ms} ms",
                    {
                        "queue": delivery.queue,
                        "message_id": delivery.message_id,
                        "task": delivery.task,
                        "attempt": delivery.attempt,
                        "outcome": "acked",
                        "duration_ms": duration_ms,
                    },
                )
            return
        logger.log(
            _level,
            "[{queue}] ACKed message {message_id} for task {task} in {duration_ms} ms",
            queue=delivery.queue,
            message_id=delivery.message_id,
            task=delivery.task,
            attempt=delivery.attempt,
            outcome="acked",
            duration_ms=duration_ms,
        )
        return
    fields = {
        "queue": delivery.queue,
        "message_id": delivery.message_id,
        "task": delivery.task,
        "attempt": delivery.attempt,
        "outcome": settlement.value,
        "duration_ms": duration_ms,
    }
    if settlement is Settlement.RETRIED:
        logger.warning(
            "[{queue}] attempt {attempt} of message {message_id} (task {task}) failed: "
            "{reason}: {detail}; retrying in {retry_in:g} s",
            reason=str(outcome.reason),
            detail=outcome.detail,
            retry_in=outcome.retry_in or 0.0,
            **fields,
        )
    elif settlement is Settlement.UNSETTLED:
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
