"""The notifications plugin run through the host's real dispatch path (no broker), with
the ``rabbitworker_worker`` fixture of ``rabbitworker.testing``: the example to copy. Its
start-up and shut-down hooks run too (they open and close the gateway client)."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RABBITWORKER_NOTIFICATIONS_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("routing_key", ["notifications", "tasks.main"])
async def test_send_email_is_acked_and_delivered_to_the_maildir(
    rabbitworker_worker, data_dir, routing_key
):
    worker = await rabbitworker_worker("notifications")

    result = await worker.push(
        {
            "task": "send_email",
            "payload": {"to": "ada@example.com", "subject": "Hi", "body": "Hello"},
        },
        routing_key=routing_key,
    )

    assert result.acked
    [stored] = list(mailbox.Maildir(data_dir / "maildir", create=False))
    assert stored["Subject"] == "Hi"


async def test_an_sms_without_a_number_is_dead_lettered_naming_the_field(
    rabbitworker_worker, data_dir
):
    worker = await rabbitworker_worker("notifications")

    result = await worker.push(
        {"task": "send_sms", "payload": {"body": "hi"}}, routing_key="notifications"
    )

    assert result.reason == "invalid-payload"
    assert "to" in (result.detail or "")
