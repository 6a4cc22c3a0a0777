"""One of two plugins that both claim the queue ``claimed.q``."""

from __future__ import annotations

from typing import Any

from rabbitworker import QueueConfig, hookimpl


async def _noop(message: dict[str, Any]) -> None:
    return None


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    return [QueueConfig("claimed.q", "claimed.a", {"noop": _noop})]
