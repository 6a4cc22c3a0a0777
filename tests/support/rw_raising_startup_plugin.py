"""A plugin whose queues are fine but whose ``rabbitworker_startup`` hook raises."""

from __future__ import annotations

from typing import Any

from rabbitworker import HostSettings, QueueConfig, hookimpl


async def _noop(message: dict[str, Any]) -> None:
    return None


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    return [QueueConfig("startup.q", "startup", {"noop": _noop})]


@hookimpl
def rabbitworker_startup(settings: HostSettings) -> None:
    raise ConnectionRefusedError("the plugin's database at db.invalid:5432 refused")
