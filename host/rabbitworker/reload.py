"""``rabbitworker-host run --reload``: run the host as a child process and restart it,
gracefully, when a source file of an editable-installed plugin changes.

What is watched is decided by :func:`watch_plan`, a pure function of facts that
:func:`installed_sources` and :func:`named_modules` gather from the environment (PEP 610's
``direct_url.json`` says whether a distribution is editable). :class:`Reloader` runs the
child and restarts it; :func:`follow_reloader` makes the child stop when the reloader is
gone, even after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import Distribution, PackageNotFoundError, distribution
from pathlib import Path

from loguru import logger

from rabbitworker.plugins import discover_entry_points
from rabbitworker.settings import HostSettings

HOST_DISTRIBUTION = "rabbitworker-host"
HOST_PACKAGE = "rabbitworker"

#: Seconds a stopping host gets beyond RABBITWORKER_SHUTDOWN_TIMEOUT (closing its
#: connections, leaving handlers that ignore cancellation) before it is killed.
KILL_MARGIN = 10.0

#: Names the host's end of a pipe whose other end only the reloader holds: when the reloader
#: is gone, however it died, the host reads end-of-file and stops as on SIGTERM.
LIFELINE_ENV = "RABBITWORKER_RELOADER_FD"

#: A shell's exit code for a command that cannot be executed (not found, not executable).
CANNOT_EXECUTE = 127

#: The parent's signals and what the host is sent for each. SIGHUP (the terminal closed) is
#: handled too: the host runs in its own process group, so nothing else would stop it.
FORWARDED_SIGNALS = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGINT,
    signal.SIGHUP: signal.SIGTERM,
}


@dataclass(frozen=True)
class InstalledSource:
    """One installed distribution that is a plugin, or the host, and where its code is."""

    distribution: str
    version: str | None
    #: The text of its ``direct_url.json`` (PEP 610); ``None`` when it has none.
    direct_url: str | None
    #: Its ``rabbitworker.queues`` entry-point names (none for the host).
    entry_points: tuple[str, ...]
    #: The directories its ``.pth`` files put on ``sys.path``, and those of its top-level
    #: modules as the import system finds them (hatchling's ``dev-mode-exact`` and
    #: setuptools' editable finders map modules without a path entry).
    directories: tuple[Path, ...]


@dataclass(frozen=True)
class NamedModule:
    """A module named in ``RABBITWORKER_PLUGINS`` and the directories of its top-level
    package (or of its file); none when it cannot be found."""

    name: str
    directories: tuple[Path, ...]


@dataclass(frozen=True)
class WatchPlan:
    """What ``--reload`` watches, each directory with the reason it is watched."""

    watched: tuple[tuple[Path, str], ...]
    #: Plugins that are loaded but installed as a copy: changing their source does nothing.
    not_editable: tuple[str, ...] = ()
    #: RABBITWORKER_PLUGINS modules that cannot be found (the host will say why).
    missing: tuple[str, ...] = ()

    @property
    def directories(self) -> tuple[Path, ...]:
        return tuple(directory for directory, _ in self.watched)


def is_editable(direct_url: str | None) -> bool:
    """Whether a distribution's ``direct_url.json`` text says ``dir_info.editable: true``."""
    try:
        data = json.loads(direct_url) if direct_url is not None else None
    except ValueError:
        return False
    dir_info = data.get("dir_info") if isinstance(data, dict) else None
    return isinstance(dir_info, dict) and dir_info.get("editable") is True


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def watch_plan(
    installed: Iterable[InstalledSource],
    named: Iterable[NamedModule] = (),
    *,
    autoload: bool = True,
    enabled: Sequence[str] = (),
    disabled: Sequence[str] = (),
    installed_roots: Sequence[Path] = (),
) -> WatchPlan:
    """The directories to watch: those of every editable plugin distribution the host
    loads (``autoload``, ``enabled`` and ``disabled`` as the settings of the same names),
    of the host itself when it is editable, and of the ``named`` modules unless they lie
    under one of ``installed_roots`` (site-packages, the standard library).

    A directory inside another watched one is left out: watching is recursive.
    """
    reasons: dict[Path, str] = {}
    not_editable: list[str] = []
    missing: list[str] = []
    for source in installed:
        loaded = [
            name
            for name in source.entry_points
            if autoload and (not enabled or name in enabled) and name not in disabled
        ]
        is_host = _canonical(source.distribution) == HOST_DISTRIBUTION
        if not loaded and not is_host:
            continue
        label = f"{source.distribution} {source.version or ''}".strip()
        if not is_editable(source.direct_url):
            if loaded:
                not_editable.append(label)
            continue
        owner = f"plugin {', '.join(loaded)} ({label})" if loaded else f"the host ({label})"
        for directory in source.directories:
            reasons.setdefault(directory, f"{owner}, installed editable")
    for module in named:
        if not module.directories:
            missing.append(module.name)
        for directory in module.directories:
            if any(directory.is_relative_to(root) for root in installed_roots):
                not_editable.append(f"module {module.name}")
                continue
            reasons.setdefault(directory, f"RABBITWORKER_PLUGINS module {module.name}")
    outermost: list[tuple[Path, str]] = []
    for directory in sorted(reasons, key=lambda path: len(path.parts)):
        if not any(directory.is_relative_to(kept) for kept, _ in outermost):
            outermost.append((directory, reasons[directory]))
    return WatchPlan(tuple(sorted(outermost)), tuple(dict.fromkeys(not_editable)), tuple(missing))


def module_directories(name: str) -> tuple[Path, ...]:
    """Where the import system finds top-level module ``name``, without importing it: a
    package's directories, or the directory of a single-file module."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ()
    if spec is None:
        return ()
    if spec.submodule_search_locations:
        return tuple(Path(location).resolve() for location in spec.submodule_search_locations)
    if spec.origin and spec.has_location:
        return (Path(spec.origin).resolve().parent,)
    return ()


def _path_entries(dist: Distribution) -> list[Path]:
    """The directories a distribution's ``.pth`` files add to ``sys.path``."""
    entries = []
    for file in dist.files or ():
        if file.suffix != ".pth":
            continue
        pth = Path(str(dist.locate_file(file)))
        try:
            lines = pth.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line.startswith(("#", "import ", "import\t")):
                continue
            directory = (pth.parent / line).resolve()
            if directory.is_dir():
                entries.append(directory)
    return entries


def _source(
    dist: Distribution, entry_points: tuple[str, ...], modules: set[str]
) -> InstalledSource:
    directories = [*_path_entries(dist)]
    for module in sorted(modules):
        directories.extend(module_directories(module))
    return InstalledSource(
        distribution=dist.metadata["Name"] or "",
        version=dist.version,
        direct_url=dist.read_text("direct_url.json"),
        entry_points=entry_points,
        directories=tuple(dict.fromkeys(directories)),
    )


def installed_sources() -> list[InstalledSource]:
    """Every distribution with a ``rabbitworker.queues`` entry point, and the host."""
    by_distribution: dict[str, tuple[Distribution, list[str], set[str]]] = {}
    for entry_point in discover_entry_points():
        if entry_point.dist is None:
            continue
        key = _canonical(entry_point.dist.metadata["Name"] or "")
        _, names, modules = by_distribution.setdefault(key, (entry_point.dist, [], set()))
        names.append(entry_point.name)
        modules.add(entry_point.module.partition(".")[0])
    sources = [
        _source(dist, tuple(names), modules) for dist, names, modules in by_distribution.values()
    ]
    if HOST_DISTRIBUTION not in by_distribution:
        with contextlib.suppress(PackageNotFoundError):
            sources.append(_source(distribution(HOST_DISTRIBUTION), (), {HOST_PACKAGE}))
    return sources


def named_modules(names: Iterable[str]) -> list[NamedModule]:
    """The ``RABBITWORKER_PLUGINS`` modules, each with its top-level package's directories."""
    return [NamedModule(name, module_directories(name.partition(".")[0])) for name in names]


def installed_roots() -> list[Path]:
    """Where installed code lives: the standard library and every site-packages on the path."""
    paths = sysconfig.get_paths()
    roots = {Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(
        Path(entry).resolve()
        for entry in sys.path
        if Path(entry).name in ("site-packages", "dist-packages")
    )
    return sorted(roots)


def child_command(orig_argv: Sequence[str], argv: Sequence[str], executable: str) -> list[str]:
    """This process's own command line without ``--reload``.

    The host is started exactly as this process was (``python -m rabbitworker`` puts the
    working directory on ``sys.path``, the console script does not; interpreter options
    such as ``-X dev`` are kept), so it imports what a plain ``run`` would.
    """
    arguments = list(argv[1:])
    start = len(orig_argv) - len(arguments)
    if "--reload" not in arguments or start < 1 or list(orig_argv[start:]) != arguments:
        return [executable, "-m", HOST_PACKAGE, "run"]
    return [
        executable,
        *orig_argv[1:start],
        *(argument for argument in arguments if argument != "--reload"),
    ]


def exit_code(returncode: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return returncode if returncode >= 0 else 128 - returncode


def forget_bytecode(paths: Iterable[str]) -> None:
    """Remove the cached bytecode of changed sources: Python trusts a ``.pyc`` whose
    source has the same size and mtime in whole seconds, so a same-length edit within
    the second of the last import would otherwise run the old code."""
    for path in paths:
        if not path.endswith(".py"):
            continue
        with contextlib.suppress(ValueError, OSError):
            Path(importlib.util.cache_from_source(path)).unlink(missing_ok=True)


def describe_changes(paths: Iterable[str], cwd: Path) -> str:
    """``plugins/x/src/x/tasks.py`` or ``… and 2 more``, relative to ``cwd`` where possible."""
    shown = []
    for path in sorted(paths):
        try:
            shown.append(str(Path(path).relative_to(cwd)))
        except ValueError:
            shown.append(path)
    if not shown:
        return "nothing"
    more = f" and {len(shown) - 1} more" if len(shown) > 1 else ""
    return f"{shown[0]}{more}"


@dataclass(frozen=True)
class _Changed:
    paths: frozenset[str]


@dataclass(frozen=True)
class _Exited:
    process: asyncio.subprocess.Process


@dataclass(frozen=True)
class _Stop:
    signal: signal.Signals


class Reloader:
    """Run ``command`` (the host) as a child process; on a change in ``directories``, stop
    it as SIGTERM does (in-flight messages finish), wait for it to exit, start it again."""

    def __init__(self, command: Sequence[str], directories: Sequence[Path], stop_within: float):
        self._command = list(command)
        self._directories = tuple(directories)
        self._stop_within = stop_within
        self._events: asyncio.Queue[_Changed | _Exited | _Stop] = asyncio.Queue()
        self._child: asyncio.subprocess.Process | None = None
        self._signals = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._lifeline: int | None = None

    async def run(self) -> int:
        """Serve until SIGTERM, SIGINT or SIGHUP; the exit code is the host's last one."""
        loop = asyncio.get_running_loop()
        # Never written to: closed by the kernel when this process ends, however it ends.
        self._lifeline, lifeline_writer = os.pipe()
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        watcher = None
        if self._directories:
            watcher = asyncio.create_task(self._watch())
            # awatch registers its watches before it first suspends: once this yields, a
            # save is seen even if it comes before the first host is up.
            await asyncio.sleep(0)
        try:
            if not await self._start():
                return CANNOT_EXECUTE
            return await self._serve()
        finally:
            os.close(self._lifeline)
            os.close(lifeline_writer)
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            for sig in FORWARDED_SIGNALS:
                loop.remove_signal_handler(sig)

    async def _serve(self) -> int:
        while True:
            event = await self._events.get()
            if isinstance(event, _Stop):
                return await self._stop_child(event.signal) if self._child else 0
            if isinstance(event, _Exited):
                if event.process is not self._child:
                    continue
                self._child = None
                code = exit_code(event.process.returncode or 0)
                if not self._directories:
                    logger.warning(
                        "reload: the host (pid {}) exited with code {}; nothing is watched, "
                        "so nothing would start it again",
                        event.process.pid,
                        code,
                    )
                    return code
                (logger.error if code else logger.warning)(
                    "reload: the host (pid {}) exited with code {}; waiting for a change to "
                    "start it again",
                    event.process.pid,
                    code,
                )
                continue
            changed = set(event.paths)
            logger.info(
                "reload: {} changed; restarting the host", describe_changes(changed, Path.cwd())
            )
            if self._child is not None:
                code = await self._stop_child(signal.SIGTERM)
                if self._signals:
                    return code
            # Saved while the old host was stopping: the new one loads them anyway.
            changed |= self._take_changes()
            forget_bytecode(changed)
            if not await self._start():
                logger.error("reload: waiting for a change to try again")

    def _take_changes(self) -> set[str]:
        changed: set[str] = set()
        while not self._events.empty():
            event = self._events.get_nowait()
            if isinstance(event, _Changed):
                changed |= event.paths
            elif isinstance(event, _Stop):
                self._events.put_nowait(event)
                break
        return changed

    async def _start(self) -> bool:
        """Start the host; ``False`` (logged) when its command cannot be executed."""
        assert self._lifeline is not None
        try:
            # Its own process group: Ctrl-C reaches only this process, which passes one
            # signal on; a second one to the host would mean "stop at once".
            child = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=subprocess.DEVNULL,
                process_group=0,
                pass_fds=(self._lifeline,),
                env={**os.environ, LIFELINE_ENV: str(self._lifeline)},
            )
        except OSError as exc:
            logger.error(
                "reload: cannot start the host ({}): {}. Is this Python environment still "
                "there? Run the command by hand to see",
                self._command[0],
                exc.strerror or exc,
            )
            return False
        self._child = child
        logger.info("reload: started the host (pid {})", child.pid)
        task = asyncio.create_task(self._report_exit(child))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _report_exit(self, child: asyncio.subprocess.Process) -> None:
        await child.wait()
        self._events.put_nowait(_Exited(child))

    async def _stop_child(self, sig: signal.Signals) -> int:
        child = self._child
        assert child is not None
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)
        try:
            await asyncio.wait_for(child.wait(), self._stop_within)
        except TimeoutError:
            logger.warning(
                "reload: the host (pid {}) did not stop within {:g} s; killing it",
                child.pid,
                self._stop_within,
            )
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
        self._child = None
        code = exit_code(child.returncode or 0)
        logger.info("reload: the host (pid {}) exited with code {}", child.pid, code)
        return code

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        forward = FORWARDED_SIGNALS[sig]
        if self._signals == 1:
            logger.info("reload: {} received: stopping the host", sig.name)
            self._events.put_nowait(_Stop(forward))
        elif self._child is not None and self._child.returncode is None:
            logger.warning("reload: {} received again: passing it on", sig.name)
            self._child.send_signal(forward)

    async def _watch(self) -> None:
        from watchfiles import PythonFilter, awatch

        try:
            async for changes in awatch(*self._directories, watch_filter=PythonFilter()):
                self._events.put_nowait(_Changed(frozenset(path for _, path in changes)))
        except OSError as exc:
            logger.error("reload: cannot watch for changes any more: {}", exc)


def follow_reloader(stopping: Callable[[], bool]) -> None:
    """In a host started by ``run --reload``: once the reloader is gone, stop as SIGTERM
    does (in-flight messages finish), unless ``stopping()`` says the host already is (the
    reloader's own SIGTERM: a second one would mean "stop at once"). A SIGKILLed reloader
    cannot stop its host, which, in its own process group, would otherwise run on unseen.
    Does nothing in a host the reloader did not start."""
    value = os.environ.pop(LIFELINE_ENV, None)
    if value is None:
        return
    try:
        lifeline = int(value)
        os.set_inheritable(lifeline, False)
    except (ValueError, OSError):
        logger.warning("{}={!r} is not an open file descriptor; ignored", LIFELINE_ENV, value)
        return

    def wait_for_end_of_file() -> None:
        with contextlib.suppress(OSError):
            while os.read(lifeline, 1):
                pass
        if not stopping():
            logger.warning("reload: the reloader is gone: stopping the host")
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_end_of_file, name="reloader-lifeline", daemon=True).start()


def log_plan(plan: WatchPlan) -> None:
    for directory, reason in plan.watched:
        logger.info("reload: watching {} for *.py changes ({})", directory, reason)
    for name in plan.not_editable:
        logger.info(
            "reload: not watching {}: it is installed as a copy, so edits need a reinstall "
            "(pip install -e <its project directory> to have them reloaded)",
            name,
        )
    for name in plan.missing:
        logger.warning("reload: cannot find module {} (RABBITWORKER_PLUGINS); not watched", name)
    if not plan.watched:
        logger.warning(
            "reload: nothing to watch: no plugin the host loads is installed editable and "
            "RABBITWORKER_PLUGINS names no module outside site-packages. Install the plugin "
            "you work on with `pip install -e ./plugins/<name>`. The host runs, but nothing "
            "restarts it"
        )


def plan_for(settings: HostSettings) -> WatchPlan:
    """What to watch in this environment, for the plugins these settings load."""
    return watch_plan(
        installed_sources(),
        named_modules(settings.plugins),
        autoload=not settings.disable_plugin_autoload,
        enabled=settings.enabled_plugins,
        disabled=settings.disabled_plugins,
        installed_roots=installed_roots(),
    )


def run_with_reload(settings: HostSettings) -> int:
    """``run --reload``: the exit code of the host's last run (0 after a clean stop)."""
    plan = plan_for(settings)
    log_plan(plan)
    command = child_command(sys.orig_argv, sys.argv, sys.executable)
    reloader = Reloader(command, plan.directories, settings.shutdown_timeout + KILL_MARGIN)
    return asyncio.run(reloader.run())
