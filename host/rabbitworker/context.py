"""The task context: what a running handler may know about the message it handles."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger as _logger

if TYPE_CHECKING:
    from loguru import Logger


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The message a handler is running for.

    :param queue: the queue it arrived on.
    :param task: its ``task`` field.
    :param message_id: its AMQP ``message_id`` (``None`` if the publisher set none).
    :param attempt: 1 on the first try, 2 on the first retry, ...
    :param max_attempts: ``1 + max_retries`` of the queue.
    :param redelivered: the broker delivered it before (a worker died or lost its connection).
    :param headers: its AMQP headers.
    """

    queue: str
    task: str
    message_id: str | None
    attempt: int
    max_attempts: int
    redelivered: bool
    headers: dict[str, Any]

    @property
    def is_last_attempt(self) -> bool:
        """No retry follows if this attempt fails."""
        return self.attempt >= self.max_attempts

    @property
    def logger(self) -> Logger:
        """A loguru logger bound to this message's queue, task, message id and attempt."""
        return _logger.bind(
            queue=self.queue, task=self.task, message_id=self.message_id, attempt=self.attempt
        )


_current: ContextVar[TaskContext] = ContextVar("rabbitworker_task")


def current_task() -> TaskContext:
    """The context of the message being handled, from inside a handler (async or plain).

    :raises LookupError: called outside a handler.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError(
            "rabbitworker.current_task() was called outside a task handler; call it from the "
            "handler (or code it calls) while a message is being handled"
        ) from None
