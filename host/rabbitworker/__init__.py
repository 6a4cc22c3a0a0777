"""rabbitworker: a plugin-based RabbitMQ worker host.

The plugin API: decorate ``rabbitworker_queues()`` with :data:`hookimpl` and return
:class:`QueueConfig` objects; publish work with :func:`publish_task`.
"""

from rabbitworker.config import QueueConfig
from rabbitworker.errors import (
    BrokerConnectionError,
    DuplicateQueueError,
    InvalidQueueConfigError,
    PluginError,
    PluginHookError,
    PluginInfo,
    PluginLoadError,
    PublishError,
    RabbitworkerError,
    TopologyConflictError,
    UnroutableMessageError,
)
from rabbitworker.events import DeadLetterReason, Delivery, Outcome, Settlement
from rabbitworker.hookspecs import hookimpl
from rabbitworker.publish import close_publishers, publish_task
from rabbitworker.settings import HostSettings

__all__ = [
    "BrokerConnectionError",
    "DeadLetterReason",
    "Delivery",
    "DuplicateQueueError",
    "HostSettings",
    "InvalidQueueConfigError",
    "Outcome",
    "PluginError",
    "PluginHookError",
    "PluginInfo",
    "PluginLoadError",
    "PublishError",
    "QueueConfig",
    "RabbitworkerError",
    "Settlement",
    "TopologyConflictError",
    "UnroutableMessageError",
    "close_publishers",
    "hookimpl",
    "publish_task",
]
