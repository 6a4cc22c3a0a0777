"""A plugin whose ``rabbitworker_queues`` hook raises."""

from __future__ import annotations

from rabbitworker import QueueConfig, hookimpl


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    raise RuntimeError("settings file /etc/raising-plugin.toml is missing")
