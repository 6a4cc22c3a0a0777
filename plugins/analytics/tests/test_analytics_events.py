"""track_event stores each event in SQLite, once per event id, from many threads at once."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from rabbitworker_analytics import EventTracker


def event_task(**payload: Any) -> dict[str, Any]:
    return {"task": "track_event", "payload": {"event": "checkout", **payload}}


def test_an_event_is_stored_with_all_its_fields(make_settings, db) -> None:
    settings = make_settings()

    event_id = EventTracker(settings).track_event(
        event_task(
            event_id="evt-1",
            user_id="u-42",
            properties={"total": 19.99, "items": ["a", "b"]},
            timestamp="2024-03-01T12:30:00+02:00",
        )
    )

    assert event_id == "evt-1"
    (row,) = db(settings.database_path, "SELECT * FROM events")
    assert row["event_id"] == "evt-1"
    assert row["event"] == "checkout"
    assert row["user_id"] == "u-42"
    assert json.loads(row["properties"]) == {"total": 19.99, "items": ["a", "b"]}
    assert row["occurred_at"] == "2024-03-01T10:30:00.000000+00:00"
    assert datetime.fromisoformat(row["received_at"]).tzinfo is not None


def test_an_event_without_id_or_timestamp_gets_them_when_stored(make_settings, db) -> None:
    settings = make_settings()
    before = datetime.now(UTC)

    event_id = EventTracker(settings).track_event(event_task())

    (row,) = db(settings.database_path, "SELECT * FROM events")
    assert row["event_id"] == event_id
    assert len(event_id) == 32
    assert row["user_id"] is None
    assert row["properties"] == "{}"
    assert row["occurred_at"] == row["received_at"]
    assert datetime.fromisoformat(row["occurred_at"]) >= before


def test_an_event_id_stored_already_is_not_stored_again(make_settings, db) -> None:
    settings = make_settings()
    tracker = EventTracker(settings)

    first = tracker.track_event(event_task(event_id="evt-1", properties={"n": 1}))
    again = tracker.track_event(event_task(event_id="evt-1", properties={"n": 2}))

    assert first == again == "evt-1"
    assert db(settings.database_path, "SELECT properties FROM events") == [
        {"properties": '{"n": 1}'}
    ]


def test_the_database_path_is_configurable(make_settings, tmp_path, db) -> None:
    database = tmp_path / "elsewhere" / "analytics.db"
    settings = make_settings(database=database)

    EventTracker(settings).track_event(event_task())

    assert db(database, "SELECT count(*) AS n FROM events") == [{"n": 1}]
    assert not settings.data_dir.exists()


def test_events_from_many_threads_at_once_are_all_stored(make_settings, db) -> None:
    settings = make_settings()
    tracker = EventTracker(settings)

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(
            pool.map(
                tracker.track_event,
                (event_task(event_id=f"e{n}", user_id=str(n)) for n in range(200)),
            )
        )

    assert sorted(ids) == sorted(f"e{n}" for n in range(200))
    assert db(settings.database_path, "SELECT count(*) AS n FROM events") == [{"n": 200}]
    assert db(settings.database_path, "PRAGMA journal_mode") == [{"journal_mode": "wal"}]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"task": "track_event"}, "payload"),
        ({"task": "track_event", "payload": {}}, "payload.event"),
        (event_task(event=""), "payload.event"),
        (event_task(event=42), "payload.event"),
        (event_task(event_id=""), "payload.event_id"),
        (event_task(properties=["not", "an", "object"]), "payload.properties"),
        (event_task(timestamp="2024-03-01T12:30:00"), "payload.timestamp"),
        (event_task(timestamp="yesterday"), "payload.timestamp"),
        (event_task(userid="typo"), "payload.userid"),
    ],
)
def test_a_bad_payload_raises_naming_the_field(
    make_settings, message: dict[str, Any], field: str
) -> None:
    settings = make_settings()

    with pytest.raises(ValidationError, match=rf"(?m)^{field}$"):
        EventTracker(settings).track_event(message)
    assert not settings.data_dir.exists()
