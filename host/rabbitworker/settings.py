"""The host's settings, read from ``RABBITWORKER_*`` environment variables."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from yarl import URL

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"


def _split_names(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


NameList = Annotated[list[str], NoDecode]

#: Where the optional TOML settings file is looked for (its own env var, read first).
CONFIG_FILE_ENV = "RABBITWORKER_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "rabbitworker.toml"


def config_file() -> Path:
    """The TOML settings file: ``$RABBITWORKER_CONFIG_FILE``, else ``./rabbitworker.toml``."""
    return Path(os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))


class QueueOverride(BaseModel):
    """Per-deployment changes to one plugin queue; unset fields keep the plugin's value."""

    model_config = ConfigDict(extra="forbid")

    prefetch_count: int | None = Field(None, description="Messages handled at once.")
    max_retries: int | None = Field(None, description="Retries before dead-lettering.")
    retry_delays: list[float] | None = Field(None, description="Seconds before each retry.")
    handler_timeout: float | None = Field(None, description="Seconds a handler may run.")
    delivery_limit: int | None = Field(None, description="Redeliveries before dead-lettering.")
    max_priority: int | None = Field(None, description="x-max-priority of the queue.")
    message_ttl: float | None = Field(None, description="x-message-ttl, in seconds.")
    max_length: int | None = Field(None, description="x-max-length of the queue.")
    max_length_bytes: int | None = Field(None, description="x-max-length-bytes of the queue.")
    overflow: str | None = Field(None, description="x-overflow: what happens at a limit.")
    single_active_consumer: bool | None = Field(
        None, description="x-single-active-consumer: one consumer at a time."
    )

    def changes(self) -> dict[str, object]:
        return self.model_dump(exclude_none=True)


class _Settings(BaseSettings):
    """Where every group of rabbitworker settings is read from, in one place."""

    model_config = SettingsConfigDict(env_prefix="RABBITWORKER_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then ``RABBITWORKER_*`` variables, then the TOML file, then defaults."""
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return (init_settings, env_settings, toml)


class HostSettings(_Settings):
    """Everything the host can be told; each field is the env var ``RABBITWORKER_<NAME>``."""

    amqp_url: str = Field(
        DEFAULT_AMQP_URL,
        description="The broker to connect to, vhost included (amqp:// or amqps://); several "
        "nodes of one cluster separated by ';'. The host and publish_task connect to one and "
        "fail over to the others. Passwords never appear in logs or errors.",
    )
    heartbeat: int = Field(
        10,
        ge=0,
        description="AMQP heartbeat in seconds: a node that stops answering is given up "
        "after about three of these and the next node is tried (0 turns heartbeats off). A "
        "URL's own ?heartbeat= wins.",
    )
    shutdown_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds to let in-flight messages finish after SIGTERM/SIGINT; what is "
        "still running then is left unacknowledged and redelivered by the broker.",
    )
    log_level: str = Field(
        "INFO", description="Minimum level logged: TRACE, DEBUG, INFO, WARNING, ERROR."
    )
    message_log_level: str = Field(
        "INFO",
        description="Level of the line logged for every acked message. Dead letters, "
        "retries and messages left unacknowledged are always WARNING; the 'received' line "
        "is DEBUG. DEBUG keeps the acked lines out of an INFO log.",
    )
    plugins: NameList = Field(
        default_factory=list,
        description="Extra plugin modules to load by import path, comma-separated "
        "(like pytest -p); for plugins that are not installed as distributions.",
    )
    disable_plugin_autoload: bool = Field(
        False,
        description="Do not load plugins from the rabbitworker.queues entry-point group; "
        "only RABBITWORKER_PLUGINS.",
    )
    disabled_plugins: NameList = Field(
        default_factory=list,
        description="Entry-point names of installed plugins to skip, comma-separated.",
    )
    enabled_plugins: NameList = Field(
        default_factory=list,
        description="If set, only these installed plugins (entry-point names, "
        "comma-separated) are loaded.",
    )
    queues: dict[str, QueueOverride] = Field(
        default_factory=dict,
        description="Per-queue overrides of prefetch_count, max_retries, retry_delays, "
        "handler_timeout, delivery_limit and the queue arguments (max_priority, message_ttl, "
        "max_length, max_length_bytes, overflow, single_active_consumer), by queue name. "
        "As an env var, JSON: "
        '{"reports.queue": {"prefetch_count": 2}}; in the TOML file, [queues."reports.queue"].',
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text for people; json for one JSON object per line."
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve /metrics (Prometheus), /healthz and /readyz on this port; off "
        "when unset.",
    )
    metrics_host: str = Field("0.0.0.0", description="The address the metrics server binds.")
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for the broker at start-up before giving up."
    )
    reconnect_interval: float = Field(
        1.0,
        gt=0,
        description="Seconds before the first reconnection attempt after the broker "
        "connection is lost; doubled after each failed attempt.",
    )
    reconnect_interval_max: float = Field(
        30.0, gt=0, description="The longest wait between two reconnection attempts."
    )
    publish_timeout: float = Field(
        30.0, gt=0, description="Seconds publish_task waits for the broker's confirm."
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Bodies larger than this are dead-lettered (reason too-large) without "
        "being decoded.",
    )
    ledger_max_age_days: int = Field(
        7,
        ge=1,
        description="Days the redelivery ledger (the rabbitworker.ledger stream) keeps its "
        "notes of clean shutdowns and crashes; a message given back after longer counts "
        "from zero again.",
    )
    event_loop: Literal["auto", "asyncio"] = Field(
        "auto",
        description="auto: uvloop's event loop when it is installed (rabbitworker-host[uvloop]), "
        "asyncio's otherwise; asyncio: always asyncio's.",
    )
    sync_handler_threads: int | None = Field(
        None,
        ge=1,
        description="Threads for plain `def` handlers. Default: the sum of prefetch_count of "
        "the queues that have such handlers, so each can run as many as its prefetch.",
    )

    @field_validator("plugins", "disabled_plugins", "enabled_plugins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_names(value)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str) -> str:
        urls = [part.strip() for part in value.split(";") if part.strip()]
        if any(f",{scheme}://" in value for scheme in ("amqp", "amqps")):
            raise ValueError(
                "holds several URLs separated by ','; separate the nodes of a cluster with "
                "';' instead"
            )
        if not urls:
            raise ValueError("is empty; e.g. amqp://guest:guest@localhost:5672/")
        for number, url in enumerate(urls, start=1):
            try:
                scheme = URL(url).scheme
            except ValueError:
                scheme = ""
            if scheme not in ("amqp", "amqps"):
                # Never echo the value: it holds passwords.
                raise ValueError(
                    f"URL {number} of {len(urls)} must start with amqp:// or amqps://, e.g. "
                    "amqp://guest:guest@localhost:5672/ (several nodes: separate them with ';')"
                )
        return value

    @field_validator("log_level", "message_log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @property
    def amqp_urls(self) -> list[str]:
        """The broker nodes, one URL each."""
        return [part.strip() for part in self.amqp_url.split(";") if part.strip()]

    @property
    def masked_amqp_url(self) -> str:
        """The AMQP URL(s) with passwords replaced by ``****``, safe to log."""
        return ";".join(mask_url(url) for url in self.amqp_urls)


class ConsoleSettings(_Settings):
    """The web console's own settings (``rabbitworker-host console``); the broker it shows is
    the host's ``RABBITWORKER_AMQP_URL``."""

    console_host: str = Field(
        "127.0.0.1",
        description="The address the web console binds (--host). Anything but loopback needs "
        "RABBITWORKER_CONSOLE_TOKEN.",
    )
    console_port: int = Field(9300, ge=0, le=65535, description="The web console's port (--port).")
    console_token: SecretStr | None = Field(
        None,
        description="When set, every console request needs it: 'Authorization: Bearer "
        "<token>', or the sign-in page's session cookie. Required to bind beyond loopback.",
    )
    console_page_size: int = Field(
        50, ge=1, le=1000, description="Dead letters per page in the web console."
    )
    management_url: str = Field(
        "http://localhost:15672",
        description="RabbitMQ's management HTTP API, read by the web console for queue depths, "
        "consumers and rates; user and password from the AMQP URL unless this URL has its own.",
    )

    @property
    def token(self) -> str | None:
        """The console token in clear, for comparing; never shown."""
        return self.console_token.get_secret_value() if self.console_token else None


def mask_url(url: str) -> str:
    """Hide the password of a URL: ``amqp://guest:****@host/``."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<an unparsable URL>"
    if parsed.password is None:
        return url
    return str(parsed.with_password("****"))


def url_passwords(url: str) -> list[str]:
    """The passwords of a URL or ';'-separated URLs (decoded)."""
    passwords = []
    for part in url.split(";"):
        try:
            password = URL(part.strip()).password
        except ValueError:
            continue
        if password:
            passwords.append(password)
    return passwords


def url_password(url: str) -> str | None:
    """The password of the first URL that has one."""
    passwords = url_passwords(url)
    return passwords[0] if passwords else None


def describe_errors(error: ValidationError) -> str:
    """A settings error people can act on, without any value it was given: a URL setting
    holds passwords, so no input is ever echoed."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "settings"
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"RABBITWORKER_{where.upper()}: {message}")
    return "; ".join(lines)


#: Variables with the prefix that are not settings of the host itself.
_NOT_HOST_SETTINGS = ("RABBITWORKER_CONFIG_FILE", "RABBITWORKER_TEST_")


def unknown_variables(
    environ: Mapping[str, str], plugin_names: Iterable[str] = ()
) -> list[tuple[str, str | None]]:
    """``RABBITWORKER_*`` variables that no setting reads, each with the closest setting
    name (a did-you-mean), or ``None``. ``RABBITWORKER_<PLUGIN>_*`` belong to the plugin."""
    known = {
        f"RABBITWORKER_{name.upper()}"
        for name in (*HostSettings.model_fields, *ConsoleSettings.model_fields)
    }
    plugin_prefixes = tuple(
        f"RABBITWORKER_{name.upper().replace('-', '_').replace('.', '_')}_" for name in plugin_names
    )
    unknown = []
    for name in sorted(environ):
        if (
            not name.startswith("RABBITWORKER_")
            or name in known
            or name.startswith(_NOT_HOST_SETTINGS)
            or name.startswith(plugin_prefixes)
        ):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        unknown.append((name, close[0] if close else None))
    return unknown
