"""The payload of each task, validated with pydantic.

Handlers validate the whole message (``{"task": ..., "payload": {...}}``) with the
``*Message`` models, so a :class:`pydantic.ValidationError` names the field by its path,
e.g. ``payload.rows``, and a message without a payload fails as ``payload: Field required``.
Unknown payload fields are refused, so a misspelled one is not silently ignored.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainValidator,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

#: A file name stem: no path separators, no leading dot, so it cannot leave its directory.
Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _scalar(value: object) -> object:
    if value is None or isinstance(value, str | int | float):
        return value
    raise ValueError(f"must be a string, a number, a boolean or null, not {type(value).__name__}")


#: One table cell. Checked by hand: a union would report one error per member type.
Cell = Annotated[str | int | float | bool | None, PlainValidator(_scalar)]


def _unique(names: list[str]) -> list[str]:
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"names a column more than once: {', '.join(duplicates)}")
    return names


class ReportPayload(BaseModel):
    """``generate_report``: a table of rows, with optional totals, as CSV or JSON."""

    model_config = ConfigDict(extra="forbid")

    report_id: Slug = Field(
        description="Names the file, <report_id>.<format>; generating it again replaces it."
    )
    title: str | None = Field(None, description="A title, kept in JSON reports.")
    columns: list[ColumnName] = Field(min_length=1, description="The columns, in order.")
    rows: list[dict[str, Cell]] = Field(
        description="The rows: column → value; a column a row lacks is left empty."
    )
    totals: list[str] = Field(
        default_factory=list, description="Numeric columns to sum into a totals row."
    )
    format: Literal["csv", "json"] = Field("csv", description="The file format.")

    @field_validator("columns")
    @classmethod
    def _unique_columns(cls, columns: list[str]) -> list[str]:
        return _unique(columns)

    @field_validator("rows")
    @classmethod
    def _rows_use_known_columns(
        cls, rows: list[dict[str, Cell]], info: ValidationInfo
    ) -> list[dict[str, Cell]]:
        known = set(info.data.get("columns", ()))
        if not known:
            return rows  # the columns are invalid already; that error says enough
        for index, row in enumerate(rows):
            unknown = sorted(set(row) - known)
            if unknown:
                raise ValueError(
                    f"row {index} has values for columns not listed in 'columns': "
                    f"{', '.join(unknown)}"
                )
        return rows

    @field_validator("totals")
    @classmethod
    def _totals_are_numeric_columns(cls, totals: list[str], info: ValidationInfo) -> list[str]:
        columns = info.data.get("columns")
        rows = info.data.get("rows")
        if columns is None or rows is None:
            return totals
        for column in _unique(totals):
            if column not in columns:
                raise ValueError(f"column {column!r} is not listed in 'columns'")
            for index, row in enumerate(rows):
                value = row.get(column)
                if isinstance(value, bool) or not isinstance(value, int | float | None):
                    raise ValueError(
                        f"column {column!r} cannot be summed: row {index} has {value!r}"
                    )
        return totals


class ExportPayload(BaseModel):
    """``export_data``: records written as one CSV, JSON or JSON Lines file."""

    model_config = ConfigDict(extra="forbid")

    dataset: Slug = Field(description="Names the directory the export goes to.")
    export_id: Slug | None = Field(
        None,
        description="Names the file, <export_id>.<format>; default: a new UTC timestamp. "
        "Exporting the same id again replaces the file.",
    )
    records: list[dict[str, JsonValue]] = Field(description="The records to export.")
    fields: list[ColumnName] | None = Field(
        None,
        min_length=1,
        description="Which fields to export, in order; default: every field, in the order "
        "they first appear.",
    )
    format: Literal["csv", "json", "jsonl"] = Field("csv", description="The file format.")

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, fields: list[str] | None) -> list[str] | None:
        return None if fields is None else _unique(fields)


class GenerateReportMessage(BaseModel):
    payload: ReportPayload


class ExportDataMessage(BaseModel):
    payload: ExportPayload
