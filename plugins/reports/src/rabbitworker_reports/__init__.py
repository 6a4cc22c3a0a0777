"""rabbitworker plugin: reports and data exports, written as CSV or JSON files.

Queue: ``reports.queue`` (routing key ``reports``, prefetch 1) runs ``generate_report`` and
``export_data``. Settings: :class:`ReportSettings` (``RABBITWORKER_REPORTS_*``). The plugin
holds no connection, so it needs no start-up or shutdown hook.
"""

from __future__ import annotations

import functools

from rabbitworker import QueueConfig, hookimpl
from rabbitworker_reports.settings import ReportSettings
from rabbitworker_reports.tasks import ReportWriter

__all__ = ["ReportSettings", "ReportWriter", "writer"]


@functools.cache
def writer() -> ReportWriter:
    """This process's :class:`ReportWriter`, configured from the environment on first use."""
    return ReportWriter(ReportSettings())


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    handlers = writer()
    return [
        QueueConfig(
            name="reports.queue",
            routing_key="reports",
            prefetch_count=1,
            task_handlers={
                "generate_report": handlers.generate_report,
                "export_data": handlers.export_data,
            },
        )
    ]
