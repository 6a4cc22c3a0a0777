"""The reports plugin run through the host's real dispatch path (no broker), with the
``rabbitworker_worker`` fixture of ``rabbitworker.testing``: the example to copy."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RABBITWORKER_REPORTS_DATA_DIR", str(tmp_path))
    return tmp_path


async def test_generate_report_is_acked_and_writes_the_report(rabbitworker_worker, data_dir):
    worker = await rabbitworker_worker("reports")
    payload = {
        "report_id": "sales-2026-11",
        "columns": ["region", "total"],
        "rows": [{"region": "north", "total": 3}],
    }

    result = await worker.push(
        {"task": "generate_report", "payload": payload}, routing_key="reports"
    )

    assert result.acked
    with (data_dir / "reports" / "sales-2026-11.csv").open() as report:
        assert list(csv.reader(report))[:2] == [["region", "total"], ["north", "3"]]


async def test_a_report_without_columns_is_dead_lettered_naming_the_field(
    rabbitworker_worker, data_dir
):
    worker = await rabbitworker_worker("reports")

    result = await worker.push(
        {"task": "generate_report", "payload": {"report_id": "r1", "rows": []}},
        routing_key="reports",
    )

    assert result.dead_lettered
    assert result.reason == "invalid-payload"
    assert "columns" in (result.detail or "")
    assert result.attempts == 1
