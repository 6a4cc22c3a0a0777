"""Queue depths, consumers and message rates from RabbitMQ's management HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import httpx
from yarl import URL

from rabbitworker.settings import mask_url

COLUMNS = ",".join(
    [
        "name",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "message_stats.publish_details.rate",
        "message_stats.ack_details.rate",
        "message_stats.deliver_get_details.rate",
    ]
)


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    ready: int
    unacked: int
    consumers: int
    publish_rate: float
    ack_rate: float
    deliver_rate: float

    @classmethod
    def of(cls, row: dict[str, Any]) -> QueueStats:
        stats = row.get("message_stats") or {}

        def rate(name: str) -> float:
            return float((stats.get(name) or {}).get("rate", 0.0) or 0.0)

        return cls(
            depth=int(row.get("messages") or 0),
            ready=int(row.get("messages_ready") or 0),
            unacked=int(row.get("messages_unacknowledged") or 0),
            consumers=int(row.get("consumers") or 0),
            publish_rate=rate("publish_details"),
            ack_rate=rate("ack_details"),
            deliver_rate=rate("deliver_get_details"),
        )


class Management:
    """A client of the management API for the vhost of an AMQP URL.

    The API's user and password come from ``management_url`` when it has them, else from
    the (first) AMQP URL: the same broker user the host connects as.
    """

    def __init__(self, management_url: str, amqp_url: str, timeout: float = 5.0) -> None:
        api = URL(management_url.rstrip("/"))
        amqp = URL(amqp_url.split(";")[0].strip())
        self.vhost = unquote(amqp.raw_path[1:]) or "/"
        user = api.user if api.user is not None else (amqp.user or "guest")
        password = api.password if api.password is not None else (amqp.password or "guest")
        self.shown_url = mask_url(str(api))
        base = str(api.with_user(None).with_password(None))
        self._client = httpx.AsyncClient(
            base_url=f"{base}/api", auth=(user, password), timeout=timeout
        )

    async def queues(self) -> dict[str, QueueStats]:
        """Every queue of the vhost with its numbers; raises ``httpx.HTTPError``."""
        response = await self._client.get(
            f"/queues/{quote(self.vhost, safe='')}", params={"columns": COLUMNS}
        )
        response.raise_for_status()
        return {row["name"]: QueueStats.of(row) for row in response.json()}

    async def aclose(self) -> None:
        await self._client.aclose()
