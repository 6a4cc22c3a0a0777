"""Running the console: the loopback rule, then uvicorn in this process's loop."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import uvicorn
from loguru import logger

from rabbitworker.console.app import create_app
from rabbitworker.plugins import QueueRegistration
from rabbitworker.settings import ConsoleSettings, HostSettings
from rabbitworker.webserver import bind, server_config


class ConsoleRefusedError(Exception):
    """The console will not start with these settings; the message says what to change."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(console: ConsoleSettings) -> None:
    """Beyond loopback, anyone who can reach the port could replay and purge: a token is
    required there."""
    if console.token is None and not is_loopback(console.console_host):
        raise ConsoleRefusedError(
            f"refusing to serve the console on {console.console_host}: beyond loopback "
            "(127.0.0.1) it needs RABBITWORKER_CONSOLE_TOKEN, or anyone who can reach the "
            "port could replay and purge dead letters. Set RABBITWORKER_CONSOLE_TOKEN, or "
            "leave --host at 127.0.0.1."
        )


async def serve(
    settings: HostSettings,
    console: ConsoleSettings,
    registrations: Sequence[QueueRegistration],
) -> None:
    """Serve the console until SIGINT/SIGTERM (uvicorn's own signal handling)."""
    check_binding(console)
    app = create_app(settings, console, registrations)
    sock = bind(console.console_host, console.console_port)
    port = int(sock.getsockname()[1])
    config = server_config(app, console.console_host, port)
    server = uvicorn.Server(config)
    shown = f"[{console.console_host}]" if ":" in console.console_host else console.console_host
    logger.info(
        "console on http://{}:{}/ for {} ({})",
        shown,
        port,
        settings.masked_amqp_url,
        "token required" if console.token else "no token: loopback only",
    )
    await server.serve(sockets=[sock])
