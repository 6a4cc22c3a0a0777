"""The broker side of the bench: the management API, a throwaway vhost, pre-loading queues."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from rabbitworker_bench.common import declare_topology

BROKER_HOST = os.environ.get("RWBENCH_BROKER_HOST", "127.0.0.1")
API = f"http://{BROKER_HOST}:15672/api"
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


class BenchError(RuntimeError):
    """A consumer died or a scenario could not complete."""


def api(method: str, path: str, body: Any = None) -> Any:
    """Call the RabbitMQ management API."""
    request = urllib.request.Request(
        f"{API}/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": AUTH, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        data = response.read()
    return json.loads(data) if data else None


def wait_for_broker(limit: float = 120.0) -> dict[str, Any]:
    """Wait until the management API answers (the shared broker may be restarting)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            overview: dict[str, Any] = api("GET", "overview")
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"RabbitMQ management API at {API} does not answer: {exc}"
                ) from exc
            time.sleep(1)
        else:
            if overview.get("rabbitmq_version"):
                return overview
            time.sleep(1)


def message_body(index: int) -> bytes:
    """A ~200-byte task message, ``{"task": ..., "payload": {...}}``."""
    payload = {
        "id": index,
        "user": f"user-{index % 10_000:05d}",
        "email": f"user-{index % 10_000:05d}@example.com",
        "action": "thumbnail",
        "url": f"https://files.example.com/u/{index % 10_000:05d}/{index:08d}.jpg",
        "size": [640, 480],
    }
    body = orjson.dumps({"task": "work", "payload": payload})
    return body[:-2] + b',"pad":"' + b"x" * max(0, 190 - len(body)) + b'"}}'


class Broker:
    """A throwaway vhost and one AMQP connection to pre-load, purge and inspect queues."""

    def __init__(self) -> None:
        self.vhost = f"rwbench-{uuid.uuid4().hex[:10]}"
        self.url = f"amqp://guest:guest@{BROKER_HOST}:5672/{quote(self.vhost, safe='')}"
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._probe: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    def create(self) -> None:
        path = quote(self.vhost, safe="")
        api("PUT", f"vhosts/{path}", {})
        api("PUT", f"permissions/{path}/guest", {"configure": ".*", "write": ".*", "read": ".*"})

    def delete(self) -> None:
        """Delete the vhost, retrying for a while (the shared broker may be restarting)."""
        for attempt in range(10):
            try:
                api("DELETE", f"vhosts/{quote(self.vhost, safe='')}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return
                raise
            except OSError as exc:
                if attempt == 9:
                    print(f"could not delete vhost {self.vhost}: {exc}", file=sys.stderr)
                time.sleep(3)

    async def reopen(self) -> None:
        """A new connection, after the broker went away."""
        with contextlib.suppress(Exception):
            await self.close()
        self._probe = None
        await self.open()

    async def open(self) -> None:
        self._connection = await aio_pika.connect(self.url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        await declare_topology(self._channel, [])
        self._exchange = await self._channel.get_exchange("tasks")

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def channel(self) -> AbstractChannel:
        """The bench's channel, opened again if the broker restarted since."""
        if (
            self._connection is None
            or self._connection.is_closed
            or self._channel is None
            or self._channel.is_closed
        ):
            await asyncio.to_thread(wait_for_broker)
            await self.reopen()
        assert self._channel is not None
        return self._channel

    async def declare(self, names: Sequence[str]) -> None:
        await declare_topology(await self.channel(), list(names))

    async def publish(self, queue: str, count: int, first: int = 0) -> float:
        """Publish ``count`` persistent messages to ``queue``, confirmed; return msg/s."""
        await self.channel()
        assert self._exchange is not None
        exchange = self._exchange
        started = time.perf_counter()
        window = 2_000
        for start in range(first, first + count, window):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            message_body(index),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=f"bench-{index}",
                        ),
                        queue,
                    )
                    for index in range(start, min(first + count, start + window))
                )
            )
        return count / (time.perf_counter() - started)

    async def depth(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of ``queue``, from a passive declare."""
        declared = await (await self.channel()).declare_queue(queue, passive=True)
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0

    async def all_consumed(self, queues: Sequence[str]) -> bool:
        """Whether every queue exists and has a consumer (on a probe channel: a passive
        declare of a missing queue closes its channel)."""
        await self.channel()
        assert self._connection is not None
        if self._probe is None or self._probe.is_closed:
            self._probe = await self._connection.channel()
        for queue in queues:
            try:
                declared = await self._probe.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            if not declared.declaration_result.consumer_count:
                return False
        return True

    async def purge(self, names: Sequence[str]) -> None:
        channel = await self.channel()
        for name in names:
            queue = await channel.get_queue(name, ensure=False)
            await queue.purge()
