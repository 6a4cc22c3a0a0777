"""The ``rabbitworker-host`` command.

Exit codes, the same for every subcommand: 0 success, 1 unexpected error, 2 usage error,
3 a plugin or the configuration is at fault, 4 the broker cannot be reached or has an
entity with other settings, 5 ``check --broker`` found the broker's topology missing or
different from the plugins'.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, cast

import aio_pika
import click
from loguru import logger
from pydantic import ValidationError

from rabbitworker.delays import MAX_DELAY
from rabbitworker.errors import (
    BrokerConnectionError,
    BrokerTopologyMismatchError,
    PluginError,
    RabbitworkerError,
    TopologyConflictError,
)
from rabbitworker.handlers import handlers_running_in_threads
from rabbitworker.logs import secret_forms, setup_logging
from rabbitworker.overrides import OverrideError, apply_overrides
from rabbitworker.plugins import HostPlugins, QueueRegistration, iter_plugin_rows
from rabbitworker.reload import follow_reloader, run_with_reload
from rabbitworker.settings import (
    HostSettings,
    describe_errors,
    unknown_variables,
    url_passwords,
)

EXIT_ERROR = 1
EXIT_CONFIG = 3
EXIT_BROKER = 4
EXIT_DRIFT = 5


def _fail(message: str, code: int) -> NoReturn:
    logger.error(message)
    sys.exit(code)


def _settings() -> HostSettings:
    try:
        settings = HostSettings()
    except ValidationError as exc:
        setup_logging()
        _fail(f"invalid setting: {describe_errors(exc)}", EXIT_CONFIG)
    setup_logging(
        settings.log_level,
        secrets=tuple(
            form for password in url_passwords(settings.amqp_url) for form in secret_forms(password)
        ),
        log_format=settings.log_format,
    )
    return settings


def _guarded(action: Callable[[], Any]) -> Any:
    """Turn rabbitworker errors into one clear log line and a documented exit code."""
    try:
        return action()
    except (PluginError, OverrideError) as exc:
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
    for name, close in unknown_variables(os.environ, (p.name for p in plugins.plugins)):
        hint = f"; did you mean {close}?" if close else ""
        logger.warning("{} is not a rabbitworker setting and is ignored{}", name, hint)
    return plugins, apply_overrides(plugins.collect_queues(), settings)


def _broker(action: Callable[[], Any], settings: HostSettings) -> Any:
    """Run a broker-touching action; an unreachable broker is exit code 4, not a traceback."""
    try:
        return action()
    except BrokerConnectionError as exc:
        _fail(str(exc), EXIT_BROKER)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPConnectionError) as exc:
        _fail(
            f"lost the connection to the broker ({settings.masked_amqp_url}): "
            f"{type(exc).__name__}: {exc}. Run the command again",
            EXIT_BROKER,
        )


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    # Piped output is not wrapped at 80 columns: it is read by people in logs and CI.
    Console(width=None if sys.stdout.isatty() else 250).print(table)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON on stdout (logs still go to stderr)."
)


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
@click.option(
    "--reload",
    is_flag=True,
    help="For development: run the host in a child process and restart it gracefully when "
    "a .py file of an editable-installed plugin, of the host, or of a RABBITWORKER_PLUGINS "
    "module changes.",
)
def run(reload: bool) -> None:
    """Declare every plugin's queues and consume them until SIGTERM or SIGINT.

    On the first signal the host stops taking messages, lets the ones in flight finish
    (RABBITWORKER_SHUTDOWN_TIMEOUT, 30 s by default) and exits 0; a second signal stops
    at once. Unfinished messages stay unacknowledged and are delivered again.
    """
    settings = _settings()
    if reload:
        sys.exit(run_with_reload(settings))

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
        host = WorkerHost(settings, plugins, registrations)
        follow_reloader(lambda: host.stopping)
        logger.info("rabbitworker-host starting on {}", settings.masked_amqp_url)
        _serve(host.run(), settings.event_loop)

    _guarded(start)


def _new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (``rabbitworker-host[uvloop]``) and not switched
    off with ``RABBITWORKER_EVENT_LOOP=asyncio``; asyncio's otherwise."""
    if kind != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            pass
        else:
            return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
    return asyncio.new_event_loop()


def _serve(main_coroutine: Coroutine[Any, Any, None], event_loop: str = "auto") -> None:
    """Like ``asyncio.run``, but never hangs on exit.

    A handler that ignores cancellation, or a plain ``def`` handler still running in its
    thread, cannot be stopped; their messages are unacknowledged already (the connection is
    closed), so once the host is done the process leaves without waiting for them.
    """
    loop = _new_event_loop(event_loop)
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
        leftovers = any(not task.done() for task in pending) or handlers_running_in_threads() > 0
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
        _echo_json(rows)
        return

    def value(row: dict[str, Any], field: str, unit: str = "") -> str:
        source = row["overrides"].get(field)
        shown = row[field]
        if isinstance(shown, list):
            shown = ", ".join(f"{d:g}s" for d in shown)
        else:
            shown = (f"{shown:g}" if isinstance(shown, float) else str(shown)) + unit
        return f"{shown} ({source})" if source else shown

    _table(
        "rabbitworker queues",
        [
            "queue",
            "routing key",
            "exchange",
            "prefetch",
            "retries",
            "timeout",
            "DLX → DLQ",
            "queue arguments",
            "tasks",
            "plugin",
        ],
        [
            [
                row["queue"],
                row["routing_key"],
                row["exchange"],
                value(row, "prefetch_count"),
                value(row, "max_retries"),
                value(row, "handler_timeout", "s"),
                f"{row['dlx']} → {row['dlq']}",
                _queue_arguments_label(row),
                ", ".join(row["tasks"]),
                _plugin_label(row["plugin"]),
            ]
            for row in rows
        ],
    )


def _queue_arguments_label(row: dict[str, Any]) -> str:
    """The queue type and the limits that are set, e.g. ``quorum, max_length 1000``."""
    parts = [row["queue_type"]]
    for name in ("max_priority", "message_ttl", "max_length", "max_length_bytes", "overflow"):
        if row[name] is not None:
            parts.append(
                f"{name} {row[name]:g}" if isinstance(row[name], float) else f"{name} {row[name]}"
            )
    if row["single_active_consumer"]:
        parts.append("single active consumer")
    parts.extend(f"{key}={value}" for key, value in row["arguments"].items())
    return ", ".join(parts)


def _plugin_label(plugin: dict[str, Any]) -> str:
    if not plugin["distribution"]:
        return str(plugin["name"])
    return f"{plugin['name']} ({plugin['distribution']} {plugin['version'] or ''})".strip()


@main.command()
@JSON_OPTION
def plugins(as_json: bool) -> None:
    """List the loaded plugins: distribution, version, and the queues and tasks of each."""
    settings = _settings()
    loaded, registrations = _guarded(lambda: _load(settings))
    rows = []
    for plugin in loaded.plugins:
        mine = [r.config for r in registrations if r.plugin == plugin]
        rows.append(
            {
                "name": plugin.name,
                "distribution": plugin.distribution,
                "version": plugin.version,
                "module": plugin.module,
                "queues": [config.name for config in mine],
                "tasks": sorted({task for config in mine for task in config.tasks}),
            }
        )
    if as_json:
        _echo_json(rows)
        return
    _table(
        "rabbitworker plugins",
        ["plugin", "distribution", "version", "queues", "tasks"],
        [
            [
                r["name"],
                r["distribution"] or "-",
                r["version"] or "-",
                ", ".join(r["queues"]),
                ", ".join(r["tasks"]),
            ]
            for r in rows
        ],
    )


@main.command()
@click.option("--broker", is_flag=True, help="Also compare with the live broker's topology.")
@JSON_OPTION
def check(broker: bool, as_json: bool) -> None:
    """Validate plugins and settings without consuming anything.

    Exit 0 when all is well, 3 when a plugin or setting is at fault. With --broker, also
    compares every wanted exchange and queue with the broker, reports queue depths,
    consumers and DLQ depths, and exits 4 if the broker is unreachable, 5 if something is
    missing or declared with other settings.
    """
    from rabbitworker.topology import plan_topology

    settings = _settings()
    _, registrations = _guarded(lambda: _load(settings))
    topology = _guarded(lambda: plan_topology(registrations))
    report: dict[str, Any] = {
        "plugins_ok": True,
        "queues": len(registrations),
        "exchanges": len(topology.exchanges),
    }
    if not broker:
        if as_json:
            _echo_json(report)
        else:
            click.echo(
                f"ok: {len(registrations)} queue(s) from the installed plugins are valid "
                f"({len(topology.exchanges)} exchange(s), {len(topology.queues)} queue(s) "
                "to declare)"
            )
        return
    from rabbitworker.brokercheck import compare

    statuses = _broker(lambda: asyncio.run(compare(settings.amqp_url, topology)), settings)
    drift = [s for s in statuses if s.status != "ok"]
    report["broker"] = [s.as_dict() for s in statuses]
    report["broker_ok"] = not drift
    if as_json:
        _echo_json(report)
    else:
        _table(
            f"broker topology at {settings.masked_amqp_url}",
            ["kind", "name", "role", "status", "messages", "consumers", "detail"],
            [
                [
                    s.kind,
                    s.name,
                    s.role,
                    s.status,
                    "" if s.messages is None else str(s.messages),
                    "" if s.consumers is None else str(s.consumers),
                    s.detail,
                ]
                for s in statuses
            ],
        )
    if drift:
        sys.exit(EXIT_DRIFT)


@main.command()
@click.argument("task")
@click.option("--routing-key", "-k", required=True, help="The queue's routing key.")
@click.option("--payload", help='The task\'s payload as JSON, e.g. \'{"to": "a@b.c"}\'.')
@click.option(
    "--payload-file", type=click.File("rb"), help="Read the payload JSON from a file (- = stdin)."
)
@click.option("--exchange", default="tasks", show_default=True, help="The exchange to publish to.")
@click.option(
    "--delay",
    type=click.FloatRange(min=0, max=MAX_DELAY),
    metavar="SECONDS",
    help="Wait this long in the broker before reaching the queue (whole seconds, up to 48 days).",
)
@click.option(
    "--priority",
    type=click.IntRange(min=0, max=255),
    help="The message's priority, for queues with max_priority.",
)
@JSON_OPTION
def publish(
    task: str,
    routing_key: str,
    payload: str | None,
    payload_file: Any,
    exchange: str,
    delay: float | None,
    priority: int | None,
    as_json: bool,
) -> None:
    """Publish TASK with a payload, persistent, and wait for the broker's confirm.

    When the task's handler declares a payload model, the payload is validated against it
    first (exit 3 on a mismatch, nothing sent). Prints the message id. With --delay, the
    message waits in the broker's delay queues and reaches its queue no sooner than that.
    """
    from rabbitworker.publish import TaskPublisher

    settings = _settings()
    if payload is not None and payload_file is not None:
        raise click.UsageError("give --payload or --payload-file, not both")
    raw = payload_file.read() if payload_file is not None else (payload or "{}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        _fail(f"the payload is not JSON: {exc}", EXIT_CONFIG)
    _, registrations = _guarded(lambda: _load(settings))
    targets = [
        r.config
        for r in registrations
        if r.config.exchange_name == exchange and r.config.routing_key == routing_key
    ]
    for config in targets:
        spec = config.handler_specs.get(task)
        model = spec.payload_model if spec else None
        if model is not None:
            try:
                model.model_validate(data)
            except ValidationError as exc:
                _fail(
                    f"payload does not match {model.__name__} of task {task!r}: {exc}", EXIT_CONFIG
                )
    if registrations and not any(task in config.task_handlers for config in targets):
        logger.warning(
            "no installed plugin handles task {!r} on routing key {!r}; it will be "
            "dead-lettered as unknown-task if a queue receives it",
            task,
            routing_key,
        )

    async def send() -> str:
        publisher = TaskPublisher(settings, role="rabbitworker-host publish")
        try:
            return await publisher.publish(
                {"task": task, "payload": data},
                routing_key,
                exchange_name=exchange,
                delay=delay,
                priority=priority,
            )
        finally:
            await publisher.close()

    message_id = _guarded(lambda: asyncio.run(send()))
    if as_json:
        _echo_json(
            {
                "message_id": message_id,
                "task": task,
                "routing_key": routing_key,
                "exchange": exchange,
                "delay": delay,
                "priority": priority,
            }
        )
    else:
        click.echo(message_id)


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead-letter queues."""


@dlq.command("show")
@click.argument("queue", default="tasks.dlq")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many.")
@JSON_OPTION
def dlq_show(queue: str, limit: int | None, as_json: bool) -> None:
    """Show the dead letters in QUEUE (default tasks.dlq), oldest first.

    For each: task, source queue, reason, attempts, time, message id and body. The DLQ is
    left exactly as it was (nothing removed or reordered).
    """
    from rabbitworker import dlq as dead_letters

    settings = _settings()
    letters = _dlq_call(lambda: dead_letters.show(settings.amqp_url, queue, limit), settings)
    if as_json:
        _echo_json([letter.as_dict() for letter in letters])
        return
    _table(
        f"{queue}: {len(letters)} dead letter(s) shown",
        [
            "#",
            "task",
            "from queue",
            "reason",
            "attempts",
            "dead-lettered at",
            "message id",
            "error / body",
        ],
        [
            [
                str(letter.position),
                letter.task or "-",
                letter.source_queue or "-",
                letter.reason or "-",
                "" if letter.attempts is None else str(letter.attempts),
                letter.dead_lettered_at or "-",
                letter.message_id or "-",
                (letter.error + "\n" if letter.error else "")
                + letter.body.decode("utf-8", "replace")[:200],
            ]
            for letter in letters
        ],
    )


@dlq.command("replay")
@click.argument("queue", default="tasks.dlq")
@click.option("--task", help="Only dead letters of this task.")
@click.option("--from-queue", "--queue", "source", help="Only those that failed on this queue.")
@click.option("--limit", type=click.IntRange(min=1), help="Replay at most this many.")
@JSON_OPTION
def dlq_replay(
    queue: str, task: str | None, source: str | None, limit: int | None, as_json: bool
) -> None:
    """Send dead letters from QUEUE back to the queue each came from.

    A message leaves the DLQ only after the broker confirmed its republish; one whose
    queue is missing stays in the DLQ. Exit 1 if any could not be replayed.
    """
    from rabbitworker import dlq as dead_letters

    settings = _settings()
    report = _dlq_call(
        lambda: dead_letters.replay(settings.amqp_url, queue, task=task, queue=source, limit=limit),
        settings,
    )
    if as_json:
        _echo_json(
            {
                "replayed": report.replayed,
                "skipped": report.skipped,
                "failed": report.failed,
                "problems": report.problems,
            }
        )
    else:
        click.echo(
            f"replayed {report.replayed}, left {report.skipped} (not selected), "
            f"failed {report.failed}"
        )
        for problem in report.problems:
            click.echo(f"  {problem}")
    if report.failed:
        sys.exit(EXIT_ERROR)


@dlq.command("purge")
@click.argument("queue", default="tasks.dlq")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(queue: str, yes: bool) -> None:
    """Delete every message in QUEUE for good (asks first unless --yes)."""
    from rabbitworker import dlq as dead_letters

    settings = _settings()
    if not yes:
        click.confirm(f"Delete every message in {queue} on {settings.masked_amqp_url}?", abort=True)
    count = _dlq_call(lambda: dead_letters.purge(settings.amqp_url, queue), settings)
    click.echo(f"purged {count} message(s) from {queue}")


def _dlq_call(make: Callable[[], Coroutine[Any, Any, Any]], settings: HostSettings) -> Any:
    try:
        return _broker(lambda: asyncio.run(make()), settings)
    except LookupError as exc:
        _fail(str(exc), EXIT_CONFIG)


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "text"]),
    default="text",
    show_default=True,
    help="mermaid and dot render as a picture (GitHub shows mermaid).",
)
def topology(fmt: str) -> None:
    """Draw exchanges → queues → DLX → DLQ of the installed plugins, without a broker."""
    from rabbitworker.topology import plan_topology, render

    settings = _settings()
    _, registrations = _guarded(lambda: _load(settings))
    plan = _guarded(lambda: plan_topology(registrations))
    click.echo(render(plan, registrations, fmt))


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "yaml"]),
    default="json",
    show_default=True,
    help="The document's format.",
)
def asyncapi(fmt: str) -> None:
    """Print an AsyncAPI 3 document of the installed plugins' queues and tasks.

    Each queue is a channel with its AMQP binding, each task a message with its payload's
    JSON Schema. No broker is needed; passwords never appear in it.
    """
    from rabbitworker.asyncapi import document

    settings = _settings()
    _, registrations = _guarded(lambda: _load(settings))
    data = document(registrations, settings.amqp_urls)
    if fmt == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
    else:
        _echo_json(data)


@main.command()
@click.option("--host", help="Address to bind (default RABBITWORKER_CONSOLE_HOST, 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to serve on (default RABBITWORKER_CONSOLE_PORT, 9300).",
)
def console(host: str | None, port: int | None) -> None:
    """Serve the web console: queues, dead letters (browse, filter, replay, edit, purge),
    the topology, live.

    Needs only AMQP and the management API (RABBITWORKER_MANAGEMENT_URL). Binds 127.0.0.1
    unless told otherwise; any other address is refused (exit 3) without
    RABBITWORKER_CONSOLE_TOKEN, which, when set, every request must carry.
    """
    from rabbitworker.console.server import ConsoleRefusedError, check_binding, serve
    from rabbitworker.settings import ConsoleSettings

    settings = _settings()
    overrides = {
        name: value
        for name, value in (("console_host", host), ("console_port", port))
        if value is not None
    }
    try:
        console_settings = ConsoleSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        _fail(f"invalid setting: {describe_errors(exc)}", EXIT_CONFIG)
    try:
        check_binding(console_settings)
    except ConsoleRefusedError as exc:
        _fail(str(exc), EXIT_CONFIG)
    _, registrations = _guarded(lambda: _load(settings))
    try:
        asyncio.run(serve(settings, console_settings, registrations))
    except OSError as exc:
        _fail(f"cannot serve the console: {exc}", EXIT_ERROR)


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
