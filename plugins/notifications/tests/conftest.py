"""Fixtures for the notifications plugin: its settings, a real SMTP server, a real HTTP gateway.

The servers are real (aiosmtpd on this test's event loop, stdlib ``http.server`` in a
thread) on free ports, so the plugin's SMTP and HTTP code runs exactly as in production.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

import rabbitworker_notifications
from rabbitworker_notifications import NotificationSettings

ENV_PREFIX = "RABBITWORKER_NOTIFICATIONS_"


@pytest.fixture(autouse=True)
def isolated_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No RABBITWORKER_NOTIFICATIONS_* from the developer's shell, and a fresh Notifier."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    rabbitworker_notifications.notifier.cache_clear()
    yield
    rabbitworker_notifications.notifier.cache_clear()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., NotificationSettings]:
    """Settings with the data dir in ``tmp_path``; keyword arguments override fields."""

    def make(**fields: Any) -> NotificationSettings:
        return NotificationSettings(**{"data_dir": tmp_path / "data", **fields})

    return make


# -- SMTP ------------------------------------------------------------------------------------


@dataclass
class Inbox:
    """What a real SMTP server received; ``refuse`` makes it refuse those recipients."""

    host: str
    port: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    credentials: tuple[str, str] | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 2.0.0 accepted"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and (_text(data.login), _text(data.password)) == self.credentials
        )
        # handled=False: aiosmtpd answers the client itself (535 on failure).
        return AuthResult(success=ok, handled=False)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _serve_smtp(inbox: Inbox, **options: Any) -> AsyncIterator[Inbox]:
    def protocol() -> SMTP:
        with warnings.catch_warnings():
            # Plain-text AUTH is what the credentials test wants; on 127.0.0.1 it is harmless.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return SMTP(inbox, hostname="mx.test", **options)

    server = await asyncio.get_running_loop().create_server(protocol, inbox.host, 0)
    inbox.port = server.sockets[0].getsockname()[1]
    try:
        yield inbox
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def smtp_server() -> AsyncIterator[Inbox]:
    """A real SMTP server (aiosmtpd) on a free port of 127.0.0.1."""
    async for inbox in _serve_smtp(Inbox("127.0.0.1")):
        yield inbox


@pytest.fixture
async def smtp_server_with_auth() -> AsyncIterator[Inbox]:
    """A real SMTP server that only accepts mail after AUTH as mailer / s3cret."""
    inbox = Inbox("127.0.0.1", credentials=("mailer", "s3cret"))
    async for served in _serve_smtp(
        inbox, authenticator=inbox.authenticate, auth_required=True, auth_require_tls=False
    ):
        yield served


# -- HTTP gateway ----------------------------------------------------------------------------


@dataclass
class Gateway:
    """A real HTTP server recording every POST; it answers ``status``."""

    host: str
    port: int
    status: int = 202
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class _GatewayHandler(BaseHTTPRequestHandler):
    server: _GatewayServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        gateway = self.server.gateway
        gateway.requests.append(
            {
                "path": self.path,
                "headers": dict(self.headers),
                "json": json.loads(body) if body else None,
            }
        )
        self.send_response(gateway.status)
        self.send_header("Content-Type", "application/json")
        reply = json.dumps({"status": gateway.status}).encode()
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""


class _GatewayServer(ThreadingHTTPServer):
    gateway: Gateway


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    """A real HTTP gateway on a free port of 127.0.0.1, served from a thread."""
    server = _GatewayServer(("127.0.0.1", 0), _GatewayHandler)
    host, port = server.server_address[:2]
    server.gateway = Gateway(str(host), int(port))
    thread = threading.Thread(
        target=server.serve_forever, args=(0.01,), name="test-gateway", daemon=True
    )
    thread.start()
    try:
        yield server.gateway
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
