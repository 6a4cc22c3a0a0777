"""The work behind each task: :class:`ReportWriter` turns payloads into files.

Every file is written to a temporary file beside it, fsynced, then renamed over the target,
so a reader sees either the previous file or the complete new one, never half of it, and a
message is only acknowledged once its file is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from loguru import logger

from rabbitworker_reports.payloads import (
    ExportDataMessage,
    ExportPayload,
    GenerateReportMessage,
    ReportPayload,
)
from rabbitworker_reports.settings import ReportSettings

#: The label of a CSV report's totals row, in its first column that is not summed.
TOTALS_LABEL = "Total"


class ReportWriter:
    """Writes reports and exports where :class:`ReportSettings` says; the handlers are its
    ``generate_report`` and ``export_data`` methods, each returning the file's path."""

    def __init__(self, settings: ReportSettings) -> None:
        self.settings = settings

    async def generate_report(self, message: dict[str, Any]) -> str:
        """Write ``<data_dir>/reports/<report_id>.<format>``; return its path."""
        report = GenerateReportMessage.model_validate(message).payload
        path = self.settings.reports_dir / f"{report.report_id}.{report.format}"
        await asyncio.to_thread(write_report, path, report)
        logger.info("report {} written to {} ({} rows)", report.report_id, path, len(report.rows))
        return str(path)

    async def export_data(self, message: dict[str, Any]) -> str:
        """Write ``<data_dir>/exports/<dataset>/<export_id>.<format>``; return its path."""
        export = ExportDataMessage.model_validate(message).payload
        export_id = export.export_id or new_export_id()
        path = self.settings.exports_dir / export.dataset / f"{export_id}.{export.format}"
        await asyncio.to_thread(write_export, path, export)
        logger.info(
            "export of {} written to {} ({} records)", export.dataset, path, len(export.records)
        )
        return str(path)


def new_export_id() -> str:
    """A sortable, unique file stem: ``20240131T120000123456Z-1a2b3c4d``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def write_report(path: Path, report: ReportPayload) -> None:
    rows = [{column: row.get(column) for column in report.columns} for row in report.rows]
    totals = {column: _total(row[column] for row in rows) for column in report.totals}
    if report.format == "json":
        document = {
            "report_id": report.report_id,
            "title": report.title,
            "generated_at": datetime.now(UTC).isoformat(),
            "columns": report.columns,
            "rows": rows,
            "totals": totals,
        }
        write_atomically(path, lambda file: _dump_json(document, file))
        return
    table: list[dict[str, Any]] = list(rows)
    if totals:
        label = next((c for c in report.columns if c not in totals), None)
        table.append({**({label: TOTALS_LABEL} if label else {}), **totals})
    write_atomically(path, lambda file: _write_csv(file, report.columns, table))


def write_export(path: Path, export: ExportPayload) -> None:
    fields = export.fields or _fields_in_order(export.records)
    if export.fields is None:
        records: list[dict[str, Any]] = list(export.records)
    else:
        records = [{field: record.get(field) for field in fields} for record in export.records]
    if export.format == "json":
        write_atomically(path, lambda file: _dump_json(records, file))
    elif export.format == "jsonl":
        write_atomically(
            path,
            lambda file: file.writelines(
                json.dumps(record, ensure_ascii=False) + "\n" for record in records
            ),
        )
    else:
        write_atomically(path, lambda file: _write_csv(file, fields, records))


def write_atomically(path: Path, write: Callable[[IO[str]], object]) -> None:
    """Write ``path`` through ``write(file)`` all at once: temp file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8", newline="") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dump_json(document: object, file: IO[str]) -> None:
    json.dump(document, file, ensure_ascii=False, indent=2)
    file.write("\n")


def _write_csv(file: IO[str], columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    writer = csv.writer(file)
    writer.writerow(columns)
    writer.writerows([_csv_cell(row.get(column)) for column in columns] for row in rows)


def _csv_cell(value: object) -> str:
    """One CSV cell: empty for null, JSON spelling for booleans and nested values."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _total(values: Iterable[object]) -> int | float:
    """The sum of the numbers among ``values`` (the payload allows only numbers and nulls)."""
    total: int | float = 0
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool):
            total += value
    return total


def _fields_in_order(records: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(field for record in records for field in record))
