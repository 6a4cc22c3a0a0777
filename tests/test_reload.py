"""``rabbitworker-host run --reload``: an edit to an editable-installed plugin restarts the
host gracefully, once; a broken edit leaves the reloader waiting for the next one.

The broker tests share one throwaway venv (built once for the module) with three plugins:
``rwtest-reload`` installed editable the default hatchling way (its ``src`` on ``sys.path``)
and edited by the tests, ``rwtest-reload-exact`` installed editable with hatchling's
``dev-mode-exact`` (an import hook maps the module), and ``rwtest-reload-copy`` installed as
a copy. The edited plugin appends what happens to the events file, with its version and pid.
"""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import pytest
from brokertools import SUPPORT, AmqpClient, HostProcess, async_wait_for, wait_for
from loguru import logger
from venvs import HOST_SOURCE, PluginEnv

from rabbitworker.reload import (
    InstalledSource,
    NamedModule,
    WatchPlan,
    child_command,
    describe_changes,
    exit_code,
    forget_bytecode,
    is_editable,
    log_plan,
    watch_plan,
)

#: The edited plugin, at ``version``. Versions are all two characters long, so an edit keeps
#: the file's size: Python would then trust the old bytecode within the same second, unless
#: the reloader removes it.
RELOAD_PLUGIN = """\
import asyncio
import json
import os

from rabbitworker import QueueConfig, hookimpl

VERSION = {version!r}


def record(event, **fields):
    line = json.dumps({{"event": event, "version": VERSION, "pid": os.getpid(), **fields}})
    fd = os.open(os.environ["PROBE_EVENTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


record("imported")


async def handle(message):
    payload = message["payload"]
    record("start", id=payload["id"])
    await asyncio.sleep(payload.get("sleep", 0))
    record("end", id=payload["id"])


@hookimpl
def rabbitworker_queues():
    return [QueueConfig("reload.q", "reload", {{"record": handle}})]


@hookimpl
def rabbitworker_shutdown(settings):
    record("stopped")
"""

BROKEN_PLUGIN = "from rabbitworker import hookimpl\n\n\ndef rabbitworker_queues(:\n"


@dataclass
class ReloadEnv:
    plugins: PluginEnv
    #: The edited plugin's module file, and the directories the editable installs put it in.
    source: Path
    plain_src: Path
    exact_package: Path


@pytest.fixture(scope="module")
def reload_env(tmp_path_factory: pytest.TempPathFactory) -> ReloadEnv:
    plugins = PluginEnv.create(tmp_path_factory.mktemp("reload"))
    plain = plugins.build(
        "rwtest-reload",
        entry_point="reload",
        queue="unused",
        source=RELOAD_PLUGIN.format(version="v1"),
    )
    exact = plugins.build(
        "rwtest-reload-exact",
        entry_point="reload_exact",
        queue="exact.q",
        routing_key="exact",
        dev_mode_exact=True,
    )
    copy = plugins.build(
        "rwtest-reload-copy", entry_point="reload_copy", queue="copy.q", routing_key="copy"
    )
    plugins.install(plain, exact, editable=True)
    plugins.install(copy)
    return ReloadEnv(
        plugins,
        source=plain / "src" / "rwtest_reload" / "__init__.py",
        plain_src=plain / "src",
        exact_package=exact / "src" / "rwtest_reload_exact",
    )


def edit(source: Path, text: str, *, atomic: bool = False) -> None:
    """Save ``text`` as an editor would: in place, or (``atomic``) written beside and
    renamed over the file, as vim and most IDEs do."""
    if not atomic:
        source.write_text(text)
        return
    temporary = source.with_name(source.name + ".saving")
    temporary.write_text(text)
    os.replace(temporary, source)


@pytest.fixture
def plugin_source(reload_env: ReloadEnv) -> Path:
    """The edited plugin back at v1, alone in its package, without the bytecode an
    earlier test compiled."""
    for path in reload_env.source.parent.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path != reload_env.source:
            path.unlink()
    reload_env.source.write_text(RELOAD_PLUGIN.format(version="v1"))
    return reload_env.source


def child_pids(host: HostProcess) -> list[int]:
    """The host processes the reloader started, in order, from its log."""
    marker = "reload: started the host (pid "
    return [int(line.split(marker)[1].rstrip(")")) for line in host.log_lines(marker)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose here; only its parent could still reap it.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ")[1][0] != "Z"


def logged_at(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()


async def consuming_hosts(host: HostProcess, count: int, within: float = 30.0) -> None:
    """Wait until the ``count``-th host started by the reloader is consuming."""

    def enough() -> bool:
        if host.process.poll() is not None:
            raise AssertionError(f"the reloader exited with {host.process.returncode}:\n{host.log}")
        return len(host.log_lines("consuming from")) >= count

    await async_wait_for(enough, within=within, message=f"host number {count} consuming")


def work(message_id: int, sleep: float = 0) -> dict[str, Any]:
    return {"task": "record", "payload": {"id": message_id, "sleep": sleep}}


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, int | None]]:
    return [(event["event"], event["version"], event.get("id")) for event in events]


@pytest.fixture
def start_reloader(
    reload_env: ReloadEnv, start_host: Callable[..., HostProcess], amqp_url: str
) -> Iterator[Callable[[], HostProcess]]:
    """Start ``rabbitworker-host run --reload`` in the venv; return once its first host
    consumes. Afterwards, stop what is still running (the reloader, then any host it left)."""
    started: list[HostProcess] = []
    env = reload_env.plugins.env(amqp_url)

    def start() -> HostProcess:
        host = start_host(
            [],
            command=(str(reload_env.plugins.python), "-m", "rabbitworker"),
            args=("run", "--reload"),
            **{k: v for k, v in env.items() if k.startswith("RABBITWORKER_")},
        )
        started.append(host)
        return host

    yield start
    for host in started:
        if host.process.poll() is None:
            host.process.send_signal(signal.SIGTERM)
            try:
                host.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                host.process.kill()
        for pid in child_pids(host):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.broker
async def test_an_edit_restarts_the_host_once_and_the_next_message_runs_the_new_code(
    start_reloader: Callable[[], HostProcess], plugin_source: Path, amqp: AmqpClient
) -> None:
    host = start_reloader()
    await amqp.publish(work(1), "reload", message_id="m-1")
    await host.wait_for_events("end", 1)

    edit(plugin_source, RELOAD_PLUGIN.format(version="v2"))
    await consuming_hosts(host, 2)
    await amqp.publish(work(2), "reload", message_id="m-2")
    await host.wait_for_events("end", 2)
    await host.async_wait_for_log("ACKed message m-2")

    first, second = child_pids(host)
    handled = [(e["id"], e["version"], e["pid"]) for e in host.events("end")]
    assert handled == [(1, "v1", first), (2, "v2", second)]
    [restart] = host.log_lines("restarting the host")
    assert "rwtest_reload/__init__.py changed" in restart
    assert len(host.log_lines("ACKed message m-1")) == 1
    assert len(host.log_lines("ACKed message m-2")) == 1
    assert await amqp.ready("reload.q") == 0
    took = logged_at(host.log_lines("consuming from")[1]) - logged_at(restart)
    assert took < 10, f"{took:.2f} s from the change to the new host consuming"
    assert await host.async_stop() == 0
    assert len(child_pids(host)) == 2, "one edit, one restart"


@pytest.mark.broker
async def test_a_burst_of_saves_to_several_files_is_one_restart(
    start_reloader: Callable[[], HostProcess], plugin_source: Path, amqp: AmqpClient
) -> None:
    host = start_reloader()

    # A formatter rewriting the package, or a checkout: several files, many writes.
    (plugin_source.parent / "helpers.py").write_text("HELPED = True\n")
    for version in ("v2", "v3", "v4", "v5"):
        edit(plugin_source, RELOAD_PLUGIN.format(version=version))
    await consuming_hosts(host, 2)
    await amqp.publish(work(1), "reload", message_id="m-1")
    await host.wait_for_events("end", 1)

    [restart] = host.log_lines("restarting the host")
    assert "and 1 more changed" in restart
    assert [(e["id"], e["version"]) for e in host.events("end")] == [(1, "v5")]
    assert await host.async_stop() == 0
    assert len(child_pids(host)) == 2


@pytest.mark.broker
async def test_a_message_in_flight_during_an_edit_is_finished_by_the_old_host_before_the_new_starts(
    start_reloader: Callable[[], HostProcess], plugin_source: Path, amqp: AmqpClient
) -> None:
    host = start_reloader()
    await amqp.publish(work(1, sleep=2), "reload", message_id="m-1")
    await host.wait_for_events("start", 1)

    edit(plugin_source, RELOAD_PLUGIN.format(version="v2"))
    await consuming_hosts(host, 2)
    await amqp.publish(work(2), "reload", message_id="m-2")
    await host.wait_for_events("end", 2)

    assert summary(host.events()) == [
        ("imported", "v1", None),
        ("start", "v1", 1),
        ("end", "v1", 1),
        ("stopped", "v1", None),
        ("imported", "v2", None),
        ("start", "v2", 2),
        ("end", "v2", 2),
    ]
    first, second = child_pids(host)
    lines = host.log.splitlines()
    exited = next(i for i, line in enumerate(lines) if f"(pid {first}) exited with code 0" in line)
    restarted = next(
        i for i, line in enumerate(lines) if f"started the host (pid {second})" in line
    )
    assert exited < restarted
    assert len(host.log_lines("ACKed message m-1")) == 1
    assert await amqp.ready("reload.q") == 0, "acked by the old host, so nothing comes back"
    assert await host.async_stop() == 0


@pytest.mark.broker
async def test_a_syntax_error_keeps_the_reloader_waiting_and_the_fix_brings_the_host_back(
    start_reloader: Callable[[], HostProcess], plugin_source: Path, amqp: AmqpClient
) -> None:
    host = start_reloader()

    edit(plugin_source, BROKEN_PLUGIN)
    await host.async_wait_for_log("exited with code 3; waiting for a change")
    assert host.process.poll() is None
    assert any("rwtest-reload" in line and "SyntaxError" in line for line in host.log_lines())

    edit(plugin_source, RELOAD_PLUGIN.format(version="v3"), atomic=True)
    await consuming_hosts(host, 2)
    await amqp.publish(work(1), "reload", message_id="m-1")
    await host.wait_for_events("end", 1)

    assert [(e["id"], e["version"]) for e in host.events("end")] == [(1, "v3")]
    assert len(host.log_lines("restarting the host")) == 2
    assert await amqp.ready("reload.q") == 0
    assert await host.async_stop() == 0
    assert len(child_pids(host)) == 3


@pytest.mark.broker
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_to_the_reloader_stops_its_host_cleanly_and_leaves_no_process(
    start_reloader: Callable[[], HostProcess], plugin_source: Path, sig: signal.Signals
) -> None:
    host = start_reloader()
    [pid] = child_pids(host)

    started = time.monotonic()
    assert await host.async_stop(sig, within=30) == 0

    assert time.monotonic() - started < 10
    assert not alive(pid)
    assert host.log_lines(f"reload: {sig.name} received: stopping the host")
    assert len(host.log_lines(f"{sig.name} received: stopping, letting in-flight")) == 1
    assert not host.log_lines("received again"), "the host got one signal, not two"
    assert host.log_lines(f"the host (pid {pid}) exited with code 0")


@pytest.mark.broker
async def test_a_reloader_killed_with_sigkill_leaves_no_host_behind_and_its_message_is_finished(
    start_reloader: Callable[[], HostProcess], plugin_source: Path, amqp: AmqpClient
) -> None:
    host = start_reloader()
    [pid] = child_pids(host)
    await amqp.publish(work(1, sleep=2), "reload", message_id="m-1")
    await host.wait_for_events("start", 1)

    # SIGKILL cannot be handled: the host must notice by itself that its reloader is gone.
    host.process.kill()
    host.process.wait(timeout=5)
    await async_wait_for(lambda: not alive(pid), within=30, message="the orphaned host exits")

    assert summary(host.events()) == [
        ("imported", "v1", None),
        ("start", "v1", 1),
        ("end", "v1", 1),
        ("stopped", "v1", None),
    ]
    assert host.log_lines("the reloader is gone: stopping the host")
    assert len(host.log_lines("ACKed message m-1")) == 1
    assert await amqp.ready("reload.q") == 0, "finished and acked, so nothing comes back"


@pytest.mark.broker
async def test_a_reloader_killed_while_its_host_stops_does_not_make_the_stop_abrupt(
    start_reloader: Callable[[], HostProcess], plugin_source: Path, amqp: AmqpClient
) -> None:
    host = start_reloader()
    [pid] = child_pids(host)
    await amqp.publish(work(1, sleep=3), "reload", message_id="m-1")
    await host.wait_for_events("start", 1)
    host.process.send_signal(signal.SIGTERM)
    await host.async_wait_for_log("SIGTERM received: stopping, letting in-flight")

    host.process.kill()
    host.process.wait(timeout=5)
    await async_wait_for(lambda: not alive(pid), within=30, message="the host exits")

    assert [e["event"] for e in host.events()] == ["imported", "start", "end", "stopped"]
    assert not host.log_lines("received again"), "one stop, not an abrupt second one"
    assert not host.log_lines("the reloader is gone")
    assert len(host.log_lines("ACKed message m-1")) == 1
    assert await amqp.ready("reload.q") == 0


def test_the_watch_plan_of_a_real_venv_has_both_editable_styles_and_no_copy(
    reload_env: ReloadEnv,
) -> None:
    script = (
        "import json; from rabbitworker.reload import plan_for; "
        "from rabbitworker.settings import HostSettings; plan = plan_for(HostSettings()); "
        "print(json.dumps({'watched': [[str(d), why] for d, why in plan.watched], "
        "'not_editable': plan.not_editable}))"
    )
    result = subprocess.run(
        [str(reload_env.plugins.python), "-c", script],
        env=reload_env.plugins.env(RABBITWORKER_PLUGINS="probe_plugin"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )

    plan = json.loads(result.stdout)
    watched = dict(plan["watched"])
    host = distribution("rabbitworker-host").read_text("direct_url.json")
    expected = {
        str(reload_env.plain_src.resolve()),
        str(reload_env.exact_package.resolve()),
        str(SUPPORT.resolve()),
        *([str(HOST_SOURCE)] if is_editable(host) else []),
    }
    assert set(watched) == expected
    assert "plugin reload (rwtest-reload 1.0.0)" in watched[str(reload_env.plain_src.resolve())]
    assert watched[str(SUPPORT.resolve())] == "RABBITWORKER_PLUGINS module probe_plugin"
    assert plan["not_editable"] == ["rwtest-reload-copy 1.0.0"]


#: Runs the Reloader on its own, with a stand-in for the host given on the command line.
REEXEC = """\
import asyncio, sys
from pathlib import Path
from rabbitworker.logs import setup_logging
from rabbitworker.reload import Reloader

setup_logging()
command = [sys.executable, "-c", sys.argv[1]]
sys.exit(asyncio.run(Reloader(command, [Path(p) for p in sys.argv[2:]], 0.5).run()))
"""

#: A stand-in for a host that never stops on SIGTERM.
STUBBORN = """\
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("stubborn host up", flush=True)
time.sleep(60)
"""


def start_reexec(tmp_path: Path, child: str, *watched: Path) -> HostProcess:
    log_path = tmp_path / "reloader.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", REEXEC, child, *map(str, watched)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return HostProcess(process, log_path, tmp_path / "no-events.jsonl")


def test_a_host_that_does_not_stop_in_time_is_killed_before_the_next_starts(
    tmp_path: Path,
) -> None:
    watched = tmp_path / "src"
    watched.mkdir()
    reloader = start_reexec(tmp_path, STUBBORN, watched)
    try:
        reloader.wait_for_log("stubborn host up")
        (watched / "plugin.py").write_text("X = 1\n")
        # The reloader logs a host's pid once it is started, and that host may print first.
        wait_for(
            lambda: reloader.log.count("stubborn host up") == 2 and len(child_pids(reloader)) == 2,
            message="a second host",
        )
        first, second = child_pids(reloader)

        assert reloader.stop(signal.SIGTERM, timeout=15) == 128 + signal.SIGKILL
    finally:
        if reloader.process.poll() is None:
            reloader.process.kill()
    assert reloader.log_lines(f"the host (pid {first}) did not stop within 0.5 s; killing it")
    assert reloader.log_lines(f"the host (pid {second}) did not stop within 0.5 s; killing it")
    assert reloader.log.index(f"(pid {first}) exited with code 137") < reloader.log.index(
        f"started the host (pid {second})"
    )
    assert not alive(first)
    assert not alive(second)


def test_with_nothing_watched_the_reloader_ends_with_its_host(tmp_path: Path) -> None:
    reloader = start_reexec(tmp_path, "import sys; sys.exit(3)")

    assert reloader.process.wait(timeout=15) == 3
    assert reloader.log_lines("exited with code 3; nothing is watched")


#: Runs the Reloader with a host command that cannot be executed.
UNRUNNABLE = """\
import asyncio, sys
from pathlib import Path
from rabbitworker.logs import setup_logging
from rabbitworker.reload import Reloader

setup_logging()
sys.exit(asyncio.run(Reloader(["/nonexistent/bin/python"], [Path(sys.argv[1])], 0.5).run()))
"""


def test_a_host_command_that_cannot_be_executed_is_one_clear_error(tmp_path: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-c", UNRUNNABLE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert process.returncode == 127, process.stderr
    assert "Traceback" not in process.stderr
    assert "reload: cannot start the host (/nonexistent/bin/python): " in process.stderr
    assert "No such file or directory" in process.stderr


def test_an_empty_plan_says_what_to_install() -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, format="{level} {message}")
    try:
        log_plan(WatchPlan(watched=(), not_editable=("rw-a 1.0",)))
    finally:
        logger.remove(sink)

    assert any(line.startswith("INFO reload: not watching rw-a 1.0") for line in lines)
    [warning] = [line for line in lines if line.startswith("WARNING")]
    assert "nothing to watch" in warning
    assert "pip install -e ./plugins/<name>" in warning


# What to watch: a pure function of what is installed.


def source(
    name: str,
    *directories: str,
    editable: bool = True,
    entry_points: tuple[str, ...] = ("ep",),
) -> InstalledSource:
    url = json.dumps({"url": "file:///src", "dir_info": {"editable": editable}})
    return InstalledSource(name, "1.0", url, entry_points, tuple(map(Path, directories)))


@pytest.mark.parametrize(
    ("direct_url", "editable"),
    [
        pytest.param('{"url": "file:///p", "dir_info": {"editable": true}}', True, id="editable"),
        pytest.param('{"url": "file:///p", "dir_info": {}}', False, id="local-directory"),
        pytest.param('{"url": "file:///p", "dir_info": {"editable": false}}', False, id="false"),
        pytest.param('{"url": "https://x/p.whl", "archive_info": {}}', False, id="archive"),
        pytest.param(None, False, id="no-direct-url-json"),
        pytest.param("not json", False, id="garbled"),
        pytest.param("[]", False, id="not-an-object"),
    ],
)
def test_only_dir_info_editable_true_counts_as_editable(
    direct_url: str | None, editable: bool
) -> None:
    assert is_editable(direct_url) is editable


def test_an_editable_plugins_directories_are_watched_naming_the_plugin() -> None:
    plan = watch_plan([source("rw-a", "/p/a/src", entry_points=("a",))])

    assert plan.watched == ((Path("/p/a/src"), "plugin a (rw-a 1.0), installed editable"),)
    assert plan.not_editable == ()


def test_a_plugin_installed_as_a_copy_is_not_watched_but_reported() -> None:
    plan = watch_plan([source("rw-a", "/site/a", editable=False)])

    assert plan.watched == ()
    assert plan.not_editable == ("rw-a 1.0",)


@pytest.mark.parametrize(
    "selection",
    [
        pytest.param({"autoload": False}, id="autoload-off"),
        pytest.param({"disabled": ["a"]}, id="disabled"),
        pytest.param({"enabled": ["b"]}, id="not-enabled"),
    ],
)
def test_a_plugin_the_host_does_not_load_is_neither_watched_nor_reported(
    selection: dict[str, Any],
) -> None:
    plan = watch_plan([source("rw-a", "/p/a/src", entry_points=("a",))], **selection)

    assert plan.watched == ()
    assert plan.not_editable == ()


def test_the_host_is_watched_only_when_it_is_editable() -> None:
    editable = watch_plan([source("rabbitworker-host", "/repo/host", entry_points=())])
    copied = watch_plan([source("rabbitworker_host", "/site", entry_points=(), editable=False)])

    assert editable.watched == (
        (Path("/repo/host"), "the host (rabbitworker-host 1.0), installed editable"),
    )
    assert copied.watched == ()
    assert copied.not_editable == (), "the host is not a plugin"


def test_a_directory_inside_a_watched_one_is_not_watched_twice() -> None:
    plan = watch_plan(
        [
            source("rw-a", "/p/a/src", "/p/a/src/rw_a"),
            source("rw-b", "/p/a/src/rw_b", "/p/b"),
        ]
    )

    assert plan.directories == (Path("/p/a/src"), Path("/p/b"))


def test_named_modules_are_watched_unless_installed_in_site_packages() -> None:
    plan = watch_plan(
        [],
        [
            NamedModule("myplugin", (Path("/work/plugins"),)),
            NamedModule("installed.plugin", (Path("/venv/site-packages/installed"),)),
            NamedModule("nowhere", ()),
        ],
        installed_roots=[Path("/venv/site-packages")],
    )

    assert plan.watched == ((Path("/work/plugins"), "RABBITWORKER_PLUGINS module myplugin"),)
    assert plan.not_editable == ("module installed.plugin",)
    assert plan.missing == ("nowhere",)


def test_nothing_editable_makes_an_empty_plan() -> None:
    assert watch_plan([source("rw-a", "/site/a", editable=False)], []).directories == ()


# How the host is started again, and what is reported.


@pytest.mark.parametrize(
    ("orig_argv", "argv", "expected"),
    [
        pytest.param(
            ["python", "-m", "rabbitworker", "run", "--reload"],
            ["/src/rabbitworker/__main__.py", "run", "--reload"],
            ["/venv/python", "-m", "rabbitworker", "run"],
            id="python-m",
        ),
        pytest.param(
            ["/venv/python", "/venv/bin/rabbitworker-host", "run", "--reload"],
            ["/venv/bin/rabbitworker-host", "run", "--reload"],
            ["/venv/python", "/venv/bin/rabbitworker-host", "run"],
            id="console-script",
        ),
        pytest.param(
            ["python", "-X", "dev", "-m", "rabbitworker", "run", "--reload"],
            ["/src/rabbitworker/__main__.py", "run", "--reload"],
            ["/venv/python", "-X", "dev", "-m", "rabbitworker", "run"],
            id="interpreter-options-kept",
        ),
        pytest.param(
            ["python", "-m", "pytest", "-k", "x"],
            ["/venv/bin/pytest", "-k", "x"],
            ["/venv/python", "-m", "rabbitworker", "run"],
            id="not-from-the-command-line",
        ),
    ],
)
def test_the_host_is_started_the_way_the_reloader_was_without_reload(
    orig_argv: list[str], argv: list[str], expected: list[str]
) -> None:
    assert child_command(orig_argv, argv, "/venv/python") == expected


def test_a_host_killed_by_a_signal_exits_as_a_shell_reports_it() -> None:
    assert [exit_code(0), exit_code(3), exit_code(-signal.SIGKILL)] == [0, 3, 137]


def test_changes_are_named_relative_to_the_working_directory() -> None:
    cwd = Path("/work")

    assert describe_changes(["/work/p/a.py"], cwd) == "p/a.py"
    assert (
        describe_changes(["/work/p/b.py", "/elsewhere/a.py"], cwd) == "/elsewhere/a.py and 1 more"
    )


def test_the_bytecode_of_a_changed_file_is_forgotten(tmp_path: Path) -> None:
    changed, untouched = tmp_path / "changed.py", tmp_path / "untouched.py"
    for module in (changed, untouched):
        module.write_text("VALUE = 1\n")
        py_compile.compile(str(module))

    forget_bytecode([str(changed)])

    assert not Path(importlib.util.cache_from_source(str(changed))).exists()
    assert Path(importlib.util.cache_from_source(str(untouched))).exists()
