"""The work behind ``track_event``: :class:`EventTracker` stores events in SQLite.

The handler is a plain ``def``: the host runs it in a worker thread, so it may block on the
database. Each call opens its own connection (sqlite3 connections are not shared between
threads); the database is in WAL mode so readers never block the writers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from rabbitworker_analytics.payloads import EventPayload, TrackEventMessage
from rabbitworker_analytics.settings import AnalyticsSettings

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    event       TEXT NOT NULL,
    user_id     TEXT,
    properties  TEXT NOT NULL,  -- a JSON object
    occurred_at TEXT NOT NULL,  -- ISO 8601, UTC, microseconds: sorts as text
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_name_and_time ON events (event, occurred_at);
"""

INSERT = """
INSERT INTO events (event_id, event, user_id, properties, occurred_at, received_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (event_id) DO NOTHING
"""


class EventTracker:
    """Stores events in the database :class:`AnalyticsSettings` names."""

    def __init__(self, settings: AnalyticsSettings) -> None:
        self.settings = settings
        self._prepared = False
        self._prepare_lock = threading.Lock()

    def prepare(self) -> None:
        """Create the database, switch it to WAL and create the schema; once per process."""
        if self._prepared:
            return
        with self._prepare_lock:
            if self._prepared:
                return
            path = self.settings.database_path
            path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self.connect()) as connection:
                (mode,) = connection.execute("PRAGMA journal_mode=WAL").fetchone()
                if mode != "wal":
                    logger.warning(
                        "analytics database {} stays in {} journal mode (WAL is not available "
                        "there); concurrent writers will wait for each other longer",
                        path,
                        mode,
                    )
                connection.executescript(SCHEMA)
            self._prepared = True

    def connect(self) -> sqlite3.Connection:
        """A new connection to the database, waiting up to ``busy_timeout`` for locks."""
        return sqlite3.connect(self.settings.database_path, timeout=self.settings.busy_timeout)

    def track_event(self, message: dict[str, Any]) -> str:
        """Store one event; return its id. An id stored already is skipped, not an error."""
        event = TrackEventMessage.model_validate(message).payload
        event_id = event.event_id or uuid.uuid4().hex
        stored = self.store(event_id, event)
        if stored:
            logger.info("event {} ({}) stored", event_id, event.event)
        else:
            logger.info("event {} ({}) was stored already; skipped", event_id, event.event)
        return event_id

    def store(self, event_id: str, event: EventPayload) -> bool:
        """Insert one event; ``False`` if an event with that id is stored already."""
        self.prepare()
        received_at = datetime.now(UTC)
        occurred_at = (event.timestamp or received_at).astimezone(UTC)
        with closing(self.connect()) as connection, connection:
            cursor = connection.execute(
                INSERT,
                (
                    event_id,
                    event.event,
                    event.user_id,
                    json.dumps(event.properties, ensure_ascii=False),
                    occurred_at.isoformat(timespec="microseconds"),
                    received_at.isoformat(timespec="microseconds"),
                ),
            )
            return cursor.rowcount == 1
