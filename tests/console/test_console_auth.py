"""Who may use the console: loopback without a token, the token (Bearer or sign-in) with
one, CSRF on every state change, and no password on any page."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from consoletools import start_console
from starlette.testclient import TestClient

from rabbitworker import QueueConfig
from rabbitworker.console.app import create_app
from rabbitworker.errors import PluginInfo
from rabbitworker.plugins import QueueRegistration
from rabbitworker.settings import ConsoleSettings, HostSettings

RunCli = Callable[..., subprocess.CompletedProcess[str]]
SECRET_URL = "amqp://ops:s3cret-pw@127.0.0.1:5672/prod"


async def _handler(message: dict[str, object]) -> None:
    return None


def client(token: str | None = None, host: str = "127.0.0.1") -> TestClient:
    registrations = [
        QueueRegistration(
            QueueConfig(name="a.q", routing_key="a", task_handlers={"t": _handler}),
            PluginInfo("p"),
        )
    ]
    app = create_app(
        HostSettings(amqp_url=SECRET_URL),
        ConsoleSettings(console_token=token, management_url="http://127.0.0.1:1"),  # type: ignore[arg-type]
        registrations,
    )
    return TestClient(app, base_url=f"http://{host}:9300")


def test_without_a_token_a_post_without_the_sessions_csrf_token_is_refused() -> None:
    console = client()
    console.get("/api/session")

    response = console.post("/api/dlqs/tasks.dlq/purge", json={"confirm": "tasks.dlq"})

    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]


def test_a_cross_origin_post_is_refused_even_with_the_csrf_token() -> None:
    console = client()
    csrf = console.get("/api/session").json()["csrf"]

    response = console.post(
        "/api/dlqs/nope.dlq/purge",
        json={},
        headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    )

    assert response.status_code == 403


def test_without_a_token_a_request_for_another_host_name_is_refused() -> None:
    # A page on another site that rebinds its DNS name to 127.0.0.1 reaches us under its name.
    assert client(host="evil.example").get("/api/session").status_code == 403


def test_the_session_cookie_is_http_only_and_same_site_strict() -> None:
    cookie = client().get("/api/session").headers["set-cookie"]

    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie


def test_no_password_reaches_a_page() -> None:
    console = client()
    session = console.get("/api/session")

    assert "s3cret-pw" not in session.text
    assert session.json()["amqp_url"] == "amqp://ops:****@127.0.0.1:5672/prod"
    assert "s3cret-pw" not in console.get("/").text


def test_with_a_token_everything_but_the_sign_in_page_needs_it() -> None:
    console = client(token="t0ken")

    assert console.get("/api/queues").status_code == 401
    page = console.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 401
    assert 'name="token"' in page.text
    assert console.get("/signin").status_code == 200
    assert (
        console.get("/api/topology.svg", headers={"Authorization": "Bearer t0ken"}).status_code
        == 200
    )
    assert (
        console.get("/api/topology.svg", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )


def test_signing_in_sets_a_session_that_needs_csrf_for_changes() -> None:
    console = client(token="t0ken")
    assert console.post("/signin", data={"token": "wrong"}).status_code == 401

    signed_in = console.post("/signin", data={"token": "t0ken"}, follow_redirects=False)
    assert signed_in.status_code == 303
    assert console.get("/api/topology.svg").status_code == 200
    csrf = console.get("/api/session").json()["csrf"]

    without = console.post("/api/dlqs/x.dlq/purge", json={})
    with_csrf = console.post("/api/dlqs/x.dlq/purge", json={}, headers={"X-CSRF-Token": csrf})
    assert without.status_code == 403
    assert with_csrf.status_code == 404  # past the guard: x.dlq is no installed queue's DLQ


def test_the_topology_svg_draws_exchange_queue_dlx_and_dlq() -> None:
    svg = client().get("/api/topology.svg").text

    for node in ("x:tasks", "q:a.q", "x:tasks.dlx", "q:tasks.dlq"):
        assert f'data-node="{node}"' in svg


def test_console_beyond_loopback_without_a_token_is_refused_with_exit_3(run_cli: RunCli) -> None:
    result = run_cli("console", "--host", "0.0.0.0")

    assert result.returncode == 3
    assert "RABBITWORKER_CONSOLE_TOKEN" in result.stderr


@pytest.mark.broker
def test_a_token_protected_console_process_answers_401_without_the_token_and_200_with_it(
    declared: str, probe_config: Path, tmp_path: Path
) -> None:
    console = start_console(declared, probe_config, tmp_path / "console.log", token="s3cr3t")
    try:
        refused = httpx.get(f"{console.url}/api/queues", timeout=10)
        wrong = httpx.get(
            f"{console.url}/api/queues", headers={"Authorization": "Bearer nope"}, timeout=10
        )
        accepted = httpx.get(
            f"{console.url}/api/queues", headers={"Authorization": "Bearer s3cr3t"}, timeout=10
        )
    finally:
        console.stop()

    assert (refused.status_code, wrong.status_code, accepted.status_code) == (401, 401, 200)
    assert [q["queue"] for q in accepted.json()["queues"]] == ["probe.q", "other.q", "typed.queue"]
