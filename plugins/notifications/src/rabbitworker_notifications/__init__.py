"""rabbitworker plugin: email, SMS and push notifications.

Queues: ``notifications.queue`` (routing key ``notifications``, prefetch 10) runs
``send_email``, ``send_sms`` and ``send_push``; ``tasks.main`` (routing key ``tasks.main``,
prefetch 1), the original single queue, still runs ``send_email``. Settings:
:class:`NotificationSettings` (``RABBITWORKER_NOTIFICATIONS_*``).
"""

from __future__ import annotations

import functools

from rabbitworker import QueueConfig, hookimpl
from rabbitworker_notifications.settings import NotificationSettings
from rabbitworker_notifications.tasks import GatewayError, Notifier

__all__ = ["GatewayError", "NotificationSettings", "Notifier", "notifier"]


@functools.cache
def notifier() -> Notifier:
    """This process's :class:`Notifier`, configured from the environment on first use."""
    return Notifier(NotificationSettings())


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    handlers = notifier()
    return [
        QueueConfig(
            name="notifications.queue",
            routing_key="notifications",
            prefetch_count=10,
            task_handlers={
                "send_email": handlers.send_email,
                "send_sms": handlers.send_sms,
                "send_push": handlers.send_push,
            },
        ),
        QueueConfig(
            name="tasks.main",
            routing_key="tasks.main",
            prefetch_count=1,
            task_handlers={"send_email": handlers.send_email},
        ),
    ]


@hookimpl
async def rabbitworker_startup() -> None:
    await notifier().start()


@hookimpl
async def rabbitworker_shutdown() -> None:
    await notifier().close()
