"""Fixtures for the analytics plugin: its settings, and a way to read its database back."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import rabbitworker_analytics
from rabbitworker_analytics import AnalyticsSettings

ENV_PREFIX = "RABBITWORKER_ANALYTICS_"


@pytest.fixture(autouse=True)
def isolated_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No RABBITWORKER_ANALYTICS_* from the developer's shell, and a fresh EventTracker."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    rabbitworker_analytics.tracker.cache_clear()
    yield
    rabbitworker_analytics.tracker.cache_clear()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., AnalyticsSettings]:
    """Settings with the data dir in ``tmp_path``; keyword arguments override fields."""

    def make(**fields: Any) -> AnalyticsSettings:
        return AnalyticsSettings(**{"data_dir": tmp_path / "data", **fields})

    return make


def query(database: Path, sql: str, *parameters: Any) -> list[dict[str, Any]]:
    """Rows of ``sql`` from a read-only connection, as dicts."""
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(sql, parameters)]


@pytest.fixture
def db() -> Callable[..., list[dict[str, Any]]]:
    """``db(path, sql, *parameters)``: query a database read-only."""
    return query
