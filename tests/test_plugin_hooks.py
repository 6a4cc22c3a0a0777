"""How the host calls plugins' hooks, and which implementations it refuses at load time.

Pure: plugins are small objects and modules registered in-process; no broker. (A faulty
plugin stopping a real host process: test_plugin_faults.py.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from loguru import logger

from rabbitworker import PluginHookError, QueueConfig, hookimpl, hookspecs
from rabbitworker.errors import PluginInfo
from rabbitworker.events import Delivery, Outcome, Settlement
from rabbitworker.plugins import NO_CONTEXT, HostPlugins, activate, active
from rabbitworker.scaffold import write_plugin
from rabbitworker.settings import HostSettings
from rabbitworker.testing import _OutcomeRecorder

DELIVERY = Delivery(queue="q", task="t", message_id="m-1", redelivered=False, headers={})
OUTCOME = Outcome(settlement=Settlement.ACKED, duration=0.01)


def info(name: str) -> PluginInfo:
    return PluginInfo(name=name, distribution=f"rabbitworker-{name}", version="1.2.3")


def module_plugin(name: str, **functions: Callable[..., Any]) -> types.ModuleType:
    """A plugin module, the way an entry point or RABBITWORKER_PLUGINS hands it over."""
    module = types.ModuleType(name)
    for function_name, function in functions.items():
        setattr(module, function_name, function)
    return module


async def greet(message: dict[str, Any]) -> None:
    pass


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    return [QueueConfig("hooks.q", "hooks", {"greet": greet})]


class Recorder:
    """Appends its name to ``calls`` from every sync hook."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def rabbitworker_message_received(self, delivery: Delivery) -> None:
        self.calls.append(self.name)

    def rabbitworker_message_settled(self, delivery: Delivery, outcome: Outcome) -> None:
        self.calls.append(self.name)

    def rabbitworker_connection_changed(self, connected: bool, detail: str) -> None:
        self.calls.append(self.name)


def recorder(name: str, calls: list[str], **marks: bool) -> object:
    """A Recorder whose hooks carry ``@hookimpl(**marks)`` (tryfirst, trylast)."""
    marker = hookimpl(**marks)
    hooks = {
        hook: marker(getattr(Recorder, hook))
        for hook in (
            "rabbitworker_message_received",
            "rabbitworker_message_settled",
            "rabbitworker_connection_changed",
        )
    }
    return type(f"Recorder_{name}", (Recorder,), hooks)(name, calls)


def refusal(plugin: object, name: str = "faulty") -> str:
    """Register ``plugin`` and return the PluginHookError's message."""
    with pytest.raises(PluginHookError) as raised:
        HostPlugins.select().register(plugin, info(name))
    message = str(raised.value)
    assert info(name).describe() in message
    return message


# -- order: pluggy's, tryfirst / trylast honoured ------------------------------------------


def test_a_tryfirst_received_hook_runs_before_one_loaded_earlier() -> None:
    calls: list[str] = []
    plugins = HostPlugins.select()
    plugins.register(recorder("early", calls), info("early"))
    plugins.register(recorder("first", calls, tryfirst=True), info("first"))

    plugins.message_hooks().received(DELIVERY)

    assert calls == ["first", "early"]


def test_a_trylast_settled_hook_runs_after_one_loaded_later() -> None:
    calls: list[str] = []
    plugins = HostPlugins.select()
    plugins.register(recorder("last", calls, trylast=True), info("last"))
    plugins.register(recorder("later", calls), info("later"))

    plugins.message_hooks().settled(DELIVERY, OUTCOME)

    assert calls == ["later", "last"]


def test_per_message_hooks_run_in_the_order_pluggy_itself_calls_them() -> None:
    marks: list[dict[str, bool]] = [{}, {"trylast": True}, {"tryfirst": True}, {}, {}]
    facade_calls: list[str] = []
    plugins = HostPlugins.select()
    pluggy_calls: list[str] = []
    reference = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    reference.add_hookspecs(hookspecs)
    for index, mark in enumerate(marks):
        plugins.register(recorder(f"p{index}", facade_calls, **mark), info(f"p{index}"))
        reference.register(recorder(f"p{index}", pluggy_calls, **mark), name=f"p{index}")

    plugins.message_hooks().received(DELIVERY)
    reference.hook.rabbitworker_message_received(delivery=DELIVERY)

    assert facade_calls == pluggy_calls


def test_state_hooks_honour_tryfirst_too() -> None:
    calls: list[str] = []
    plugins = HostPlugins.select()
    plugins.register(recorder("early", calls), info("early"))
    plugins.register(recorder("first", calls, tryfirst=True), info("first"))

    plugins.connection_changed(connected=True, detail="up")

    assert calls == ["first", "early"]


# -- isolation: one plugin's failure is its own --------------------------------------------


class Raising:
    @hookimpl(tryfirst=True)
    def rabbitworker_message_received(self, delivery: Delivery) -> None:
        raise RuntimeError("observer broke")


def test_a_raising_received_hook_is_logged_naming_its_plugin_and_the_others_still_run() -> None:
    calls: list[str] = []
    plugins = HostPlugins.select()
    plugins.register(recorder("healthy", calls), info("healthy"))
    plugins.register(Raising(), info("raising"))
    capture_logs: list[str] = []
    sink = logger.add(capture_logs.append, format="{message}")

    try:
        plugins.message_hooks().received(DELIVERY)
    finally:
        logger.remove(sink)

    assert calls == ["healthy"]
    assert any(info("raising").describe() in line and "raised" in line for line in capture_logs)


@pytest.mark.parametrize("style", ["hookwrapper", "wrapper"])
def test_a_wrapper_on_a_per_message_hook_is_refused_at_load_time(style: str) -> None:
    @hookimpl(**{style: True})
    def rabbitworker_message_settled(delivery: Delivery, outcome: Outcome) -> Iterator[None]:
        yield

    message = refusal(
        module_plugin(
            "wrapping",
            rabbitworker_queues=rabbitworker_queues,
            rabbitworker_message_settled=rabbitworker_message_settled,
        )
    )

    assert "rabbitworker_message_settled" in message
    assert "wrappers" in message
    assert "not supported" in message
    assert "tryfirst" in message


# -- context hooks: entered around a handler call or a publish --------------------------


class Entering:
    """Returns a context manager from both context hooks that records what happens to it."""

    def __init__(self, name: str, calls: list[str], *, fail: str | None = None) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        if self.fail == "enter":
            raise RuntimeError("enter broke")
        self.calls.append(f"enter {self.name}")
        try:
            yield
        except BaseException as exc:
            self.calls.append(f"exit {self.name} with {type(exc).__name__}")
            if self.fail == "swallow":
                return  # a context manager that would swallow the exception
            raise
        else:
            self.calls.append(f"exit {self.name}")
        if self.fail == "exit":
            raise RuntimeError("exit broke")

    @hookimpl
    def rabbitworker_handler_context(self, delivery: Delivery) -> Any:
        if self.fail == "call":
            raise RuntimeError("hook broke")
        return self._context()

    @hookimpl
    def rabbitworker_publish_context(self, headers: dict[str, Any]) -> Any:
        headers[self.name] = "added"
        return self._context()


def test_context_hooks_without_implementations_cost_one_shared_nullcontext() -> None:
    hooks = HostPlugins().message_hooks()

    assert hooks.handler_context(DELIVERY) is NO_CONTEXT
    assert hooks.publish_context("tasks", "rk", "m-1", {}) is NO_CONTEXT


def test_context_managers_are_entered_in_pluggy_order_and_exited_in_reverse() -> None:
    calls: list[str] = []
    plugins = HostPlugins()
    plugins.register(Entering("early", calls), info("early"))
    plugins.register(Entering("later", calls), info("later"))

    with plugins.message_hooks().handler_context(DELIVERY):
        calls.append("handler")

    assert calls == ["enter later", "enter early", "handler", "exit early", "exit later"]


def test_the_handlers_exception_reaches_every_exit_and_cannot_be_swallowed() -> None:
    calls: list[str] = []
    plugins = HostPlugins()
    plugins.register(Entering("swallower", calls, fail="swallow"), info("swallower"))
    plugins.register(Entering("observer", calls), info("observer"))

    contexts = plugins.message_hooks().handler_context(DELIVERY)
    with pytest.raises(ValueError, match="handler broke"), contexts:
        raise ValueError("handler broke")

    assert calls[2:] == ["exit swallower with ValueError", "exit observer with ValueError"]


@pytest.mark.parametrize("where", ["call", "enter", "exit"])
def test_a_raising_context_hook_is_logged_naming_its_plugin_and_the_others_still_run(
    where: str,
) -> None:
    calls: list[str] = []
    plugins = HostPlugins()
    plugins.register(Entering("healthy", calls), info("healthy"))
    plugins.register(Entering("faulty", calls, fail=where), info("faulty"))
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")

    try:
        with plugins.message_hooks().handler_context(DELIVERY):
            calls.append("handler")
    finally:
        logger.remove(sink)

    assert [c for c in calls if "healthy" in c or c == "handler"] == [
        "enter healthy",
        "handler",
        "exit healthy",
    ]
    assert any(
        info("faulty").describe() in line and "rabbitworker_handler_context" in line
        for line in lines
    )


def test_a_publish_context_may_add_headers_before_the_message_is_sent() -> None:
    calls: list[str] = []
    plugins = HostPlugins()
    plugins.register(Entering("tracer", calls), info("tracer"))
    headers: dict[str, Any] = {"kept": 1}

    with plugins.message_hooks().publish_context("tasks", "rk", "m-1", headers):
        calls.append("publish")

    assert headers == {"kept": 1, "tracer": "added"}
    assert calls == ["enter tracer", "publish", "exit tracer"]


def test_outside_a_host_publishes_go_through_the_builtins_and_a_host_replaces_them() -> None:
    previous = activate(None)
    try:
        assert [p.name for p in active().plugins][:1] == ["rabbitworker.messagelog"]
        mine = HostPlugins()
        activate(mine)
        assert active() is mine
    finally:
        activate(previous)


# -- async def where the host does not await -----------------------------------------------


async def received(delivery: Delivery) -> None:
    pass


async def settled(delivery: Delivery, outcome: Outcome) -> None:
    pass


async def connection_changed(connected: bool, detail: str) -> None:
    pass


async def consumer_changed(queue: str, consuming: bool, detail: str) -> None:
    pass


async def handler_context(delivery: Delivery) -> None:
    pass


async def publish_context(
    exchange: str, routing_key: str, message_id: str, headers: dict[str, Any]
) -> None:
    pass


ASYNC_REFUSED = {
    "rabbitworker_message_received": received,
    "rabbitworker_message_settled": settled,
    "rabbitworker_connection_changed": connection_changed,
    "rabbitworker_consumer_changed": consumer_changed,
    "rabbitworker_handler_context": handler_context,
    "rabbitworker_publish_context": publish_context,
}


@pytest.mark.parametrize("hook", sorted(ASYNC_REFUSED))
def test_an_async_def_on_a_hook_called_synchronously_is_refused_at_load_time(hook: str) -> None:
    plugin = module_plugin("asyncy", **{hook: hookimpl(ASYNC_REFUSED[hook])})

    message = refusal(plugin)

    assert hook in message
    assert "must be a plain def; it is called on the event loop for every" in message


def test_an_async_def_received_hook_says_it_runs_for_every_message() -> None:
    plugin = module_plugin("asyncy", rabbitworker_message_received=hookimpl(received))

    message = refusal(plugin)

    assert "must be a plain def; it is called on the event loop for every message" in message


async def test_async_lifecycle_hooks_are_accepted_and_awaited() -> None:
    ran: list[str] = []

    @hookimpl
    async def rabbitworker_startup(settings: HostSettings) -> None:
        ran.append("startup")

    @hookimpl
    async def rabbitworker_shutdown(settings: HostSettings) -> None:
        ran.append("shutdown")

    plugin = module_plugin(
        "lifecycle",
        rabbitworker_startup=rabbitworker_startup,
        rabbitworker_shutdown=rabbitworker_shutdown,
    )
    plugins = HostPlugins.select()
    plugins.register(plugin, info("lifecycle"))
    await plugins.startup(HostSettings())
    await plugins.shutdown(HostSettings())

    assert ran == ["startup", "shutdown"]


# -- hooks that would silently never run ---------------------------------------------------


def test_a_hook_function_without_hookimpl_is_refused_saying_how_to_fix() -> None:
    def rabbitworker_queues() -> list[QueueConfig]:
        return []

    message = refusal(module_plugin("undecorated", rabbitworker_queues=rabbitworker_queues))

    assert "rabbitworker_queues" in message
    assert "decorate it with @rabbitworker.hookimpl" in message


def test_queues_command_refuses_an_undecorated_plugin_instead_of_losing_its_queues(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = run_cli("queues", RABBITWORKER_PLUGINS="probe_plugin,rw_undecorated_plugin")

    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = [line for line in result.stderr.splitlines() if "| ERROR" in line]
    assert "'rw_undecorated_plugin'" in line
    assert "rabbitworker_queues" in line
    assert "decorate it with @rabbitworker.hookimpl" in line


def test_a_plugin_module_with_no_hook_at_all_is_refused() -> None:
    message = refusal(module_plugin("empty", helper=lambda: None))

    assert "implements no rabbitworker hook" in message
    assert "rabbitworker_queues()" in message


def test_a_plugin_named_in_rabbitworker_plugins_without_hooks_stops_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rw_hookless_plugin.py").write_text("def queues():\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(PluginHookError) as raised:
        HostPlugins.load(HostSettings(plugins=["rw_hookless_plugin"], disable_plugin_autoload=True))

    assert "'rw_hookless_plugin'" in str(raised.value)
    assert "implements no rabbitworker hook" in str(raised.value)


def test_a_misspelled_decorated_hook_is_refused_naming_it_and_the_real_hooks() -> None:
    @hookimpl
    def rabbitworker_queue() -> list[QueueConfig]:
        return []

    message = refusal(module_plugin("typo", rabbitworker_queue=rabbitworker_queue))

    assert "rabbitworker_queue()" in message
    assert "misspelled" in message
    assert "rabbitworker_queues" in message


def test_a_misspelled_specname_is_refused() -> None:
    @hookimpl(specname="rabbitworker_queus")
    def queues() -> list[QueueConfig]:
        return []

    message = refusal(module_plugin("typo", queues=queues))

    assert "rabbitworker_queus" in message
    assert "misspelled" in message


def test_a_misspelled_hook_without_hookimpl_is_refused() -> None:
    def rabbitworker_queue() -> list[QueueConfig]:
        return []

    plugin = module_plugin(
        "typo", rabbitworker_queues=rabbitworker_queues, rabbitworker_queue=rabbitworker_queue
    )

    message = refusal(plugin)

    assert "rabbitworker_queue()" in message
    assert "misspelled" in message


def test_a_refused_plugin_is_not_left_half_registered() -> None:
    plugins = HostPlugins.select()
    plugin = module_plugin("typo", rabbitworker_queues=rabbitworker_queues, rabbitworker_x=greet)

    with pytest.raises(PluginHookError):
        plugins.register(plugin, info("typo"))

    assert "typo" not in [p.name for p in plugins.plugins]
    assert plugins.collect_queues() == []


def test_the_builtins_and_the_testing_recorder_register_cleanly() -> None:
    plugins = HostPlugins.load(HostSettings(disable_plugin_autoload=True, metrics_port=0))
    plugins.register(_OutcomeRecorder(), info("recorder"))

    assert [p.name for p in plugins.plugins] == [
        "rabbitworker.messagelog",
        "rabbitworker.tracing",
        "rabbitworker.metrics",
        "recorder",
    ]


# -- the pytest plugin without pytest-asyncio ----------------------------------------------


@pytest.mark.parametrize("importable", [True, False], ids=["disabled", "not-installed"])
def test_generated_plugin_tests_without_pytest_asyncio_say_what_to_install(
    tmp_path: Path, importable: bool
) -> None:
    plugin = write_plugin("billing", tmp_path)

    if importable:
        result = run_pytest(plugin, "-p", "no:asyncio")
    else:
        # Not installed means no pytest11 entry point either: only ours, named explicitly.
        result = run_pytest(
            plugin,
            "-p",
            "rabbitworker.testing",
            env={**without_pytest_asyncio(tmp_path), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        )

    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "pip install 'rabbitworker-host[testing]'" in result.stderr
    assert "test_greet_is_acked" in result.stderr
    assert "AssertionError" not in output
    assert "INTERNALERROR" not in output


def test_a_session_not_using_the_fixtures_runs_without_pytest_asyncio(tmp_path: Path) -> None:
    (tmp_path / "test_other.py").write_text("def test_other():\n    assert True\n")

    result = run_pytest(tmp_path, "-p", "no:asyncio")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def without_pytest_asyncio(root: Path) -> dict[str, str]:
    """An environment in which ``import pytest_asyncio`` fails, as if it were not installed."""
    shim = root / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['pytest_asyncio'] = None\n")
    return {"PYTHONPATH": str(shim)}


def run_pytest(
    cwd: Path, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *arguments],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
