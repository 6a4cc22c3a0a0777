"""A plugin whose hook returns a generator rather than a list (any iterable is fine)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rabbitworker import QueueConfig, hookimpl


async def _noop(message: dict[str, Any]) -> None:
    return None


@hookimpl
def rabbitworker_queues() -> Iterator[QueueConfig]:
    yield QueueConfig("generated.one", "one", {"noop": _noop})
    yield QueueConfig("generated.two", "two", {"noop": _noop}, prefetch_count=5)
