"""Fixtures of the console tests: the topology of the probe and typed plugins declared on
this test's vhost, a console process, and a headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from consoletools import PROBE_QUEUES, ConsoleProcess, run_async, start_console
from opstools import declare_like_the_host

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TYPED_QUEUE = {
    "name": "typed.queue",
    "routing_key": "typed",
    "max_retries": 1,
    "retry_delays": [0.2],
}


@pytest.fixture
def probe_config(tmp_path: Path) -> Path:
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(PROBE_QUEUES))
    return path


@pytest.fixture
def declared(amqp_url: str) -> str:
    """The console's queues, DLX and DLQ declared the way a host would; returns the URL."""
    run_async(declare_like_the_host(amqp_url, [*PROBE_QUEUES, TYPED_QUEUE]))
    return amqp_url


@pytest.fixture
def console(declared: str, probe_config: Path, tmp_path: Path) -> Iterator[ConsoleProcess]:
    """A ``rabbitworker-host console`` process on this test's vhost, without a token."""
    process = start_console(declared, probe_config, tmp_path / "console.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (never Playwright's own browser download).

    Module-scoped: Playwright's sync API keeps an event loop running in this thread while it
    is open, and the async tests that run after this module need the thread free of it."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        if os.environ.get("CI"):
            pytest.fail(
                f"{CHROMIUM} is missing in CI: .ci/run installs it (apt-get install chromium)"
            )
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI always runs these")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: object) -> Iterator[object]:
    context = chromium.new_context(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()
