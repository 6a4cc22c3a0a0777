"""A plugin that builds an invalid QueueConfig (prefetch_count 0) in its hook."""

from __future__ import annotations

from typing import Any

from rabbitworker import QueueConfig, hookimpl


async def _noop(message: dict[str, Any]) -> None:
    return None


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    return [QueueConfig("invalid.q", "invalid", {"noop": _noop}, prefetch_count=0)]
