"""Helpers of the console tests: dead letters written straight into a DLQ with the headers
the host writes, and a real ``rabbitworker-host console`` process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import httpx
import orjson
from brokertools import closed_port, host_env, wait_for

from rabbitworker.events import DeadLetterReason
from rabbitworker.policy import Action, Decision, dead_letter_headers

T = TypeVar("T")

#: The console's queues: the probe's two, and the typed plugin's (a payload schema).
PROBE_QUEUES = [
    {"name": "probe.q", "routing_key": "probe"},
    {"name": "other.q", "routing_key": "other"},
]


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to the end on a loop of its own thread: Playwright's sync API owns
    the test thread's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass(frozen=True)
class Letter:
    """One dead letter to write: its id, the queue it failed on, its task and payload."""

    message_id: str
    queue: str
    task: str
    payload: dict[str, Any]
    error: str = "probe failure"
    reason: DeadLetterReason = DeadLetterReason.HANDLER_ERROR


def _headers(letter: Letter) -> dict[str, Any]:
    exception = ValueError(letter.error)
    decision = Decision(Action.DEAD_LETTER, letter.reason, f"ValueError: {letter.error}", exception)
    return dead_letter_headers(
        {},
        queue=letter.queue,
        exchange="tasks",
        task=letter.task,
        attempt=1,
        decision=decision,
    )


async def fill_dlq(amqp_url: str, letters: Sequence[Letter], dlq: str = "tasks.dlq") -> None:
    """Publish ``letters`` to ``dlq`` in order, confirmed, with the host's dead-letter
    headers (what a host writes when their handlers raise)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for start in range(0, len(letters), 500):
            # One batch in flight at a time keeps the order and the confirms cheap.
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            orjson.dumps({"task": letter.task, "payload": letter.payload}),
                            message_id=letter.message_id,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            headers=_headers(letter),
                        ),
                        routing_key=dlq,
                    )
                    for letter in letters[start : start + 500]
                )
            )
    finally:
        await connection.close()


@dataclass
class ConsoleProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_console(
    amqp_url: str,
    probe_config: Path,
    log: Path,
    *,
    token: str | None = None,
    plugins: str = "probe_plugin,typed_plugin",
) -> ConsoleProcess:
    """Start ``rabbitworker-host console`` on a free port; returns once it answers."""
    port = closed_port()
    extra = {
        "PROBE_CONFIG": str(probe_config),
        "PROBE_EVENTS": str(log.with_suffix(".events")),
        "RABBITWORKER_PLUGINS": plugins,
        "RABBITWORKER_MANAGEMENT_URL": "http://127.0.0.1:15672",
    }
    if token is not None:
        extra["RABBITWORKER_CONSOLE_TOKEN"] = token
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rabbitworker", "console", "--port", str(port)],
            env=host_env(amqp_url, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    console = ConsoleProcess(process, f"http://127.0.0.1:{port}", log)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the console exited {process.returncode}:\n{log.read_text()}")
        try:
            httpx.get(f"{console.url}/static/console.css", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    wait_for(answers, timeout=20, message="the console to answer")
    return console
