"""A plugin for the host's own tests, loaded with RABBITWORKER_PLUGINS=probe_plugin.

``PROBE_CONFIG`` names a JSON file listing queues (``name``, ``routing_key``, optional
``prefetch_count``, ``exchange_name``, ``dlx_exchange_name``, ``dlq_name``). Every queue
handles three tasks: ``work`` (async; with ``payload.gate``, a file path, it first waits
until that file exists), ``work_sync`` (plain def) and ``fail`` (raises).
Handlers append ``start``/``end`` events to the JSONL file ``PROBE_EVENTS``, so tests read
what really ran, when, in which process and thread, with which message, and the queue it
arrived on (``arrived_on``).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Any

from loguru import logger

from rabbitworker import QueueConfig, current_task, hookimpl


def _arrived_on() -> str | None:
    try:
        return current_task().queue
    except LookupError:
        return None


def _record(event: str, message: dict[str, Any]) -> None:
    line = (
        json.dumps(
            {
                "event": event,
                "t": time.monotonic(),
                "pid": os.getpid(),
                "id": message.get("payload", {}).get("id"),
                "task": message.get("task"),
                "queue": message.get("payload", {}).get("queue"),
                "arrived_on": _arrived_on(),
                "thread": threading.current_thread().name,
                "message": message,
            }
        )
        + "\n"
    )
    fd = os.open(os.environ["PROBE_EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def work(message: dict[str, Any]) -> str:
    _record("start", message)
    # ``payload.gate``: a file the test creates when the handler may go on.
    gate = message.get("payload", {}).get("gate")
    while gate is not None and not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.02)
    await asyncio.sleep(message.get("payload", {}).get("sleep", 0))
    _record("end", message)
    return "done"


def work_sync(message: dict[str, Any]) -> str:
    _record("start", message)
    time.sleep(message.get("payload", {}).get("sleep", 0))
    _record("end", message)
    return "done"


async def fail(message: dict[str, Any]) -> None:
    _record("start", message)
    raise ValueError(message.get("payload", {}).get("error", "probe failure"))


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    with open(os.environ["PROBE_CONFIG"]) as file:
        queues = json.load(file)
    # A plugin's own log line: the tests check where it goes (stderr, never stdout).
    logger.info("probe plugin contributes {} queue(s)", len(queues))
    return [
        QueueConfig(task_handlers={"work": work, "work_sync": work_sync, "fail": fail}, **queue)
        for queue in queues
    ]
