"""Serving an ASGI app (Starlette) with uvicorn inside an event loop someone else runs.

The host's metrics endpoint and the web console both use this: one HTTP stack, and no
thread or second loop. uvicorn normally takes over SIGINT/SIGTERM while it serves; the host
owns those signals (its graceful stop), so the embedded server leaves them alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The process that embeds us handles its own signals.
        yield


@dataclass
class RunningServer:
    """A started server: where it listens, and how to stop it."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def server_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    """uvicorn settings shared by our servers: our logging (no access log), no lifespan."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        # Live-update streams never end by themselves: give them a moment, then close.
        timeout_graceful_shutdown=3,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port``; raises ``OSError`` if it cannot be bound.

    Bound here rather than by uvicorn, which turns a bind error into ``sys.exit``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def start_server(app: ASGIApp, host: str, port: int) -> RunningServer:
    """Start serving ``app`` on ``host:port`` in the running loop; returns once it listens.

    Raises ``OSError`` when the address cannot be bound.
    """
    sock = bind(host, port)
    bound = int(sock.getsockname()[1])
    server = _EmbeddedServer(server_config(app, host, bound))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http {host}:{bound}")
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"the HTTP server on {host}:{bound} stopped while starting")
        await asyncio.sleep(0.01)
    return RunningServer(server, task, bound)
