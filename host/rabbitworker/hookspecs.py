"""The hooks a rabbitworker plugin may implement.

A plugin is a module (or object) registered under the ``rabbitworker.queues`` entry-point
group. It only has to implement :func:`rabbitworker_queues`; every other hook is optional.
Hooks are called synchronously; the lifecycle hooks may return an awaitable (or be an
``async def``), which the host awaits.

Hooks are grouped by phase: configuration, lifecycle, per message, then per publish.

What the host checks when it loads a plugin (each refusal is a
:class:`~rabbitworker.PluginHookError` naming the plugin and what to change):

- every function named ``rabbitworker_*`` is decorated with ``@rabbitworker.hookimpl`` and
  is one of these hooks (a misspelled or undecorated one would silently never run), and the
  plugin implements at least one hook;
- no implementation is a wrapper (``hookwrapper=True`` or ``wrapper=True``): the host calls
  each implementation itself, so that one that raises is attributed to its plugin and does
  not stop the others. Order implementations with ``tryfirst=True`` / ``trylast=True``;
- the hooks called on the event loop without being awaited (the connection, consumer,
  per-message and publish hooks) are plain ``def``: an ``async def`` there would never run.

Order: :func:`rabbitworker_queues` and :func:`rabbitworker_startup` run in load order
(built-ins, entry points by name, ``RABBITWORKER_PLUGINS``), :func:`rabbitworker_shutdown`
in reverse. The other hooks run in pluggy's order: ``tryfirst`` implementations first, then
the most recently loaded plugin first, ``trylast`` last. The context managers that the
context hooks return are entered in that order (the first is the outermost) and exited in
reverse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from rabbitworker.config import QueueConfig
    from rabbitworker.events import Delivery, Outcome
    from rabbitworker.settings import HostSettings

PROJECT_NAME = "rabbitworker"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- configuration -------------------------------------------------------------------------


@hookspec
def rabbitworker_queues() -> Iterable[QueueConfig]:  # type: ignore[empty-body]
    """Return the queues this plugin contributes.

    :returns: an iterable (a list, a tuple, a generator) of :class:`rabbitworker.QueueConfig`.
        Each queue name must be unique across all installed plugins; the host refuses to
        start and names both plugins otherwise.

    Called once at start-up, and by ``rabbitworker-host queues`` without any broker.
    """


# -- lifecycle -----------------------------------------------------------------------------


@hookspec
def rabbitworker_startup(settings: HostSettings) -> Awaitable[None] | None:
    """Open the plugin's own resources (HTTP client pools, database connections).

    :param settings: the host's settings.
    :returns: ``None`` or an awaitable, awaited before the first message is consumed.

    A hook that raises stops the host before it consumes anything, with the plugin named.
    """


@hookspec
def rabbitworker_shutdown(settings: HostSettings) -> Awaitable[None] | None:
    """Close what :func:`rabbitworker_startup` opened.

    :param settings: the host's settings.
    :returns: ``None`` or an awaitable.

    Called after consuming stopped and in-flight messages finished (or timed out), in the
    reverse order of start-up. A hook that raises is logged; the others still run.
    """


@hookspec
def rabbitworker_connection_changed(connected: bool, detail: str) -> None:
    """The broker connection came up (first time or after a reconnection) or went down.

    :param connected: whether it is up now.
    :param detail: what happened, readable (the error when it went down).

    Called on the event loop and not awaited: a plain ``def`` (an ``async def`` is refused
    when the plugin is loaded). A hook that raises is logged; the others still run.
    """


@hookspec
def rabbitworker_consumer_changed(queue: str, consuming: bool, detail: str) -> None:
    """The host started or stopped consuming ``queue`` (also when the broker cancelled the
    consumer, e.g. because the queue was deleted, and when it was restored).

    :param queue: the queue name.
    :param consuming: whether messages of that queue are being consumed now.
    :param detail: what happened, readable.

    Called on the event loop and not awaited: a plain ``def`` (an ``async def`` is refused
    when the plugin is loaded). A hook that raises is logged; the others still run.
    """


# -- per message ---------------------------------------------------------------------------


@hookspec
def rabbitworker_message_received(delivery: Delivery) -> None:
    """A message arrived on a queue and is about to be dispatched to its handler.

    :param delivery: what is known of the message before its handler runs.

    Called on the event loop for every message, not awaited: a plain ``def`` (an
    ``async def`` is refused when the plugin is loaded); keep it cheap and never block.
    A hook that raises is logged; the others still run. Wrappers are refused (see above).
    """


@hookspec
def rabbitworker_message_settled(delivery: Delivery, outcome: Outcome) -> None:
    """A message was settled: acknowledged, retried, dead-lettered with a reason, or left
    unacknowledged for the broker to deliver again (``Settlement.UNSETTLED``).

    :param delivery: the message, as passed to :func:`rabbitworker_message_received`.
    :param outcome: what happened to it and how long its handler took.

    Exactly once per delivery, always after :func:`rabbitworker_message_received` for it,
    also when its channel or connection closed under it. An ack, a retry and a dead letter
    are reported once their frame was written to the broker (a copy: once the broker
    confirmed it stored it in a queue).

    Called on the event loop for every message after the broker was told, not awaited: a
    plain ``def`` (an ``async def`` is refused when the plugin is loaded); keep it cheap.
    A hook that raises is logged; the others still run. Wrappers are refused (see above).
    """


@hookspec
def rabbitworker_handler_context(delivery: Delivery) -> AbstractContextManager[object] | None:
    """Wrap the call of a message's handler: return a context manager, or ``None``.

    :param delivery: the message about to be handled (its ``task`` is known).
    :returns: ``None``, or a context manager the host enters just before it calls the
        handler and exits when the handler ended.

    Called on the event loop for every message that reaches a handler, not awaited: a plain
    ``def`` (an ``async def`` is refused when the plugin is loaded); keep it cheap.

    The context manager is entered and exited in the handler's own task, so whatever it
    makes current (a ``contextvars.ContextVar``, an OpenTelemetry span) is current inside an
    ``async`` handler and, through the copied context, inside a plain ``def`` handler's
    thread. The message's retry or dead-letter copy is published in that same context (see
    :attr:`Delivery.context <rabbitworker.events.Delivery.context>`). The handler's
    exception, if any (also the cancellation of a handler that timed out), reaches its
    ``__exit__``; what ``__exit__`` returns is ignored: it cannot swallow the exception.

    A hook, ``__enter__`` or ``__exit__`` that raises is logged with its plugin; the handler
    and the other plugins' context managers still run. Wrappers are refused (see above).
    """


# -- per publish ---------------------------------------------------------------------------


@hookspec
def rabbitworker_publish_context(
    exchange: str, routing_key: str, message_id: str, headers: dict[str, object]
) -> AbstractContextManager[object] | None:
    """Wrap one publish: return a context manager, or ``None``.

    :param exchange: the exchange it goes to (``""``: the default exchange).
    :param routing_key: its routing key (on the default exchange: the queue's name).
    :param message_id: its AMQP ``message_id``.
    :param headers: its AMQP headers. Entries added here (when the hook is called, or when
        its context manager is entered) are sent with the message.
    :returns: ``None``, or a context manager the host enters just before the message is sent
        and exits once the broker confirmed it, or with the exception that ended the publish.

    Called for every message the host publishes: ``publish_task`` and
    ``publish_task_sync``, ``rabbitworker-host publish``, retry and dead-letter copies
    (published in the context their handler ran in), ``dlq replay``, and the host's notes
    in its redelivery ledger. Outside a running
    host (a script calling ``publish_task``, a CLI command), the host's built-in plugins'
    implementations are called.

    Called on the event loop, not awaited: a plain ``def`` (an ``async def`` is refused when
    the plugin is loaded); keep it cheap. What ``__exit__`` returns is ignored: it cannot
    swallow the publish's exception. A hook, ``__enter__`` or ``__exit__`` that raises is
    logged with its plugin; the publish and the other plugins' context managers still go
    on. Wrappers are refused (see above).
    """
