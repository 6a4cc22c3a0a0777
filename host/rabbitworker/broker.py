"""Connections to the broker: one node of a list, failing over to the next at once.

``RABBITWORKER_AMQP_URL`` holds one URL or several separated by ``;`` (the nodes of one
cluster). Each process shuffles them, so replicas spread over the nodes, then connects to
the first that answers. When a connection is lost, the next node is tried straight away;
only while every node refuses does the wait grow (``reconnect_interval`` doubling up to
``reconnect_interval_max``), and it starts short again as soon as any node answers.

The operator's commands (``check --broker``, ``dlq``, the console) take the same list
through :func:`connect_operator`. Whoever connects, a node that cannot be reached is
described once, by :func:`describe_connect_failure`: what failed and what to do about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aio_pika
import aio_pika.abc
import aiormq
from loguru import logger
from yarl import URL

from rabbitworker.errors import BrokerConnectionError
from rabbitworker.settings import mask_url

#: What a failed connection attempt can raise (refused, timed out, TLS, auth, protocol).
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    RuntimeError,
)


_T = TypeVar("_T")

#: How long an operator's command waits for one node (RABBITWORKER_CONNECT_TIMEOUT's default).
OPERATOR_CONNECT_TIMEOUT = 10.0


def _refused_vhost(exc: BaseException) -> bool:
    # aiormq keeps only the frame's repr: the broker's reply ("vhost not found" or "access
    # to vhost refused") is lost, and both mean the same to the operator.
    return isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc)


def _hint(url: URL, exc: BaseException, timeout: float | None) -> str | None:
    """What to do about ``exc``, read off its shape; ``None`` when it says nothing more."""
    text = str(exc)
    user = url.user or "guest"
    vhost = url.path[1:] or "/"
    port = url.port
    tls = url.scheme == "amqps"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.AuthenticationError):
        return (
            f"the broker refused user {user!r}: check the user name and password in the URL "
            f"(rabbitmqctl authenticate_user {user} <password> tries them)"
        )
    if _refused_vhost(exc):
        return (
            f"the broker refused to open virtual host {vhost!r}: it does not exist, or user "
            f"{user!r} may not use it (rabbitmqctl add_vhost {vhost}, then rabbitmqctl "
            f"set_permissions -p {vhost} {user} '.*' '.*' '.*'), or the URL's path is wrong"
        )
    if "WRONG_VERSION_NUMBER" in text:
        return f"port {port} does not speak TLS: use amqp:// for it, or the broker's TLS port"
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "the broker's certificate is not trusted (or names another host): name the CA "
            "that signed it with ?cafile=/path/to/ca.pem in the URL"
        )
    closed = isinstance(exc, ConnectionResetError | asyncio.IncompleteReadError) or any(
        word in text.lower() for word in ("reset by peer", "certificate required", "eof")
    )
    if tls and closed and "certfile" not in url.query:
        return (
            "the broker closed the TLS connection: if it requires client certificates, add "
            "certfile=/path/to/client.pem&keyfile=/path/to/client.key to the URL's query"
        )
    if tls and closed:
        return "the broker closed the TLS connection: does it trust the client certificate's CA?"
    if closed:
        return f"the connection was closed before the broker spoke: if port {port} is TLS, use amqps://"
    refused = isinstance(exc, ConnectionRefusedError) or "Connect call failed" in text
    if refused:
        return f"nothing accepts connections there: is RabbitMQ running, with AMQP on port {port}?"
    if isinstance(exc, TimeoutError) and timeout is not None:
        return (
            f"no answer within {timeout:g} s (RABBITWORKER_CONNECT_TIMEOUT): is the node "
            "overloaded, or is a firewall dropping the connection?"
        )
    return None


def describe_connect_failure(url: str, exc: BaseException, *, timeout: float | None = None) -> str:
    """``<url, password masked>: <error>: <what to do>`` for one node that did not answer."""
    text = str(exc)
    if _refused_vhost(exc):
        text = "the broker answered Connection.Open with Connection.Close"
    error = f"{type(exc).__name__}: {text.rstrip('.')}" if text else type(exc).__name__
    try:
        hint = _hint(URL(url), exc, timeout)
    except ValueError:
        hint = None
    return f"{mask_url(url)}: {error}" + (f": {hint}" if hint else "")


def connect_failure_message(failures: Sequence[str]) -> str:
    """The error for a connection that no node would take, each node with its own reason."""
    nodes = (
        f"{failures[0]}"
        if len(failures) == 1
        else f"any of the {len(failures)} nodes: {' | '.join(failures)}"
    )
    end = " " if nodes.endswith(("?", ".")) else ". "
    return (
        f"cannot connect to {nodes}{end}Set RABBITWORKER_AMQP_URL to the broker (or to "
        "';'-separated cluster nodes)."
    )


async def first_answering(
    urls: Sequence[str], dial: Callable[[str], Awaitable[_T]], *, per_node: float
) -> tuple[int, _T]:
    """The index of the first of ``urls`` that ``dial`` connects to, each given
    ``per_node`` seconds, and its connection.

    :raises BrokerConnectionError: none did; names each node and what to do about it.
    """
    failures: list[str] = []
    for index, url in enumerate(urls):
        try:
            async with asyncio.timeout(per_node):
                return index, await dial(url)
        except CONNECT_ERRORS as exc:
            failures.append(describe_connect_failure(url, exc, timeout=per_node))
    raise BrokerConnectionError(connect_failure_message(failures))


async def connect_operator(
    amqp_url: str, *, per_node: float = OPERATOR_CONNECT_TIMEOUT
) -> aio_pika.abc.AbstractConnection:
    """An aio-pika connection for an operator's command to the first node of ``amqp_url``
    (one URL or ``;``-separated nodes, tried in the order given) that answers.

    :raises BrokerConnectionError: no node answered.
    """
    _, connection = await first_answering(split_urls(amqp_url), aio_pika.connect, per_node=per_node)
    return connection


def split_urls(value: str) -> list[str]:
    """``"amqp://a/;amqp://b/"`` → ``["amqp://a/", "amqp://b/"]`` (blanks dropped)."""
    return [part.strip() for part in value.split(";") if part.strip()]


def with_heartbeat(url: str, heartbeat: int) -> str:
    """The URL with ``?heartbeat=`` set, unless the URL sets its own."""
    parsed = URL(url)
    if "heartbeat" in parsed.query:
        return url
    return str(parsed.update_query(heartbeat=str(heartbeat)))


def connection_name(role: str) -> str:
    """How the broker's management UI names our connections: ``rabbitworker-host h:pid``."""
    return f"{role} {socket.gethostname()}:{os.getpid()}"


class Connector:
    """Opens connections to the first node of ``urls`` that answers, in a shuffled order
    kept for the life of the process (so a reconnect starts with the next node)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        role: str,
        connect_timeout: float,
        heartbeat: int,
        shuffle: bool = True,
    ) -> None:
        if not urls:
            raise ValueError("no broker URL given")
        nodes = [with_heartbeat(url, heartbeat) for url in urls]
        if shuffle:
            random.shuffle(nodes)
        self._nodes = nodes
        self._next = 0
        self.role = role
        self.connect_timeout = connect_timeout
        #: The node of the current connection, password masked (for logs).
        self.current = mask_url(nodes[0])

    @property
    def nodes(self) -> list[str]:
        """The nodes, passwords masked, in the order they are tried."""
        return [mask_url(node) for node in self._nodes]

    async def connect_once(self) -> aiormq.abc.AbstractConnection:
        """Try each node once, starting after the last one used.

        :raises BrokerConnectionError: no node answered; names each node and its error.
        """
        order = self._nodes[self._next :] + self._nodes[: self._next]
        index, connection = await first_answering(order, self._dial, per_node=self.connect_timeout)
        # The next attempt starts with this node: it answered last.
        self._next = (self._next + index) % len(self._nodes)
        self.current = mask_url(self._nodes[self._next])
        return connection

    async def _dial(self, url: str) -> aiormq.abc.AbstractConnection:
        connection = aiormq.Connection(
            url, client_properties={"connection_name": connection_name(self.role)}
        )
        try:
            await connection.connect()
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    def failed_over(self) -> None:
        """The current node was lost: the next attempt starts with another node."""
        self._next = (self._next + 1) % len(self._nodes)


class Supervisor:
    """Keeps one connection up for as long as it runs, calling ``on_up`` with every new
    connection and ``on_down`` when one is lost, and failing over between nodes."""

    def __init__(
        self,
        connector: Connector,
        *,
        on_up: Callable[[aiormq.abc.AbstractConnection], Awaitable[None]],
        on_down: Callable[[BaseException | None], None],
        reconnect_interval: float,
        reconnect_interval_max: float,
    ) -> None:
        self.connector = connector
        self._on_up = on_up
        self._on_down = on_down
        self._interval = reconnect_interval
        self._interval_max = reconnect_interval_max
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.connected = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> aiormq.abc.AbstractConnection:
        """Connect (every node once; raise if none answers) and watch the connection."""
        connection = await self.connector.connect_once()
        await self._up(connection)
        self._watch = asyncio.create_task(self._watch_forever(), name="rabbitworker-supervisor")
        return connection

    async def _up(self, connection: aiormq.abc.AbstractConnection) -> None:
        self.connection = connection
        self.connected.set()
        await self._on_up(connection)

    async def _watch_forever(self) -> None:
        while not self._stopping:
            connection = self.connection
            assert connection is not None
            error: BaseException | None = None
            try:
                await connection.closing
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                error = exc
            if self._stopping:
                return
            self.connected.clear()
            self.connection = None
            self.connector.failed_over()
            self._on_down(error)
            await self._reconnect()

    async def _reconnect(self) -> None:
        wait = self._interval
        setup_failures = 0
        while not self._stopping:
            try:
                connection = await self.connector.connect_once()
            except BrokerConnectionError as exc:
                logger.warning("{}; trying again in {:g} s", exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, self._interval_max)
                continue
            try:
                await self._up(connection)
            except CONNECT_ERRORS as exc:
                # Lost again while setting up: start over at once with the next node.
                logger.warning(
                    "connection to {} lost while setting up: {}", self.connector.current, exc
                )
                with contextlib.suppress(Exception):
                    await connection.close()
                self.connected.clear()
                self.connection = None
                self.connector.failed_over()
                setup_failures += 1
                # A node that takes the connection but not the set-up (a queue whose home
                # node is down: 404; arguments that no longer match: 406) is no better
                # than one that refuses: once every node has failed so in a row, wait as
                # when every node refuses, instead of reconnecting in a tight loop.
                if setup_failures % len(self.connector.nodes) == 0:
                    logger.warning(
                        "could not set up on any of the {} node(s); trying again in {:g} s",
                        len(self.connector.nodes),
                        wait,
                    )
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, self._interval_max)
                continue
            return

    async def close(self, grace: float = 5.0) -> None:
        """Stop watching and close the connection (bounded)."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch
        connection, self.connection = self.connection, None
        self.connected.clear()
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(grace):
                    await connection.close()


def closed_reason(exc: Any) -> str:
    """A readable reason for a lost connection or channel."""
    if exc is None:
        return "closed"
    return f"{type(exc).__name__}: {exc}"
