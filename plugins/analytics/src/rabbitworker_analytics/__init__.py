"""rabbitworker plugin: analytics events, stored in SQLite.

Queue: ``analytics.queue`` (routing key ``analytics``, prefetch 20) runs ``track_event``, a
plain ``def`` handler the host runs in worker threads. Settings: :class:`AnalyticsSettings`
(``RABBITWORKER_ANALYTICS_*``).
"""

from __future__ import annotations

import functools

from rabbitworker import QueueConfig, hookimpl
from rabbitworker_analytics.settings import AnalyticsSettings
from rabbitworker_analytics.tasks import EventTracker

__all__ = ["AnalyticsSettings", "EventTracker", "tracker"]


@functools.cache
def tracker() -> EventTracker:
    """This process's :class:`EventTracker`, configured from the environment on first use."""
    return EventTracker(AnalyticsSettings())


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    return [
        QueueConfig(
            name="analytics.queue",
            routing_key="analytics",
            prefetch_count=20,
            task_handlers={"track_event": tracker().track_event},
        )
    ]


@hookimpl
def rabbitworker_startup() -> None:
    # A database that cannot be created stops the host before it takes any message.
    tracker().prepare()
