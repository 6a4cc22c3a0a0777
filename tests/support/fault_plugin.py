"""A plugin for the fault-injection suite, loaded with RABBITWORKER_PLUGINS=fault_plugin.

``FAULT_CONFIG`` names a JSON file listing queues (``QueueConfig`` keyword arguments);
every queue gets the handlers below. Each handler appends one JSON line per event to
``FAULT_EVENTS`` with a single ``O_APPEND`` write, so lines of concurrent handlers and of
successive host processes never interleave and file order is the order things happened.

Events: ``start`` (handler entered), ``end`` (handler completed: the message counts as
handled), ``cancel-ignored``. Each names the AMQP message id, the attempt the host reports
through ``current_task()``, the pid and ``time.monotonic()`` (system-wide on Linux, so
comparable across processes).

A message may carry ``payload.gate``: the handler then waits until the file of that name
exists in the directory ``FAULT_GATES``, which lets a test hold handlers in flight and
release them exactly when it wants.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from rabbitworker import PermanentError, QueueConfig, current_task, hookimpl


def record(event: str, **extra: Any) -> None:
    context = current_task()
    line = json.dumps(
        {
            "event": event,
            "id": context.message_id,
            "task": context.task,
            "attempt": context.attempt,
            "redelivered": context.redelivered,
            "pid": os.getpid(),
            "t": time.monotonic(),
            **extra,
        }
    )
    fd = os.open(os.environ["FAULT_EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _payload(message: dict[str, Any]) -> dict[str, Any]:
    payload = message.get("payload")
    return payload if isinstance(payload, dict) else {}


async def _wait_for_gate(payload: dict[str, Any]) -> None:
    gate = payload.get("gate")
    if not isinstance(gate, str):
        return
    path = os.path.join(os.environ["FAULT_GATES"], gate)
    # The gate is opened by another process (the test): poll the file system for it.
    while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - a cheap stat, polled
        await asyncio.sleep(0.02)


async def work(message: dict[str, Any]) -> str:
    """Wait for the message's gate (if any) and ``payload.sleep`` seconds, then complete."""
    payload = _payload(message)
    record("start")
    await _wait_for_gate(payload)
    sleep = payload.get("sleep", 0)
    if isinstance(sleep, int | float) and sleep > 0:
        await asyncio.sleep(sleep)
    record("end")
    return "done"


async def crash(message: dict[str, Any]) -> None:
    """The poison message: kill the whole process, as a segfaulting C extension would."""
    record("start")
    os._exit(1)


async def fail(message: dict[str, Any]) -> None:
    """Raise on every attempt below ``payload.succeed_on`` (always, without it)."""
    record("start")
    succeed_on = _payload(message).get("succeed_on")
    if isinstance(succeed_on, int) and current_task().attempt >= succeed_on:
        record("end")
        return
    raise ValueError(f"attempt {current_task().attempt} failed")


async def permanent(message: dict[str, Any]) -> None:
    record("start")
    raise PermanentError("the record this task is about was deleted")


class Signup(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    id: int
    email: str


async def validate(signup: Signup) -> None:
    """A typed handler: the host validates the payload into ``Signup`` before calling it."""
    record("start")
    record("end")


async def check_signup(message: dict[str, Any]) -> None:
    """An untyped handler that validates the payload itself and lets ValidationError out."""
    record("start")
    Signup.model_validate(message.get("payload"))
    record("end")


async def accept(message: dict[str, Any]) -> None:
    """Completes at once whatever the payload (the valid messages of the fuzz)."""
    record("start")
    record("end")


async def hang(message: dict[str, Any]) -> None:
    """Never finishes (but can be cancelled)."""
    record("start")
    await asyncio.Event().wait()


async def stubborn(message: dict[str, Any]) -> None:
    """Ignores cancellation: catches CancelledError and keeps going, forever."""
    record("start")
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            record("cancel-ignored")


# -- handlers of the settlement-core fault cases ------------------------------------------


async def cancel_and_return(message: dict[str, Any]) -> str:
    """A common clean-up pattern: wait (for the gate, or forever), and on cancellation clean
    up and return normally. A message whose handler the host cancelled is unfinished even so."""
    record("start")
    try:
        if isinstance(_payload(message).get("gate"), str):
            await _wait_for_gate(_payload(message))
        else:
            await asyncio.Event().wait()
    except asyncio.CancelledError:
        record("cancelled")
        return "cleaned up"
    record("end")
    return "done"


def sleep_sync(message: dict[str, Any]) -> str:
    """A plain ``def`` handler (run off the event loop): ``time.sleep(payload.sleep)``."""
    record("start")
    sleep = _payload(message).get("sleep", 0)
    if isinstance(sleep, int | float) and sleep > 0:
        time.sleep(sleep)
    record("end")
    return "done"


async def fail_after_gate(message: dict[str, Any]) -> None:
    """Wait for the message's gate (if any), then raise: a failure at a moment of the
    test's choosing (e.g. during a broker alarm)."""
    record("start")
    await _wait_for_gate(_payload(message))
    raise ValueError("failed after the gate")


HANDLERS = {
    "work": work,
    "crash": crash,
    "fail": fail,
    "permanent": permanent,
    "validate": validate,
    "check_signup": check_signup,
    "accept": accept,
    "hang": hang,
    "stubborn": stubborn,
    "cancel_and_return": cancel_and_return,
    "sleep_sync": sleep_sync,
    "fail_after_gate": fail_after_gate,
}


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    queues = json.loads(Path(os.environ["FAULT_CONFIG"]).read_text())
    return [QueueConfig(task_handlers=HANDLERS, **queue) for queue in queues]
