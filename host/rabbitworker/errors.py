"""The errors rabbitworker raises. Each message says what went wrong and what to do next."""

from __future__ import annotations

from dataclasses import dataclass


class RabbitworkerError(Exception):
    """Base class of every error raised by rabbitworker."""


class PermanentError(RabbitworkerError):
    """Raise from a handler for a failure another try cannot fix (a bad payload, a deleted
    record): the message goes to the DLQ at once, whatever ``max_retries`` says."""


class InvalidPayloadError(PermanentError):
    """The message's payload does not fit the handler (dead-lettered as ``invalid-payload``)."""


class InvalidQueueConfigError(ValueError, RabbitworkerError):
    """A :class:`~rabbitworker.QueueConfig` field has a value the host cannot use."""

    def __init__(self, field: str, problem: str, queue: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.queue = queue
        where = f"QueueConfig {queue!r}" if queue else "QueueConfig"
        super().__init__(f"{where}: field {field!r} {problem}")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """Who contributed something: an entry point and the distribution that ships it."""

    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None

    def describe(self) -> str:
        """``'reports' (rabbitworker-reports 0.1.0)``: how errors and logs name a plugin."""
        if self.distribution:
            dist = self.distribution + (f" {self.version}" if self.version else "")
            return f"{self.name!r} ({dist})"
        module = self.module or self.name
        return f"{self.name!r} (module {module}, not from an installed distribution)"


class PluginError(RabbitworkerError):
    """A plugin could not be used. The message names the plugin and the cause."""

    def __init__(self, plugin: PluginInfo, message: str) -> None:
        self.plugin = plugin
        super().__init__(message)


class PluginLoadError(PluginError):
    """A plugin's entry point failed to import."""

    def __init__(self, plugin: PluginInfo, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(
            plugin,
            f"plugin {plugin.describe()} failed to import: {type(cause).__name__}: {cause}. "
            "Fix or reinstall it, or uninstall it "
            f"(pip uninstall {plugin.distribution or plugin.name}), "
            "or skip it with RABBITWORKER_DISABLED_PLUGINS="
            f"{plugin.name}.",
        )


class PluginHookError(PluginError):
    """A plugin's hook raised or returned something the host cannot use, or the plugin
    implements its hooks in a way the host refuses at load time (``hook="register"`` when
    the problem is the plugin as a whole)."""

    def __init__(self, plugin: PluginInfo, hook: str, cause: BaseException | str) -> None:
        self.hook = hook
        self.cause = cause
        what = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        # ``hook="register"``: the plugin as a whole was refused while loading.
        where = "cannot be loaded" if hook == "register" else f"failed in hook {hook}()"
        super().__init__(
            plugin,
            f"plugin {plugin.describe()} {where}: {what}. "
            "Fix the plugin, or skip it with RABBITWORKER_DISABLED_PLUGINS="
            f"{plugin.name}.",
        )


class DuplicateQueueError(PluginError):
    """Two plugins (or one plugin twice) claim the same queue name."""

    def __init__(self, queue: str, first: PluginInfo, second: PluginInfo) -> None:
        self.queue = queue
        self.first = first
        self.second = second
        owners = (
            f"plugin {first.describe()} declares it twice"
            if first == second
            else f"claimed by plugin {first.describe()} and by plugin {second.describe()}"
        )
        super().__init__(
            second,
            f"queue {queue!r} is {owners}. Queue names must be unique: rename one of the "
            "queues, or uninstall or disable one of the plugins "
            "(RABBITWORKER_DISABLED_PLUGINS=<entry-point name>).",
        )


class TopologyConflictError(RabbitworkerError):
    """The plugins' queues contradict each other (one exchange wanted with two types, one
    routing key bound by two queues of a direct exchange, a DLQ that is a work queue)."""


class BrokerTopologyMismatchError(TopologyConflictError):
    """An exchange or queue already exists on the broker with other settings."""


class BrokerConnectionError(RabbitworkerError):
    """The broker could not be reached."""


class PublishError(RabbitworkerError):
    """``publish_task`` could not hand the message to the broker. Catch one of the two
    subclasses to know whether a retry can publish the message twice."""


class PublishNotSentError(PublishError):
    """The message is not stored anywhere: publishing it again is safe."""


class PublishUncertainError(PublishError):
    """The message was sent but the broker's confirm never came (the connection was lost,
    or the deadline passed): it may be stored. Publishing it again may deliver it twice;
    consumers should deduplicate by message id if that matters."""


class ExchangeNotFoundError(PublishNotSentError):
    """The exchange does not exist on the broker (not declared yet, or deleted)."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        super().__init__(
            f"exchange {exchange!r} does not exist on the broker. Start rabbitworker-host "
            "once so it declares its exchanges, or check exchange_name."
        )


class PublishRefusedError(PublishNotSentError):
    """The broker refused the message (a ``basic.nack``: a queue at ``x-max-length`` with
    ``reject-publish``, or an internal error); it is not stored."""


class UnroutableMessageError(PublishNotSentError):
    """The broker accepted the message but no queue is bound to receive it."""

    def __init__(self, exchange: str, routing_key: str) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        super().__init__(
            f"no queue is bound to exchange {exchange!r} with routing key {routing_key!r}, "
            "so the message was returned instead of delivered. Check the routing key against "
            "`rabbitworker-host queues`, and start rabbitworker-host once so it declares the "
            "queues."
        )
