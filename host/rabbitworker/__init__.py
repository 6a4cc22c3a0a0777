"""rabbitworker: a plugin-based RabbitMQ worker host.

The plugin API: decorate ``rabbitworker_queues()`` with :data:`hookimpl` and return
:class:`QueueConfig` objects; publish work with :func:`publish_task`.
"""

from rabbitworker.config import QueueConfig
from rabbitworker.context import TaskContext, current_task
from rabbitworker.errors import (
    BrokerConnectionError,
    BrokerTopologyMismatchError,
    DuplicateQueueError,
    ExchangeNotFoundError,
    InvalidQueueConfigError,
    PermanentError,
    PluginError,
    PluginHookError,
    PluginInfo,
    PluginLoadError,
    PublishError,
    PublishNotSentError,
    PublishRefusedError,
    PublishUncertainError,
    RabbitworkerError,
    TopologyConflictError,
    UnroutableMessageError,
)
from rabbitworker.events import DeadLetterReason, Delivery, Outcome, Settlement
from rabbitworker.hookspecs import hookimpl
from rabbitworker.publish import (
    close_publishers,
    close_sync_publisher,
    publish_task,
    publish_task_sync,
)
from rabbitworker.settings import HostSettings

__all__ = [
    "BrokerConnectionError",
    "BrokerTopologyMismatchError",
    "DeadLetterReason",
    "Delivery",
    "DuplicateQueueError",
    "ExchangeNotFoundError",
    "HostSettings",
    "InvalidQueueConfigError",
    "Outcome",
    "PermanentError",
    "PluginError",
    "PluginHookError",
    "PluginInfo",
    "PluginLoadError",
    "PublishError",
    "PublishNotSentError",
    "PublishRefusedError",
    "PublishUncertainError",
    "QueueConfig",
    "RabbitworkerError",
    "Settlement",
    "TaskContext",
    "TopologyConflictError",
    "UnroutableMessageError",
    "close_publishers",
    "close_sync_publisher",
    "current_task",
    "hookimpl",
    "publish_task",
    "publish_task_sync",
]
