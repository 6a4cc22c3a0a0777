"""The plugin's settings, read from ``RABBITWORKER_REPORTS_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PLUGIN = "reports"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/rabbitworker/reports``, i.e. ``~/.local/share/...`` by default."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rabbitworker" / PLUGIN


class ReportSettings(BaseSettings):
    """Each field is the environment variable ``RABBITWORKER_REPORTS_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="RABBITWORKER_REPORTS_", env_ignore_empty=True, extra="ignore"
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the files are written: reports in <data_dir>/reports, exports in "
        "<data_dir>/exports/<dataset>. Created on demand. Default: "
        "~/.local/share/rabbitworker/reports (under $XDG_DATA_HOME if that is set).",
    )

    @property
    def reports_dir(self) -> Path:
        """Where ``generate_report`` writes ``<report_id>.csv`` / ``.json``."""
        return self.data_dir / "reports"

    @property
    def exports_dir(self) -> Path:
        """Where ``export_data`` writes ``<dataset>/<export_id>.<format>``."""
        return self.data_dir / "exports"
