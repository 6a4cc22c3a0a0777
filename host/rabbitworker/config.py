"""``QueueConfig``: one queue a plugin contributes, validated when it is built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rabbitworker.errors import InvalidQueueConfigError
from rabbitworker.handlers import Handler, HandlerSignatureError, HandlerSpec

EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")
OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
#: Queue arguments the host derives from QueueConfig fields (``arguments`` may not set them).
MANAGED_ARGUMENTS = {
    "x-dead-letter-exchange": "dlx_exchange_name",
    "x-dead-letter-routing-key": "the retry path",
    "x-dead-letter-strategy": "queue_type",
    "x-queue-type": "queue_type",
    "x-delivery-limit": "delivery_limit",
    "x-max-priority": "max_priority",
    "x-message-ttl": "message_ttl",
    "x-max-length": "max_length",
    "x-max-length-bytes": "max_length_bytes",
    "x-overflow": "overflow",
    "x-single-active-consumer": "single_active_consumer",
}
QUEUE_TYPES = ("classic", "quorum")
#: The names of the delay cascade (``rabbitworker.delays``); no plugin may use them.
RESERVED_PREFIX = "rabbitworker.delay."

#: RabbitMQ closes a channel whose delivery stays unacked longer than its consumer_timeout
#: (30 minutes by default); handler timeouts must stay below it.
BROKER_CONSUMER_TIMEOUT = 1800.0


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
    :param max_retries: how many times a failed message is tried again before it is
        dead-lettered (0: never). Retries wait in broker-side delay queues, not in the host.
    :param retry_delays: seconds to wait before each retry (the last one repeats). Empty:
        exponential, ``retry_backoff * 2 ** (retry - 1)`` capped at ``retry_backoff_max``.
    :param handler_timeout: seconds a handler may run before it is cancelled and its message
        treated as failed; below RabbitMQ's 30-minute consumer timeout.
    :param queue_type: ``classic`` or ``quorum`` (replicated; for RabbitMQ clusters).
    :param delivery_limit: how many times a message may be delivered again without being
        settled (the worker crashed or lost its connection) before it is dead-lettered
        instead of crashing the worker forever. Clean shutdowns do not count.
    :param max_priority: ``x-max-priority``: messages published with ``priority`` up to this
        (1-255; 10 is plenty) are delivered highest first. Classic queues only on RabbitMQ
        3.10.
    :param message_ttl: ``x-message-ttl`` in seconds: a message waiting longer is
        dead-lettered by the broker (reason ``expired`` in its ``x-death`` header).
    :param max_length: ``x-max-length``: at most this many ready messages.
    :param max_length_bytes: ``x-max-length-bytes``: at most this many bytes of bodies.
    :param overflow: ``x-overflow``, what happens at a limit: ``drop-head`` (the oldest is
        dead-lettered), ``reject-publish`` (``publish_task`` raises
        :class:`~rabbitworker.PublishRefusedError`), ``reject-publish-dlx`` (the same, and
        the new message is dead-lettered). Quorum queues need ``reject-publish``.
    :param single_active_consumer: ``x-single-active-consumer``: one consumer at a time
        gets the queue's messages, in order; the others stand by and take over when it goes.
    :param arguments: any other ``x-`` queue argument, passed as it is.
    """

    name: str
    routing_key: str
    task_handlers: Mapping[str, Handler] = field(default_factory=dict)
    prefetch_count: int = 1
    exchange_name: str = "tasks"
    dlx_exchange_name: str = "tasks.dlx"
    dlq_name: str = "tasks.dlq"
    exchange_type: str = "direct"
    max_retries: int = 0
    retry_delays: Sequence[float] = ()
    retry_backoff: float = 1.0
    retry_backoff_max: float = 300.0
    handler_timeout: float = 1500.0
    queue_type: str = "classic"
    delivery_limit: int = 5
    max_priority: int | None = None
    message_ttl: float | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str | None = None
    single_active_consumer: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)
    #: How each task's handler is called, learned once when the config is built.
    handler_specs: Mapping[str, HandlerSpec] = field(init=False, repr=False)

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
        self._validate_delivery(queue)
        self._validate_arguments(queue)
        self._validate_handlers(queue)

    def _validate_arguments(self, queue: str | None) -> None:
        quorum = self.queue_type == "quorum"
        for name in ("max_length", "max_length_bytes"):
            if getattr(self, name) is not None:
                _require_int(getattr(self, name), name, 0, queue)
        if self.max_priority is not None:
            _require_int(self.max_priority, "max_priority", 1, queue)
            if self.max_priority > 255:
                raise InvalidQueueConfigError(
                    "max_priority", f"must be at most 255, got {self.max_priority}", queue
                )
            if quorum:
                raise InvalidQueueConfigError(
                    "max_priority",
                    "is not supported by quorum queues on RabbitMQ 3.10 (the broker refuses "
                    "x-max-priority there); use queue_type='classic' for a priority queue",
                    queue,
                )
        ttl = self.message_ttl
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0
        ):
            raise InvalidQueueConfigError(
                "message_ttl", f"must be a positive number of seconds, got {ttl!r}", queue
            )
        if self.overflow is not None:
            if self.overflow not in OVERFLOW_MODES:
                raise InvalidQueueConfigError(
                    "overflow", f"must be one of {', '.join(OVERFLOW_MODES)}", queue
                )
            if quorum and self.overflow != "reject-publish":
                raise InvalidQueueConfigError(
                    "overflow",
                    f"{self.overflow!r} cannot be used on a quorum queue: its at-least-once "
                    "dead-lettering needs 'reject-publish'",
                    queue,
                )
        if not isinstance(self.single_active_consumer, bool):
            raise InvalidQueueConfigError("single_active_consumer", "must be True or False", queue)
        if not isinstance(self.arguments, Mapping):
            raise InvalidQueueConfigError(
                "arguments", "must be a dict of x- queue arguments", queue
            )
        for key in self.arguments:
            if not isinstance(key, str) or not key.startswith("x-"):
                raise InvalidQueueConfigError(
                    "arguments", f"has {key!r}; queue arguments start with 'x-'", queue
                )
            owner = MANAGED_ARGUMENTS.get(key)
            if owner is not None:
                raise InvalidQueueConfigError(
                    "arguments", f"sets {key!r}, which the host sets from {owner}", queue
                )
        object.__setattr__(self, "arguments", dict(self.arguments))

    def _validate_delivery(self, queue: str | None) -> None:
        _require_int(self.max_retries, "max_retries", 0, queue)
        _require_int(self.delivery_limit, "delivery_limit", 0, queue)
        if self.queue_type not in QUEUE_TYPES:
            raise InvalidQueueConfigError(
                "queue_type", f"must be one of {', '.join(QUEUE_TYPES)}", queue
            )
        delays = self.retry_delays
        if isinstance(delays, str | bytes) or not isinstance(delays, Sequence):
            raise InvalidQueueConfigError(
                "retry_delays", "must be a list of seconds, e.g. [1, 10, 60]", queue
            )
        for name, value in (
            *((f"retry_delays[{i}]", d) for i, d in enumerate(delays)),
            ("retry_backoff", self.retry_backoff),
            ("retry_backoff_max", self.retry_backoff_max),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidQueueConfigError(
                    name, f"must be a positive number of seconds, got {value!r}", queue
                )
        object.__setattr__(self, "retry_delays", tuple(float(d) for d in delays))
        timeout = self.handler_timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < BROKER_CONSUMER_TIMEOUT
        ):
            raise InvalidQueueConfigError(
                "handler_timeout",
                f"must be more than 0 and less than RabbitMQ's consumer timeout "
                f"({BROKER_CONSUMER_TIMEOUT:g} s), got {timeout!r}; a longer task should be "
                "split, or run elsewhere and report back with another message",
                queue,
            )

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before trying again after attempt number ``attempt`` (1-based)."""
        if self.retry_delays:
            return self.retry_delays[min(attempt, len(self.retry_delays)) - 1]
        return float(min(self.retry_backoff * 2 ** (attempt - 1), self.retry_backoff_max))

    @property
    def retry_schedule(self) -> list[float]:
        """The delay before each retry, in order (empty when ``max_retries`` is 0)."""
        return [self.retry_delay(attempt) for attempt in range(1, self.max_retries + 1)]

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
        specs: dict[str, HandlerSpec] = {}
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
            try:
                specs[task] = HandlerSpec.inspect(handler)
            except HandlerSignatureError as exc:
                raise InvalidQueueConfigError(
                    "task_handlers", f"task {task!r}: {exc}", queue
                ) from exc
        # A private copy, so a plugin mutating its dict later cannot change a running host.
        object.__setattr__(self, "task_handlers", dict(handlers))
        object.__setattr__(self, "handler_specs", specs)

    @property
    def has_sync_handlers(self) -> bool:
        """Whether any handler is a plain ``def`` (it needs a worker thread)."""
        return any(not spec.is_async for spec in self.handler_specs.values())

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
            "queue_type": self.queue_type,
            "max_retries": self.max_retries,
            "retry_delays": self.retry_schedule,
            "handler_timeout": self.handler_timeout,
            "delivery_limit": self.delivery_limit,
            "max_priority": self.max_priority,
            "message_ttl": self.message_ttl,
            "max_length": self.max_length,
            "max_length_bytes": self.max_length_bytes,
            "overflow": self.overflow,
            "single_active_consumer": self.single_active_consumer,
            "arguments": dict(self.arguments),
        }


def _require_int(value: object, field_name: str, minimum: int, queue: str | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidQueueConfigError(
            field_name, f"must be an integer >= {minimum}, got {value!r}", queue
        )


def _require_name(value: object, field_name: str, queue: str | None) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidQueueConfigError(
            field_name, f"must be a non-empty string, got {value!r}", queue
        )
    if len(value.encode()) > 255:
        raise InvalidQueueConfigError(
            field_name, "is longer than the 255 bytes AMQP allows for a name", queue
        )
    if value.startswith(RESERVED_PREFIX):
        raise InvalidQueueConfigError(
            field_name,
            f"{value!r} starts with {RESERVED_PREFIX!r}, which the host keeps for its delay "
            "queues; choose another name",
            queue,
        )
