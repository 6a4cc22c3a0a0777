"""The ``rabbitworker-host`` command.

Exit codes: 0 clean stop, 1 unexpected error, 2 usage error, 3 a plugin or the
configuration is at fault, 4 the broker cannot be reached or disagrees with the topology.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click
from loguru import logger
from pydantic import ValidationError

from rabbitworker.errors import (
    BrokerConnectionError,
    BrokerTopologyMismatchError,
    PluginError,
    RabbitworkerError,
    TopologyConflictError,
)
from rabbitworker.logs import secret_forms, setup_logging
from rabbitworker.plugins import HostPlugins, QueueRegistration, iter_plugin_rows
from rabbitworker.settings import HostSettings, url_password

EXIT_ERROR = 1
EXIT_CONFIG = 3
EXIT_BROKER = 4


def _fail(message: str, code: int) -> NoReturn:
    logger.error(message)
    sys.exit(code)


def _settings() -> HostSettings:
    try:
        settings = HostSettings()
    except ValidationError as exc:
        setup_logging()
        _fail(f"invalid RABBITWORKER_* setting: {exc}", EXIT_CONFIG)
    setup_logging(settings.log_level, secrets=secret_forms(url_password(settings.amqp_url)))
    return settings


def _guarded(action: Callable[[], Any]) -> Any:
    """Turn rabbitworker errors into one clear log line and a documented exit code."""
    try:
        return action()
    except PluginError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except BrokerTopologyMismatchError as exc:
        _fail(f"topology conflict with the broker: {exc}", EXIT_BROKER)
    except TopologyConflictError as exc:
        _fail(f"topology conflict between queues: {exc}", EXIT_CONFIG)
    except BrokerConnectionError as exc:
        _fail(str(exc), EXIT_BROKER)
    except RabbitworkerError as exc:
        _fail(str(exc), EXIT_ERROR)


def _load(settings: HostSettings) -> tuple[HostPlugins, list[QueueRegistration]]:
    plugins = HostPlugins.load(settings)
    return plugins, plugins.collect_queues()


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rabbitworker-host")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Run the RabbitMQ workers of every installed rabbitworker plugin.

    With no command, runs the host (same as `rabbitworker-host run`). Plugins are the
    installed distributions with a `rabbitworker.queues` entry point. Settings come from
    RABBITWORKER_* environment variables, e.g. RABBITWORKER_AMQP_URL.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@main.command()
def run() -> None:
    """Declare every plugin's queues and consume them until SIGTERM or SIGINT.

    On the first signal the host stops taking messages, lets the ones in flight finish
    (RABBITWORKER_SHUTDOWN_TIMEOUT, 30 s by default) and exits 0; a second signal stops
    at once. Unfinished messages stay unacknowledged and are delivered again.
    """
    settings = _settings()

    def start() -> None:
        from rabbitworker.host import WorkerHost

        plugins, registrations = _load(settings)
        for plugin in plugins.plugins:
            logger.info("plugin {}", plugin.describe())
        if not registrations:
            raise PluginError(
                plugins.plugins[0],
                "no plugin contributes a queue. Install one (pip install ./plugins/reports) or "
                "name a module with RABBITWORKER_PLUGINS.",
            )
        for registration in registrations:
            config = registration.config
            logger.info(
                "[{}] queue configured: routing key {!r}, prefetch {}, handlers {}",
                config.name,
                config.routing_key,
                config.prefetch_count,
                ", ".join(config.tasks),
            )
        host = WorkerHost(settings, plugins, registrations)
        logger.info("rabbitworker-host starting on {}", settings.masked_amqp_url)
        _serve(host.run())

    _guarded(start)


def _serve(main_coroutine: Coroutine[Any, Any, None]) -> None:
    """Like ``asyncio.run``, but never hangs on exit.

    A handler that ignores cancellation, or a plain ``def`` handler still running in its
    thread, cannot be stopped; their messages are unacknowledged already (the connection is
    closed), so once the host is done the process leaves without waiting for them.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    leftovers = True
    try:
        loop.run_until_complete(main_coroutine)
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=2))
        leftovers = any(not task.done() for task in pending) or any(
            thread.name.startswith("rabbitworker-handler") for thread in threading.enumerate()
        )
        if not leftovers:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    if leftovers:
        logger.warning("leaving handlers that did not stop behind; their messages are redelivered")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@main.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the queues as JSON on stdout (logs still go to stderr).",
)
def queues(as_json: bool) -> None:
    """List every installed plugin's queues, without connecting to the broker."""
    settings = _settings()
    _, registrations = _guarded(lambda: _load(settings))
    rows = iter_plugin_rows(registrations)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rabbitworker queues")
    for column in ("queue", "routing key", "exchange", "prefetch", "DLX → DLQ", "tasks", "plugin"):
        table.add_column(column)
    for row in rows:
        plugin = row["plugin"]
        dist = (
            f"{plugin['distribution']} {plugin['version'] or ''}".strip()
            if plugin["distribution"]
            else "-"
        )
        table.add_row(
            row["queue"],
            row["routing_key"],
            row["exchange"],
            str(row["prefetch_count"]),
            f"{row['dlx']} → {row['dlq']}",
            ", ".join(row["tasks"]),
            f"{plugin['name']} ({dist})",
        )
    Console(width=160).print(table)


@main.command("new-plugin")
@click.argument("name")
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the plugin's folder.",
)
def new_plugin(name: str, directory: Path) -> None:
    """Create a new plugin package NAME: one queue, one typed task, its tests, a README.

    Writes rabbitworker-NAME/ (pyproject with the entry point, src/rabbitworker_NAME/,
    tests/ using rabbitworker's pytest fixtures). Then: cd rabbitworker-NAME &&
    pip install -e '.[test]' && pytest.
    """
    from rabbitworker.scaffold import write_plugin

    setup_logging()
    try:
        root = write_plugin(name, directory)
    except ValueError as exc:
        _fail(str(exc), EXIT_ERROR)
    click.echo(f"created {root}")
    click.echo(f"next: cd {root} && pip install -e '.[test]' && pytest")
