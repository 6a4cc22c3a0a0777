"""Fixtures for the reports plugin: its settings, with the data dir in the test's tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rabbitworker_reports
from rabbitworker_reports import ReportSettings

ENV_PREFIX = "RABBITWORKER_REPORTS_"


@pytest.fixture(autouse=True)
def isolated_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No RABBITWORKER_REPORTS_* from the developer's shell, and a fresh ReportWriter."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    rabbitworker_reports.writer.cache_clear()
    yield
    rabbitworker_reports.writer.cache_clear()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., ReportSettings]:
    """Settings with the data dir in ``tmp_path``; keyword arguments override fields."""

    def make(**fields: Any) -> ReportSettings:
        return ReportSettings(**{"data_dir": tmp_path / "data", **fields})

    return make
