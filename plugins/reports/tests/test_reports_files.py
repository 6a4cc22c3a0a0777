"""generate_report and export_data write real files, atomically, and return their paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rabbitworker_reports import ReportWriter
from rabbitworker_reports.tasks import write_atomically

SALES = {
    "report_id": "sales-2024-q1",
    "title": "Sales, Q1 2024",
    "columns": ["region", "orders", "amount"],
    "rows": [
        {"region": "EU", "orders": 3, "amount": 120.5},
        {"region": "US", "orders": 2, "amount": 80},
        {"region": "APAC", "amount": None},
    ],
    "totals": ["orders", "amount"],
}


def report_task(**payload: Any) -> dict[str, Any]:
    return {"task": "generate_report", "payload": {**SALES, **payload}}


def export_task(**payload: Any) -> dict[str, Any]:
    return {"task": "export_data", "payload": payload}


def read_csv(path: str | Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_lines(path: str | Path) -> list[Any]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


async def test_a_csv_report_has_its_rows_and_a_totals_row(make_settings) -> None:
    settings = make_settings()

    path = await ReportWriter(settings).generate_report(report_task())

    assert path == str(settings.data_dir / "reports" / "sales-2024-q1.csv")
    assert read_csv(path) == [
        ["region", "orders", "amount"],
        ["EU", "3", "120.5"],
        ["US", "2", "80"],
        ["APAC", "", ""],
        ["Total", "5", "200.5"],
    ]


async def test_a_csv_report_without_totals_has_no_totals_row(make_settings) -> None:
    path = await ReportWriter(make_settings()).generate_report(report_task(totals=[]))

    assert read_csv(path)[-1] == ["APAC", "", ""]


async def test_a_json_report_holds_every_column_of_every_row(make_settings) -> None:
    settings = make_settings()

    path = await ReportWriter(settings).generate_report(report_task(format="json"))

    assert path.endswith("reports/sales-2024-q1.json")
    document = read_json(path)
    assert document["report_id"] == "sales-2024-q1"
    assert document["title"] == "Sales, Q1 2024"
    assert document["columns"] == ["region", "orders", "amount"]
    assert document["rows"][2] == {"region": "APAC", "orders": None, "amount": None}
    assert document["totals"] == {"orders": 5, "amount": 200.5}
    assert document["generated_at"]


async def test_generating_a_report_again_replaces_it_and_leaves_no_temp_file(
    make_settings,
) -> None:
    settings = make_settings()
    writer = ReportWriter(settings)

    await writer.generate_report(report_task())
    path = await writer.generate_report(report_task(rows=[{"region": "EU", "orders": 1}]))

    assert read_csv(path)[1:] == [["EU", "1", ""], ["Total", "1", "0"]]
    assert files_in(settings.data_dir) == ["reports/sales-2024-q1.csv"]


def test_a_failed_write_keeps_the_previous_file_and_removes_the_temp_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "report.csv"
    target.write_text("old\n")

    def fail_halfway(file: Any) -> None:
        file.write("new, but not all of it")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail_halfway)

    assert target.read_text() == "old\n"
    assert files_in(tmp_path) == ["report.csv"]


async def test_a_csv_export_has_every_field_in_order_of_first_appearance(make_settings) -> None:
    settings = make_settings()
    records = [
        {"id": 1, "name": "Ada", "tags": ["x", "y"]},
        {"id": 2, "active": True, "meta": {"k": "v"}, "name": None},
    ]

    path = await ReportWriter(settings).export_data(
        export_task(dataset="users", export_id="daily", records=records)
    )

    assert path == str(settings.data_dir / "exports" / "users" / "daily.csv")
    assert read_csv(path) == [
        ["id", "name", "tags", "active", "meta"],
        ["1", "Ada", '["x", "y"]', "", ""],
        ["2", "", "", "true", '{"k": "v"}'],
    ]


async def test_an_export_keeps_only_the_requested_fields_in_that_order(make_settings) -> None:
    records = [{"id": 1, "name": "Ada", "secret": "s"}, {"id": 2}]

    path = await ReportWriter(make_settings()).export_data(
        export_task(dataset="users", records=records, fields=["name", "id"], format="jsonl")
    )

    assert path.endswith(".jsonl")
    assert read_json_lines(path) == [
        {"name": "Ada", "id": 1},
        {"name": None, "id": 2},
    ]


async def test_a_json_export_is_one_array_of_the_records(make_settings) -> None:
    records = [{"id": 1, "nested": {"a": [1, 2]}}, {"id": 2, "text": "Zoë"}]

    path = await ReportWriter(make_settings()).export_data(
        export_task(dataset="orders", records=records, format="json")
    )

    assert read_json(path) == records


async def test_exports_without_an_id_get_distinct_files(make_settings) -> None:
    settings = make_settings()
    writer = ReportWriter(settings)

    paths = {
        await writer.export_data(export_task(dataset="orders", records=[{"n": n}]))
        for n in range(3)
    }

    assert len(paths) == 3
    assert all(Path(path).parent == settings.data_dir / "exports" / "orders" for path in paths)
    assert sorted(read_csv(path)[1][0] for path in paths) == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"task": "generate_report"}, "payload"),
        (report_task(report_id="../../etc/passwd"), "payload.report_id"),
        (report_task(report_id=".hidden"), "payload.report_id"),
        (report_task(columns=[]), "payload.columns"),
        (report_task(columns=["a", "b", "a"]), "payload.columns"),
        (report_task(rows=[{"region": "EU", "profit": 1}]), "payload.rows"),
        (report_task(rows=[{"region": {"nested": 1}}]), "payload.rows.0.region"),
        (report_task(totals=["region"]), "payload.totals"),
        (report_task(totals=["discount"]), "payload.totals"),
        (report_task(format="xlsx"), "payload.format"),
        (report_task(colums=["typo"]), "payload.colums"),
    ],
)
async def test_a_bad_report_payload_raises_naming_the_field(
    make_settings, message: dict[str, Any], field: str
) -> None:
    settings = make_settings()

    with pytest.raises(ValidationError, match=rf"(?m)^{field}$"):
        await ReportWriter(settings).generate_report(message)
    assert not settings.data_dir.exists()


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"task": "export_data", "payload": None}, "payload"),
        (export_task(records=[]), "payload.dataset"),
        (export_task(dataset="a/b", records=[]), "payload.dataset"),
        (export_task(dataset="d", export_id="x y", records=[]), "payload.export_id"),
        (export_task(dataset="d", records={"id": 1}), "payload.records"),
        (export_task(dataset="d", records=[1, 2]), "payload.records.0"),
        (export_task(dataset="d", records=[], fields=[]), "payload.fields"),
        (export_task(dataset="d", records=[], format="parquet"), "payload.format"),
    ],
)
async def test_a_bad_export_payload_raises_naming_the_field(
    make_settings, message: dict[str, Any], field: str
) -> None:
    settings = make_settings()

    with pytest.raises(ValidationError, match=rf"(?m)^{field}$"):
        await ReportWriter(settings).export_data(message)
    assert not settings.data_dir.exists()
