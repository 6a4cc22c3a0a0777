"""publish_task_sync: publish_task for synchronous callers, from many threads, one connection
per process, and from a WSGI app served by a real server."""

from __future__ import annotations

import asyncio
import json
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from brokertools import AmqpClient, Broker, async_wait_for
from opstools import declare_like_the_host

from rabbitworker import UnroutableMessageError, close_sync_publisher, publish_task_sync

pytestmark = pytest.mark.broker

MESSAGE = {"task": "generate_report", "payload": {"report_id": "r1"}}


@pytest.fixture(autouse=True)
def _reports_queue(amqp_url: str) -> Iterator[None]:
    asyncio.run(
        declare_like_the_host(amqp_url, [{"name": "reports.queue", "routing_key": "reports"}])
    )
    yield
    close_sync_publisher()


async def test_many_threads_publish_at_once_each_message_confirmed_once(
    amqp: AmqpClient, broker: Broker
) -> None:
    def publish(index: int) -> str:
        return publish_task_sync(
            {"task": "t", "payload": {"n": index}}, "reports", message_id=f"s-{index}"
        )

    with ThreadPoolExecutor(max_workers=20) as threads:
        ids = list(threads.map(publish, range(200)))

    assert ids == [f"s-{index}" for index in range(200)]
    messages = await amqp.take_all("reports.queue")
    assert sorted(json.loads(m.body)["payload"]["n"] for m in messages) == list(range(200))
    connections = await async_wait_for(
        lambda: [
            c
            for c in broker.get(f"vhosts/{broker.vhost}/connections")
            if "publish_task" in str(c["client_properties"].get("connection_name"))
        ],
        message="the publisher's connection in the management API",
    )
    assert len(connections) == 1, "one connection per process, whatever the threads"


def test_an_unroutable_message_raises_in_the_calling_thread() -> None:
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            publish_task_sync(MESSAGE, "nobody-listens")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    thread.join(30)

    [error] = errors
    assert isinstance(error, UnroutableMessageError)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None: ...


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app (as a Flask or Django view would) publishing one task per POST."""
    size = int(environ.get("CONTENT_LENGTH") or 0)
    payload = json.loads(environ["wsgi.input"].read(size) or b"{}")
    message_id = publish_task_sync({"task": "generate_report", "payload": payload}, "reports")
    start_response("202 Accepted", [("Content-Type", "application/json")])
    return [json.dumps({"message_id": message_id}).encode()]


async def test_a_wsgi_app_served_by_a_threaded_server_publishes_every_request(
    amqp: AmqpClient,
) -> None:
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_Quiet
    )
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post(url, json={"report_id": f"r{i}"}) for i in range(30))
            )
    finally:
        server.shutdown()

    assert {r.status_code for r in responses} == {202}
    ids = {r.json()["message_id"] for r in responses}
    messages = await amqp.take_all("reports.queue")
    assert {m.message_id for m in messages} == ids
    assert len(messages) == 30


def test_a_plain_script_exits_cleanly_without_closing_anything(amqp_url: str) -> None:
    script = (
        "from rabbitworker import publish_task_sync\n"
        "print(publish_task_sync({'task': 't', 'payload': {}}, 'reports'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITWORKER_")}
    env["RABBITWORKER_AMQP_URL"] = amqp_url

    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 32
    assert "Traceback" not in result.stderr
