"""Test your rabbitworker plugin: a pytest plugin, registered through ``pytest11``.

Two fixtures, both factories taking plugins by entry-point name, module path or object:

``rabbitworker_worker``
    Runs the plugins **in-process, without a broker**, through the host's real consumer,
    policy and settler: the code that decides acked, retried or dead-lettered in
    production decides it here. Push a message, get its :class:`MessageResult`; pass
    ``fault=`` (a :class:`BrokerFault`) to see what a broker fault does to it::

        async def test_send_email(rabbitworker_worker):
            worker = await rabbitworker_worker("notifications")
            result = await worker.push({"task": "send_email", "payload": {...}},
                                       routing_key="notifications")
            assert result.acked

``rabbitworker_broker_host``
    Starts a real host for the plugins against a real RabbitMQ in a throwaway vhost
    (created and deleted through the management API), with helpers to publish, wait for
    outcomes and read the DLQ. Set ``RABBITWORKER_TEST_AMQP_URL`` and
    ``RABBITWORKER_TEST_MANAGEMENT_URL`` if the broker is not on localhost.

Needs ``pip install 'rabbitworker-host[testing]'`` (pytest-asyncio and httpx).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import quote, urlsplit

import orjson
import pytest

from rabbitworker.errors import PluginInfo, PublishRefusedError, UnroutableMessageError
from rabbitworker.events import Delivery, Outcome, Settlement
from rabbitworker.hookspecs import hookimpl
from rabbitworker.plugins import HostPlugins, QueueRegistration
from rabbitworker.settings import HostSettings

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures then explain what to install
    pytest_asyncio = None  # type: ignore[assignment]

DEFAULT_TEST_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_TEST_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672/"


@dataclass
class MessageResult:
    """What became of one message, after every retry.

    :param settlement: ``"acked"``, ``"dead-lettered"`` (or ``"retried"`` when retries are
        not followed).
    :param reason: the dead-letter (or retry) reason, e.g. ``"handler-error"``.
    :param detail: the readable cause, e.g. ``"ValueError: bad address"``.
    :param attempts: how many times a handler ran for it.
    :param result: the handler's return value, for acked messages.
    :param headers: the AMQP headers of the dead-lettered copy.
    """

    message_id: str
    settlement: str
    reason: str | None = None
    detail: str | None = None
    attempts: int = 0
    result: Any = None
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def acked(self) -> bool:
        return self.settlement == Settlement.ACKED

    @property
    def dead_lettered(self) -> bool:
        return self.settlement == Settlement.DEAD_LETTERED


class _OutcomeRecorder:
    """A plugin on the per-message hooks that remembers every settlement by message id."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[tuple[Delivery, Outcome]]] = {}
        self.changed = asyncio.Event()

    @hookimpl
    def rabbitworker_message_settled(self, delivery: Delivery, outcome: Outcome) -> None:
        self.outcomes.setdefault(delivery.message_id or "", []).append((delivery, outcome))
        self.changed.set()

    def final(self, message_id: str) -> list[tuple[Delivery, Outcome]] | None:
        """All settlements of a message once it is acked or dead-lettered."""
        history = self.outcomes.get(message_id, [])
        if history and history[-1][1].settlement is not Settlement.RETRIED:
            return history
        return None


def _result(message_id: str, history: list[tuple[Delivery, Outcome]]) -> MessageResult:
    outcome = history[-1][1]
    ran = sum(1 for _, o in history if o.reason is None or o.reason.value in _HANDLER_RAN)
    return MessageResult(
        message_id=message_id,
        settlement=outcome.settlement.value,
        reason=outcome.reason.value if outcome.reason else None,
        detail=outcome.detail,
        attempts=ran,
        result=outcome.result,
    )


#: Reasons given after a handler ran (the others stop a message before any handler).
_HANDLER_RAN = {"handler-error", "timeout", "permanent-error", "invalid-payload"}


# -- in-process, no broker -----------------------------------------------------------------


@dataclass
class _Published:
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]


class BrokerFault(StrEnum):
    """A broker fault :meth:`WorkerUnderTest.push` can inject, to see the production outcome.

    - ``confirm-refused``: the broker nacks every retry or dead-letter copy (an alarm, a
      full queue): the original stays unacknowledged, ``unsettled``.
    - ``copy-unroutable``: the copy reaches no queue (a DLQ deleted): likewise ``unsettled``.

      In production the settler keeps trying to store such a copy, with backoff, until the
      fault clears (then the message is retried or dead-lettered after all) or the host
      shuts down. In memory the fault never clears, so for these two the push gives up
      after the first failed attempt, as a shutdown would, and returns ``unsettled`` (its
      ``detail`` says the copy "could not be stored before shutdown"). The next push
      without a fault stores copies again.
    - ``channel-closed``: the consumer's channel closes while the handler runs: the handler
      is cancelled, the message ``unsettled`` (the broker delivers it again).
    - ``connection-lost``: the same for the whole connection.
    """

    CONFIRM_REFUSED = "confirm-refused"
    COPY_UNROUTABLE = "copy-unroutable"
    CHANNEL_CLOSED = "channel-closed"
    CONNECTION_LOST = "connection-lost"


#: Faults of storing a copy, which the settler would otherwise retry until shutdown.
_COPY_FAULTS = frozenset({BrokerFault.CONFIRM_REFUSED, BrokerFault.COPY_UNROUTABLE})


class _InMemoryCopies:
    """Stands where the host stores its retry and dead-letter copies; keeps them, or fails
    the way a broker would when a fault is injected."""

    def __init__(self) -> None:
        self.published: list[_Published] = []
        self.fault: BrokerFault | None = None

    async def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: Any,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        if self.fault is BrokerFault.CONFIRM_REFUSED:
            raise PublishRefusedError(f"injected: the broker refused the copy to {exchange!r}")
        if self.fault is BrokerFault.COPY_UNROUTABLE:
            raise UnroutableMessageError(exchange, routing_key)
        self.published.append(
            _Published(exchange, routing_key, body, dict(properties.headers or {}))
        )

    async def run_on_channel(self, work: Any, within: float) -> None:
        return None


class _InMemoryChannel:
    """Acks the way a broker channel counts them: an unknown or twice-settled tag fails."""

    def __init__(self) -> None:
        self.is_closed = False
        self.unacked: set[int] = set()
        self.acked: set[int] = set()
        self.rejected: set[int] = set()
        self._last_tag = 0

    def next_tag(self) -> int:
        self._last_tag += 1
        self.unacked.add(self._last_tag)
        return self._last_tag

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        tags = {t for t in self.unacked if t <= delivery_tag} if multiple else {delivery_tag}
        if delivery_tag not in self.unacked or not tags <= self.unacked:
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        self.unacked -= tags
        self.acked |= tags

    async def basic_reject(
        self, delivery_tag: int, requeue: bool = True, wait: bool = True
    ) -> None:
        if delivery_tag not in self.unacked:
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        self.unacked.discard(delivery_tag)
        self.rejected.add(delivery_tag)


@dataclass
class _Frame:
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str


@dataclass
class _InMemoryMessage:
    """The parts of an aiormq delivery the consumer reads."""

    delivery: _Frame
    header: Any
    body: bytes


class WorkerUnderTest:
    """Plugins running through the host's real consumer, policy and settler, fed by
    :meth:`push`, with an in-memory channel and copy store in place of the broker.

    What it does not simulate: the broker's own dead-lettering, TTLs and delay queues (a
    retry is delivered again at once), redelivery after a crash, prefetch across pushes
    (each push is handled to the end before it returns), and real timing of confirms.
    """

    def __init__(self, plugins: HostPlugins, settings: HostSettings) -> None:
        from rabbitworker.consumer import QueueConsumer
        from rabbitworker.settler import Settler
        from rabbitworker.topology import Topology

        self.plugins = plugins
        self.settings = settings
        self._recorder = _OutcomeRecorder()
        plugins.register(self._recorder, _recorder_info())
        self.registrations: list[QueueRegistration] = plugins.collect_queues()
        self._copies = _InMemoryCopies()
        self._channels: dict[str, _InMemoryChannel] = {}
        self._consumers: dict[str, Any] = {}
        for registration in self.registrations:
            config = registration.config
            self._channels[config.name] = _InMemoryChannel()
            settler = Settler(
                config,
                plugins.message_hooks(),
                cast(Any, self._copies),
                Topology(),
                copy_timeout=settings.publish_timeout,
            )
            consumer = QueueConsumer(
                config,
                plugins,
                settler,
                Topology(),
                max_message_bytes=settings.max_message_bytes,
            )
            self._consumers[config.name] = consumer
        self._attached: set[str] = set()

    @property
    def queues(self) -> list[str]:
        """The queue names the chosen plugins contribute."""
        return list(self._consumers)

    def dead_letters(self, dlx: str = "tasks.dlx") -> list[tuple[bytes, dict[str, Any]]]:
        """Body and headers of every message dead-lettered through ``dlx`` so far."""
        return [(p.body, p.headers) for p in self._copies.published if p.exchange == dlx]

    async def push(
        self,
        body: dict[str, Any] | bytes,
        *,
        queue: str | None = None,
        routing_key: str | None = None,
        exchange: str = "tasks",
        headers: dict[str, Any] | None = None,
        content_type: str | None = "application/json",
        message_id: str | None = None,
        redelivered: bool = False,
        follow_retries: bool = True,
        fault: BrokerFault | str | None = None,
    ) -> MessageResult:
        """Deliver one message to a queue (by name, or by routing key) and settle it.

        Retries are followed at once (their delay is the broker's business), so the result
        is the final one, unless ``follow_retries=False``. ``fault`` injects a
        :class:`BrokerFault` for this message.
        """
        from pamqp.commands import Basic

        name = self._route(queue, routing_key, exchange)
        consumer, channel = self._consumers[name], self._channels[name]
        if name not in self._attached:
            consumer.settler.attach(cast(Any, channel))
            # What QueueConsumer.attach() records of its channel: lost() ignores a consumer
            # without one, and an injected channel fault would then cancel nothing.
            consumer._channel = cast(Any, channel)
            self._attached.add(name)
        injected = BrokerFault(fault) if fault is not None else None
        self._copies.fault = injected
        if injected in _COPY_FAULTS:
            # The in-memory store fails for ever: without this the settler would retry the
            # copy until the test times out.
            consumer.settler.give_up_copies()
        message_id = message_id or uuid.uuid4().hex
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        current_headers = dict(headers or {})
        try:
            while True:
                already = len(self._copies.published)
                tag = channel.next_tag()
                message = _InMemoryMessage(
                    _Frame(
                        tag, redelivered, exchange, routing_key if routing_key is not None else name
                    ),
                    SimpleNamespace(
                        properties=Basic.Properties(
                            headers=current_headers,
                            message_id=message_id,
                            content_type=content_type,
                            delivery_mode=2,
                            timestamp=datetime.now(UTC),
                        )
                    ),
                    data,
                )
                consumer._on_message(message)
                task = next(reversed(consumer._runs))
                if injected in (BrokerFault.CHANNEL_CLOSED, BrokerFault.CONNECTION_LOST):
                    await asyncio.sleep(0)
                    consumer.lost(f"injected: {injected.value}")
                    self._attached.discard(name)
                    channel = self._channels[name] = _InMemoryChannel()
                await asyncio.gather(task, return_exceptions=True)
                await consumer.settler.flush()
                history = self._recorder.outcomes.get(message_id, [])
                last = history[-1][1] if history else None
                copies = self._copies.published[already:]
                if (
                    follow_retries
                    and last is not None
                    and last.settlement is Settlement.RETRIED
                    and copies
                ):
                    current_headers = dict(copies[-1].headers)
                    redelivered = False
                    continue
                if not history:
                    raise AssertionError(f"message {message_id} was settled without an outcome")
                result = _result(message_id, history)
                if result.dead_lettered:
                    for body_, dead_headers in reversed(self.dead_letters(self._dlx_of(name))):
                        if dead_headers.get("x-rabbitworker-queue") == name and body_ == data:
                            result.headers = dead_headers
                            break
                return result
        finally:
            self._copies.fault = None
            if injected in _COPY_FAULTS:
                consumer.settler._giving_up.clear()

    def _dlx_of(self, queue: str) -> str:
        return str(self._consumers[queue].config.dlx_exchange_name)

    def _route(self, queue: str | None, routing_key: str | None, exchange: str) -> str:
        if queue is not None:
            if queue not in self._consumers:
                raise LookupError(f"no plugin under test has queue {queue!r}: {self.queues}")
            return queue
        if routing_key is None:
            raise TypeError("give queue= or routing_key=")
        matches = [
            r.config.name
            for r in self.registrations
            if r.config.exchange_name == exchange and r.config.routing_key == routing_key
        ]
        if len(matches) != 1:
            raise LookupError(
                f"routing key {routing_key!r} on exchange {exchange!r} reaches "
                f"{matches or 'no queue'}; pass queue= to choose"
            )
        return matches[0]


def _recorder_info() -> PluginInfo:
    return PluginInfo(name=f"rabbitworker.testing-{uuid.uuid4().hex[:6]}", module=__name__)


# -- a real host on a real broker ----------------------------------------------------------


class BrokerHost:
    """A real :class:`~rabbitworker.host.WorkerHost` in this process, on a throwaway vhost."""

    def __init__(self, amqp_url: str, vhost: str, plugins: HostPlugins) -> None:
        from rabbitworker.host import WorkerHost
        from rabbitworker.publish import TaskPublisher

        self.amqp_url = amqp_url
        self.vhost = vhost
        self.settings = HostSettings(amqp_url=amqp_url, shutdown_timeout=10)
        self._recorder = _OutcomeRecorder()
        plugins.register(self._recorder, _recorder_info())
        self.host = WorkerHost(self.settings, plugins, plugins.collect_queues())
        self._publisher = TaskPublisher(self.settings, role="rabbitworker tests")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.host.run(handle_signals=False))
        started = asyncio.ensure_future(self.host.started.wait())
        done, _ = await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            started.cancel()
            self._task.result()

    async def stop(self) -> None:
        await self._publisher.close()
        if self._task is not None and not self._task.done():
            self.host.request_stop("test teardown")
            await self._task

    async def publish(
        self,
        body: dict[str, Any],
        routing_key: str,
        *,
        exchange: str = "tasks",
        message_id: str | None = None,
    ) -> str:
        """Publish with confirms (like ``publish_task``) and return the message id."""
        return await self._publisher.publish(
            body, routing_key, exchange_name=exchange, message_id=message_id
        )

    async def wait_for(self, message_id: str, timeout: float = 15.0) -> MessageResult:  # noqa: ASYNC109
        """Wait until the message is acked or dead-lettered (after any retries)."""
        async with asyncio.timeout(timeout):
            while (history := self._recorder.final(message_id)) is None:
                self._recorder.changed.clear()
                await self._recorder.changed.wait()
        return _result(message_id, history)

    async def dead_letters(self, dlq: str = "tasks.dlq") -> list[tuple[bytes, dict[str, Any]]]:
        """Take every message now in ``dlq`` (body and headers); they leave the DLQ."""
        import aio_pika

        connection = await aio_pika.connect(self.amqp_url)
        try:
            channel = await connection.channel()
            queue = await channel.get_queue(dlq)
            taken = []
            while (message := await queue.get(fail=False, no_ack=True)) is not None:
                taken.append((message.body, dict(message.headers or {})))
            return taken
        finally:
            await connection.close()


def _vhost_url(base: str, vhost: str) -> str:
    parts = urlsplit(base)
    return parts._replace(path="/" + quote(vhost, safe="")).geturl()


async def _management(method: str, path: str, **kwargs: Any) -> None:
    import httpx

    base = os.environ.get("RABBITWORKER_TEST_MANAGEMENT_URL", DEFAULT_TEST_MANAGEMENT_URL)
    parts = urlsplit(base)
    auth = (parts.username or "guest", parts.password or "guest")
    host = parts.hostname or "127.0.0.1"
    root = parts._replace(netloc=host + (f":{parts.port}" if parts.port else ""))
    async with httpx.AsyncClient(base_url=root.geturl().rstrip("/") + "/api/", auth=auth) as http:
        response = await http.request(method, path, timeout=30, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(
                f"RabbitMQ management API {method} {path}: {response.status_code} "
                f"{response.text}. Is the management plugin enabled "
                "(rabbitmq-plugins enable rabbitmq_management)?"
            )


# -- the fixtures --------------------------------------------------------------------------


#: The fixtures below: async, so they need pytest-asyncio running.
FIXTURES = ("rabbitworker_worker", "rabbitworker_broker_host")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without pytest-asyncio the async fixtures cannot run (pytest fails deep in its fixture
    machinery): stop before any test and say what to install. This plugin is loaded in every
    pytest run where rabbitworker-host is installed, so sessions that do not use the
    fixtures are left alone."""
    if config.pluginmanager.hasplugin("asyncio"):
        return
    using = [
        item.nodeid
        for item in items
        if any(name in FIXTURES for name in getattr(item, "fixturenames", ()))
    ]
    if using:
        raise pytest.UsageError(
            f"{len(using)} test(s) use rabbitworker's fixtures ({', '.join(FIXTURES)}), e.g. "
            f"{using[0]}, which need pytest-asyncio, and it is not installed (or is disabled "
            "with -p no:asyncio). Install it with pip install 'rabbitworker-host[testing]', or "
            "with your plugin's test extra: pip install -e '.[test]'"
        )


def _fixture(function: Callable[..., Any]) -> Any:
    if pytest_asyncio is None:
        return pytest.fixture(function)
    return pytest_asyncio.fixture(function)


@_fixture
async def rabbitworker_worker() -> AsyncIterator[Callable[..., Awaitable[WorkerUnderTest]]]:
    """Factory: ``await rabbitworker_worker("my_plugin", ...)`` → :class:`WorkerUnderTest`.

    Start-up hooks run when it is made, shut-down hooks at the end of the test.
    """
    made: list[WorkerUnderTest] = []

    async def make(*plugins: str | object, settings: HostSettings | None = None) -> WorkerUnderTest:
        settings = settings or HostSettings()
        worker = WorkerUnderTest(HostPlugins.select(*plugins), settings)
        await worker.plugins.startup(settings)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        await worker.plugins.shutdown(worker.settings)


@_fixture
async def rabbitworker_broker_host() -> AsyncIterator[Callable[..., Awaitable[BrokerHost]]]:
    """Factory: ``await rabbitworker_broker_host("my_plugin")`` → a running :class:`BrokerHost`
    on its own vhost, stopped and deleted at the end of the test."""
    made: list[BrokerHost] = []

    async def make(*plugins: str | object) -> BrokerHost:
        vhost = f"rabbitworker-test-{uuid.uuid4().hex[:12]}"
        base = os.environ.get("RABBITWORKER_TEST_AMQP_URL", DEFAULT_TEST_AMQP_URL)
        user = urlsplit(base).username or "guest"
        path = quote(vhost, safe="")
        await _management("PUT", f"vhosts/{path}")
        await _management(
            "PUT",
            f"permissions/{path}/{quote(user, safe='')}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        host = BrokerHost(_vhost_url(base, vhost), vhost, HostPlugins.select(*plugins))
        made.append(host)
        await host.start()
        return host

    yield make
    for host in made:
        try:
            await host.stop()
        finally:
            await _management("DELETE", f"vhosts/{quote(host.vhost, safe='')}")
