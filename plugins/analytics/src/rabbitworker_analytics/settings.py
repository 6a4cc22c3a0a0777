"""The plugin's settings, read from ``RABBITWORKER_ANALYTICS_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PLUGIN = "analytics"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/rabbitworker/analytics``, i.e. ``~/.local/share/...`` by default."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rabbitworker" / PLUGIN


class AnalyticsSettings(BaseSettings):
    """Each field is the environment variable ``RABBITWORKER_ANALYTICS_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="RABBITWORKER_ANALYTICS_", env_ignore_empty=True, extra="ignore"
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the database lives unless `database` says otherwise. Created on "
        "demand. Default: ~/.local/share/rabbitworker/analytics (under $XDG_DATA_HOME if that "
        "is set).",
    )
    database: Path | None = Field(
        None,
        description="The SQLite database file events are stored in (created with its "
        "directory if missing). Default: <data_dir>/events.sqlite3.",
    )
    busy_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a write waits for another writer (another thread or host) to "
        "finish before it fails.",
    )

    @property
    def database_path(self) -> Path:
        """The database file to use."""
        return self.database or self.data_dir / "events.sqlite3"
