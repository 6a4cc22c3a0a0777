"""The analytics plugin run through the host's real dispatch path (no broker), with the
``rabbitworker_worker`` fixture of ``rabbitworker.testing``: the example to copy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "events.sqlite3"
    monkeypatch.setenv("RABBITWORKER_ANALYTICS_DATABASE", str(path))
    monkeypatch.setenv("RABBITWORKER_ANALYTICS_DATA_DIR", str(tmp_path))
    return path


async def test_track_event_runs_in_a_thread_and_stores_the_event(rabbitworker_worker, database):
    worker = await rabbitworker_worker("analytics")

    result = await worker.push(
        {"task": "track_event", "payload": {"event": "signup", "user_id": "u1"}},
        routing_key="analytics",
    )

    assert result.acked
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (1,)


async def test_an_unknown_task_is_dead_lettered(rabbitworker_worker, database):
    worker = await rabbitworker_worker("analytics")

    result = await worker.push({"task": "track_click", "payload": {}}, routing_key="analytics")

    assert result.reason == "unknown-task"
    assert result.attempts == 0
