"""``QueueConfig``: one queue a plugin contributes, validated when it is built."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rabbitworker.errors import InvalidQueueConfigError

Handler = Callable[..., Any]

EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")


@dataclass(frozen=True, eq=False)
class QueueConfig:
    """One queue: where it is bound, which tasks it runs, and how many at once.

    :param name: the durable queue to declare and consume.
    :param routing_key: the key the queue is bound with on ``exchange_name``.
    :param task_handlers: task name → handler. A handler is ``async def h(message: dict)``
        (or a plain ``def``, run in a worker thread) receiving the whole decoded body.
    :param prefetch_count: how many messages of this queue are processed at the same time
        (the channel's ``basic.qos``); never more.
    :param exchange_name: the durable exchange the queue is bound to.
    :param exchange_type: that exchange's type (``direct`` unless you need routing patterns).
    :param dlx_exchange_name: the dead-letter exchange (a fanout) failed messages go through.
    :param dlq_name: the durable queue bound to the DLX that keeps failed messages.
        Queues may share one DLX/DLQ (the default) or have their own.
    """

    name: str
    routing_key: str
    task_handlers: Mapping[str, Handler] = field(default_factory=dict)
    prefetch_count: int = 1
    exchange_name: str = "tasks"
    dlx_exchange_name: str = "tasks.dlx"
    dlq_name: str = "tasks.dlq"
    exchange_type: str = "direct"

    def __post_init__(self) -> None:
        queue = self.name if isinstance(self.name, str) and self.name else None
        _require_name(self.name, "name", queue)
        if not isinstance(self.routing_key, str):
            raise InvalidQueueConfigError(
                "routing_key", f"must be a string, got {type(self.routing_key).__name__}", queue
            )
        if (
            isinstance(self.prefetch_count, bool)
            or not isinstance(self.prefetch_count, int)
            or self.prefetch_count < 1
        ):
            raise InvalidQueueConfigError(
                "prefetch_count",
                f"must be an integer >= 1 (the number of messages processed at once), "
                f"got {self.prefetch_count!r}",
                queue,
            )
        for name in ("exchange_name", "dlx_exchange_name", "dlq_name"):
            _require_name(getattr(self, name), name, queue)
        if self.exchange_type not in EXCHANGE_TYPES:
            raise InvalidQueueConfigError(
                "exchange_type", f"must be one of {', '.join(EXCHANGE_TYPES)}", queue
            )
        if self.dlx_exchange_name == self.exchange_name:
            raise InvalidQueueConfigError(
                "dlx_exchange_name",
                "must differ from exchange_name, or failed messages would be routed back "
                "to the queues they failed on",
                queue,
            )
        if self.dlq_name == self.name:
            raise InvalidQueueConfigError(
                "dlq_name", "must differ from the queue's own name", queue
            )
        self._validate_handlers(queue)

    def _validate_handlers(self, queue: str | None) -> None:
        handlers = self.task_handlers
        if not isinstance(handlers, Mapping):
            raise InvalidQueueConfigError(
                "task_handlers",
                f"must be a dict of task name to handler, got {type(handlers).__name__}",
                queue,
            )
        if not handlers:
            raise InvalidQueueConfigError(
                "task_handlers",
                "is empty: give at least one task name → handler, or the queue could only "
                "dead-letter",
                queue,
            )
        for task, handler in handlers.items():
            if not isinstance(task, str) or not task:
                raise InvalidQueueConfigError(
                    "task_handlers",
                    f"has a task name that is not a non-empty string: {task!r}",
                    queue,
                )
            if not callable(handler):
                raise InvalidQueueConfigError(
                    "task_handlers",
                    f"maps task {task!r} to {handler!r}, which is not callable; give a function "
                    "`async def handler(message: dict)`",
                    queue,
                )
        # A private copy, so a plugin mutating its dict later cannot change a running host.
        object.__setattr__(self, "task_handlers", dict(handlers))

    @property
    def tasks(self) -> list[str]:
        """The task names this queue handles, sorted."""
        return sorted(self.task_handlers)

    def describe(self) -> dict[str, Any]:
        """Everything about this queue except the handler objects, as plain data."""
        return {
            "queue": self.name,
            "routing_key": self.routing_key,
            "exchange": self.exchange_name,
            "exchange_type": self.exchange_type,
            "prefetch_count": self.prefetch_count,
            "dlx": self.dlx_exchange_name,
            "dlq": self.dlq_name,
            "tasks": self.tasks,
        }


def _require_name(value: object, field_name: str, queue: str | None) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidQueueConfigError(
            field_name, f"must be a non-empty string, got {value!r}", queue
        )
    if len(value.encode()) > 255:
        raise InvalidQueueConfigError(
            field_name, "is longer than the 255 bytes AMQP allows for a name", queue
        )
