"""End to end: the real host runs the three bundled plugins, installed and autoloaded.

Each plugin's data dir points into the test's tmp_path, so what the handlers did is read
back from the Maildir, the outboxes, the report files and the SQLite database.
"""

from __future__ import annotations

import asyncio
import csv
import json
import mailbox
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from brokertools import Broker, HostProcess, wait_for

from rabbitworker import close_publishers, publish_task

pytestmark = pytest.mark.broker

PLUGINS = ("notifications", "reports", "analytics")

#: (queue, routing key, message): one message per task of every bundled queue.
TASKS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "notifications.queue",
        "notifications",
        {
            "task": "send_email",
            "payload": {"to": "ada@example.com", "subject": "via notifications", "body": "1"},
        },
    ),
    (
        "tasks.main",
        "tasks.main",
        {
            "task": "send_email",
            "payload": {"to": "bob@example.com", "subject": "via tasks.main", "body": "2"},
        },
    ),
    (
        "notifications.queue",
        "notifications",
        {"task": "send_sms", "payload": {"to": "+15551234567", "body": "code 1234"}},
    ),
    (
        "notifications.queue",
        "notifications",
        {"task": "send_push", "payload": {"device_token": "tok", "title": "Hi", "body": "there"}},
    ),
    (
        "reports.queue",
        "reports",
        {
            "task": "generate_report",
            "payload": {
                "report_id": "q1",
                "columns": ["region", "amount"],
                "rows": [{"region": "EU", "amount": 2}, {"region": "US", "amount": 3}],
                "totals": ["amount"],
            },
        },
    ),
    (
        "reports.queue",
        "reports",
        {
            "task": "export_data",
            "payload": {
                "dataset": "users",
                "export_id": "e2e",
                "format": "json",
                "records": [{"id": 1}, {"id": 2}],
            },
        },
    ),
    (
        "analytics.queue",
        "analytics",
        {"task": "track_event", "payload": {"event": "checkout", "event_id": "evt-e2e"}},
    ),
]

#: (queue, routing key, message, the field its dead letter must name): one per plugin.
BAD_TASKS = [
    (
        "notifications.queue",
        "notifications",
        {"task": "send_sms", "payload": {"body": "no number"}},
        "payload.to",
    ),
    (
        "reports.queue",
        "reports",
        {"task": "generate_report", "payload": {"report_id": "../x", "columns": ["a"], "rows": []}},
        "payload.report_id",
    ),
    (
        "analytics.queue",
        "analytics",
        {"task": "track_event", "payload": {"properties": {}}},
        "payload.event",
    ),
]


@pytest.fixture
def data_dirs(tmp_path: Path) -> dict[str, Path]:
    return {plugin: tmp_path / "data" / plugin for plugin in PLUGINS}


@pytest.fixture
def start_bundled_host(
    start_host: Callable[..., HostProcess], data_dirs: dict[str, Path]
) -> Callable[[], HostProcess]:
    """Start the host with only the installed plugins, each writing under tmp_path."""

    def start() -> HostProcess:
        return start_host(
            RABBITWORKER_PLUGINS="",
            RABBITWORKER_DISABLE_PLUGIN_AUTOLOAD="0",
            **{
                f"RABBITWORKER_{plugin.upper()}_DATA_DIR": str(path)
                for plugin, path in data_dirs.items()
            },
        )

    return start


async def test_every_bundled_task_is_handled_and_acked(
    start_bundled_host: Callable[[], HostProcess], data_dirs: dict[str, Path]
) -> None:
    host = start_bundled_host()
    for queue in ("notifications.queue", "tasks.main", "reports.queue", "analytics.queue"):
        assert f"[{queue}] consuming" in host.log

    published = {
        await publish_task(message, routing_key): queue for queue, routing_key, message in TASKS
    }
    await close_publishers()

    for message_id, queue in published.items():
        await asyncio.to_thread(host.wait_for_log, f"[{queue}] ACKed message {message_id}")
    assert host.stop() == 0
    assert "dead-lettered" not in host.log
    assert_the_work_is_done(data_dirs)


async def test_bad_payloads_are_dead_lettered_naming_the_field(
    broker: Broker,
    start_bundled_host: Callable[[], HostProcess],
    data_dirs: dict[str, Path],
) -> None:
    host = start_bundled_host()

    published = {
        await publish_task(message, routing_key): (queue, message, field)
        for queue, routing_key, message, field in BAD_TASKS
    }
    await close_publishers()

    for message_id, (queue, _, _) in published.items():
        await asyncio.to_thread(host.wait_for_log, f"[{queue}] dead-lettered message {message_id}")
    dead_letters: list[dict[str, Any]] = []

    def all_dead_letters() -> bool:
        dead_letters.extend(broker.get_messages("tasks.dlq"))
        return len(dead_letters) >= len(published)

    await asyncio.to_thread(wait_for, all_dead_letters, message="every dead letter in tasks.dlq")
    assert len(dead_letters) == len(published)
    for dead in dead_letters:
        queue, message, field = published[dead["properties"]["message_id"]]
        headers = dead["properties"]["headers"]
        assert headers["x-rabbitworker-queue"] == queue
        assert headers["x-rabbitworker-exception-type"] == "ValidationError"
        assert field in headers["x-rabbitworker-exception-message"]
        assert json.loads(dead["payload"]) == message
    assert host.stop() == 0
    assert not data_dirs["notifications"].exists()
    assert not data_dirs["reports"].exists()
    assert read_events(data_dirs["analytics"]) == []


def assert_the_work_is_done(data_dirs: dict[str, Path]) -> None:
    notifications = data_dirs["notifications"]
    emails = mailbox.Maildir(notifications / "maildir", create=False)
    assert sorted((m["To"], m["Subject"]) for m in emails) == [
        ("ada@example.com", "via notifications"),
        ("bob@example.com", "via tasks.main"),
    ]
    (sms,) = read_json_lines(notifications / "outbox" / "sms.jsonl")
    assert (sms["to"], sms["body"]) == ("+15551234567", "code 1234")
    (push,) = read_json_lines(notifications / "outbox" / "push.jsonl")
    assert (push["device_token"], push["title"]) == ("tok", "Hi")

    reports = data_dirs["reports"]
    with (reports / "reports" / "q1.csv").open(newline="") as file:
        assert list(csv.reader(file)) == [
            ["region", "amount"],
            ["EU", "2"],
            ["US", "3"],
            ["Total", "5"],
        ]
    export = json.loads((reports / "exports" / "users" / "e2e.json").read_text())
    assert export == [{"id": 1}, {"id": 2}]

    assert read_events(data_dirs["analytics"]) == [("evt-e2e", "checkout")]


def read_events(analytics_data_dir: Path) -> list[tuple[str, str]]:
    """(event_id, event) of every event in the analytics plugin's database."""
    database = analytics_data_dir / "events.sqlite3"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        return connection.execute("SELECT event_id, event FROM events").fetchall()


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
