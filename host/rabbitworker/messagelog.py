"""Built-in plugin: the per-message log lines, written on the same hooks any plugin can use.

Every line starts with ``[queue]`` so one ``grep`` follows a queue. Arguments are passed
to loguru un-formatted, so a line whose level is off costs almost nothing.
"""

from __future__ import annotations

from loguru import logger

from rabbitworker.events import Delivery, Outcome, Settlement
from rabbitworker.hookspecs import hookimpl


@hookimpl
def rabbitworker_message_received(delivery: Delivery) -> None:
    logger.info(
        "[{}] received message {} task={}{}",
        delivery.queue,
        delivery.message_id,
        delivery.task,
        " (redelivered)" if delivery.redelivered else "",
    )


@hookimpl
def rabbitworker_message_settled(delivery: Delivery, outcome: Outcome) -> None:
    if outcome.settlement is Settlement.ACKED:
        logger.info(
            "[{}] ACKed message {} for task {} in {:.1f} ms",
            delivery.queue,
            delivery.message_id,
            delivery.task,
            outcome.duration * 1000,
        )
    elif outcome.settlement is Settlement.RETRIED:
        logger.warning(
            "[{}] attempt {} of message {} (task {}) failed: {}: {}; retrying in {:g} s",
            delivery.queue,
            delivery.attempt,
            delivery.message_id,
            delivery.task,
            outcome.reason,
            outcome.detail,
            outcome.retry_in,
        )
    else:
        logger.warning(
            "[{}] dead-lettered message {} (task {}): {}: {}",
            delivery.queue,
            delivery.message_id,
            delivery.task,
            outcome.reason,
            outcome.detail,
        )
