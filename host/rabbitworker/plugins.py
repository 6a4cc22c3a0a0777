"""Plugin discovery and attribution: the only module that talks to pluggy.

Load order is fixed: the host's built-in plugins, then the ``rabbitworker.queues`` entry
points sorted by name, then the modules named in ``RABBITWORKER_PLUGINS``. Every queue is
remembered with the plugin that contributed it, so every error can name its owner.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points, packages_distributions, version
from types import TracebackType
from typing import Any

import pluggy
from loguru import logger

from rabbitworker import hookspecs
from rabbitworker.config import QueueConfig
from rabbitworker.errors import (
    DuplicateQueueError,
    InvalidQueueConfigError,
    PluginHookError,
    PluginInfo,
    PluginLoadError,
)
from rabbitworker.events import Delivery, Outcome
from rabbitworker.settings import HostSettings

ENTRY_POINT_GROUP = "rabbitworker.queues"

#: The host's own features, registered first, on the same hooks as third-party plugins.
BUILTIN_PLUGINS = ("rabbitworker.messagelog",)

#: Built-ins registered only when what they need is importable: (module, the module needed).
OPTIONAL_BUILTIN_PLUGINS = (("rabbitworker.tracing", "opentelemetry.trace"),)


#: Every hook name in the spec module.
HOOK_NAMES = frozenset(name for name in vars(hookspecs) if name.startswith("rabbitworker_"))

#: The hooks the host calls synchronously on the event loop (an ``async def`` would never be
#: awaited), with what each is called for.
SYNC_HOOKS = {
    "rabbitworker_message_received": "every message",
    "rabbitworker_message_settled": "every message",
    "rabbitworker_connection_changed": "every change of the broker connection",
    "rabbitworker_consumer_changed": "every queue that starts or stops being consumed",
    "rabbitworker_handler_context": "every message",
    "rabbitworker_publish_context": "every publish",
}

#: (the plugin as errors name it, the implementation called with the hook's arguments).
Caller = tuple[str, Callable[..., Any]]


class MessageHooks:
    """The hooks called for every message and every publish: ``rabbitworker_message_received``
    / ``_settled``, ``rabbitworker_handler_context`` and ``rabbitworker_publish_context``.

    The implementations are looked up once, in pluggy's call order (``tryfirst`` /
    ``trylast`` honoured), and called directly, which costs a fraction of a pluggy hook
    call; one that raises is logged and the others still run. With no implementation, a
    context hook costs one shared ``nullcontext``.
    """

    def __init__(
        self,
        received: list[Caller],
        settled: list[Caller],
        handler_context: list[Caller] | None = None,
        publish_context: list[Caller] | None = None,
    ) -> None:
        self._received = received
        self._settled = settled
        self._handler_context = handler_context or []
        self._publish_context = publish_context or []

    def received(self, delivery: Delivery) -> None:
        for plugin, function in self._received:
            try:
                function(delivery)
            except Exception:
                logger.exception("plugin {}: rabbitworker_message_received raised", plugin)

    def settled(self, delivery: Delivery, outcome: Outcome) -> None:
        for plugin, function in self._settled:
            try:
                function(delivery, outcome)
            except Exception:
                logger.exception("plugin {}: rabbitworker_message_settled raised", plugin)

    def handler_context(self, delivery: Delivery) -> contextlib.AbstractContextManager[None]:
        """What to enter around the call of ``delivery``'s handler (in its task)."""
        if not self._handler_context:
            return NO_CONTEXT
        return _Contexts("rabbitworker_handler_context", self._handler_context, (delivery,))

    def publish_context(
        self, exchange: str, routing_key: str, message_id: str, headers: dict[str, Any]
    ) -> contextlib.AbstractContextManager[None]:
        """What to enter around one publish, until its confirm; may add to ``headers``."""
        if not self._publish_context:
            return NO_CONTEXT
        return _Contexts(
            "rabbitworker_publish_context",
            self._publish_context,
            (exchange, routing_key, message_id, headers),
        )


#: What the context hooks give when no plugin implements them (reusable, costs nothing).
NO_CONTEXT: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


class _Contexts:
    """The context managers a context hook's implementations returned, as one: entered in
    call order, exited in reverse, each failure logged with its plugin and none able to
    stop the others or to swallow the exception of the block they wrap."""

    __slots__ = ("_arguments", "_callers", "_entered", "_hook")

    def __init__(self, hook: str, callers: list[Caller], arguments: tuple[Any, ...]) -> None:
        self._hook = hook
        self._callers = callers
        self._arguments = arguments
        self._entered: list[tuple[str, Any]] = []

    def __enter__(self) -> None:
        for plugin, function in self._callers:
            try:
                manager = function(*self._arguments)
                if manager is None:
                    continue
                type(manager).__enter__(manager)
            except Exception:
                logger.exception("plugin {}: {} raised", plugin, self._hook)
                continue
            self._entered.append((plugin, manager))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        while self._entered:
            plugin, manager = self._entered.pop()
            try:
                type(manager).__exit__(manager, kind, error, traceback)
            except Exception as exc:
                if exc is not error:
                    logger.exception("plugin {}: {} raised on exit", plugin, self._hook)


@dataclass(frozen=True, slots=True)
class QueueRegistration:
    """A queue and the plugin that contributed it."""

    config: QueueConfig
    plugin: PluginInfo
    #: Fields changed by a per-deployment override → where the value came from.
    overrides: dict[str, str] = field(default_factory=dict)


class HostPlugins:
    """The loaded plugins behind one typed facade; the rest of the host never calls pluggy."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._message_hooks: MessageHooks | None = None

    @classmethod
    def load(cls, settings: HostSettings) -> HostPlugins:
        """Load built-ins, installed entry points and ``RABBITWORKER_PLUGINS``, in that order.

        :raises PluginLoadError: a plugin failed to import.
        :raises PluginHookError: a plugin implements a hook wrongly or one that does not exist.
        """
        plugins = cls()
        plugins._register_builtins()
        if settings.metrics_port is not None:
            from rabbitworker.metrics import MetricsPlugin

            plugins.register(
                MetricsPlugin(),
                PluginInfo(
                    name="rabbitworker.metrics",
                    distribution="rabbitworker-host",
                    version=_dist_version("rabbitworker-host"),
                    module="rabbitworker.metrics",
                ),
            )
        if not settings.disable_plugin_autoload:
            for entry_point in discover_entry_points():
                info = _entry_point_info(entry_point)
                if settings.enabled_plugins and entry_point.name not in settings.enabled_plugins:
                    logger.info(
                        "plugin {} is not in RABBITWORKER_ENABLED_PLUGINS; skipped",
                        info.describe(),
                    )
                    continue
                if entry_point.name in settings.disabled_plugins:
                    logger.info(
                        "plugin {} is disabled by RABBITWORKER_DISABLED_PLUGINS", info.describe()
                    )
                    continue
                try:
                    plugin = entry_point.load()
                except Exception as exc:
                    raise PluginLoadError(info, exc) from exc
                plugins.register(plugin, info)
        for module_name in settings.plugins:
            info = _module_info(module_name)
            try:
                plugin = importlib.import_module(module_name)
            except Exception as exc:
                raise PluginLoadError(info, exc) from exc
            plugins.register(plugin, info)
        return plugins

    @classmethod
    def select(cls, *selection: str | object) -> HostPlugins:
        """Built-ins plus exactly the plugins named: installed entry-point names, importable
        module paths, or plugin objects (modules, instances). For tests and tools.

        :raises PluginLoadError: a named plugin failed to import.
        """
        plugins = cls()
        plugins._register_builtins()
        installed = {entry_point.name: entry_point for entry_point in discover_entry_points()}
        for item in selection:
            if not isinstance(item, str):
                name = getattr(item, "__name__", None) or type(item).__name__
                plugins.register(item, _module_info(name) if "." in name else PluginInfo(name))
                continue
            entry_point = installed.get(item)
            info = _entry_point_info(entry_point) if entry_point else _module_info(item)
            try:
                plugin = entry_point.load() if entry_point else importlib.import_module(item)
            except Exception as exc:
                raise PluginLoadError(info, exc) from exc
            plugins.register(plugin, info)
        return plugins

    @classmethod
    def builtins(cls) -> HostPlugins:
        """The host's built-in plugins only (what a plain script's publishes go through)."""
        plugins = cls()
        plugins._register_builtins()
        return plugins

    def _register_builtins(self) -> None:
        host_version = _dist_version("rabbitworker-host")
        modules = [*BUILTIN_PLUGINS]
        for module_name, needs in OPTIONAL_BUILTIN_PLUGINS:
            if _importable(needs):
                modules.append(module_name)
        for module_name in modules:
            info = PluginInfo(
                name=module_name,
                distribution="rabbitworker-host",
                version=host_version,
                module=module_name,
            )
            self.register(importlib.import_module(module_name), info)

    def register(self, plugin: object, info: PluginInfo) -> None:
        """Register one plugin object, checking its hooks against the specs.

        :raises PluginHookError: the name is taken, or the plugin implements no hook, an
            unknown hook, a hook without ``@hookimpl``, a wrapper, or an ``async def`` where
            the host calls the hook synchronously (see :mod:`rabbitworker.hookspecs`).
        """
        if self._pm.is_registered(plugin):
            logger.warning("plugin {} is already loaded; skipping the second copy", info.describe())
            return
        if info.name in self._info:
            raise PluginHookError(
                info,
                "register",
                f"another plugin is already loaded under the name {info.name!r} "
                f"({self._info[info.name].describe()})",
            )
        try:
            self._pm.register(plugin, name=info.name)
        except pluggy.PluginValidationError as exc:
            raise PluginHookError(info, "register", str(exc)) from exc
        problem = self._hook_problem(plugin)
        if problem is not None:
            self._pm.unregister(plugin)
            raise PluginHookError(info, *problem)
        self._info[info.name] = info
        self._message_hooks = None

    def _hook_problem(self, plugin: object) -> tuple[str, str] | None:
        """What is wrong with a just-registered plugin's hooks: (hook, problem), or None."""
        hooks = ", ".join(sorted(HOOK_NAMES))
        # Every plugin is checked as it is registered, so a pending hook is this plugin's.
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError:
            callers = self._pm.get_hookcallers(plugin) or []
            unknown = ", ".join(sorted(c.name for c in callers if not c.has_spec()))
            return (
                unknown,
                "this is not a rabbitworker hook (misspelled?). Rename it to one of the "
                f"hooks: {hooks}",
            )
        # pluggy registers only what @hookimpl marked; anything else named like a hook is
        # dropped without a word (and its queues with it), so look for it.
        for name in dir(plugin):
            if not name.startswith("rabbitworker_") or not callable(getattr(plugin, name, None)):
                continue
            if self._pm.parse_hookimpl_opts(plugin, name) is not None:
                continue
            if name in HOOK_NAMES:
                return name, "it is not registered: decorate it with @rabbitworker.hookimpl"
            return (
                name,
                "this is not a rabbitworker hook (misspelled?) and it is not decorated with "
                f"@rabbitworker.hookimpl. The hooks are: {hooks}",
            )
        impls = [
            (caller.name, impl)
            for caller in self._pm.get_hookcallers(plugin) or []
            for impl in caller.get_hookimpls()
            if impl.plugin is plugin
        ]
        if not impls:
            return (
                "register",
                "it implements no rabbitworker hook. Define rabbitworker_queues() and decorate "
                "it with @rabbitworker.hookimpl",
            )
        for hook_name, impl in impls:
            if impl.hookwrapper or impl.wrapper:
                return (
                    hook_name,
                    "hook wrappers (hookwrapper=True / wrapper=True) are not supported: the "
                    "host calls each implementation itself, so that one that raises is "
                    "attributed to its plugin and cannot stop the others. Make it a plain "
                    "@rabbitworker.hookimpl, ordered with tryfirst=True or trylast=True",
                )
            if hook_name in SYNC_HOOKS and (
                inspect.iscoroutinefunction(impl.function)
                or inspect.isasyncgenfunction(impl.function)
            ):
                return (
                    hook_name,
                    "it is an async def, which would never be awaited: it must be a plain def; "
                    f"it is called on the event loop for {SYNC_HOOKS[hook_name]}. Start slow "
                    "work as a task (asyncio.get_running_loop().create_task(...)) from it",
                )
        return None

    @property
    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin, built-ins first, in load order."""
        return list(self._info.values())

    def collect_queues(self) -> list[QueueRegistration]:
        """Ask every plugin for its queues and check they are valid and uniquely named.

        :raises PluginHookError: a hook raised, returned something else than QueueConfigs,
            or built an invalid QueueConfig.
        :raises DuplicateQueueError: two registrations share a queue name.
        """
        registrations: list[QueueRegistration] = []
        owners: dict[str, PluginInfo] = {}
        for impl in self._impls("rabbitworker_queues"):
            info = self._info[impl.plugin_name]
            try:
                result = impl.function()
                if result is not None and not isinstance(result, Iterable):
                    raise TypeError(f"it returned {result!r}; return a list of QueueConfig")
                configs: list[object] = list(result) if result is not None else []
            except InvalidQueueConfigError as exc:
                raise PluginHookError(
                    info, "rabbitworker_queues", f"invalid QueueConfig: {exc}"
                ) from exc
            except Exception as exc:
                raise PluginHookError(info, "rabbitworker_queues", exc) from exc
            for config in configs:
                if not isinstance(config, QueueConfig):
                    raise PluginHookError(
                        info,
                        "rabbitworker_queues",
                        f"it returned {config!r}; return rabbitworker.QueueConfig objects",
                    )
                if config.name in owners:
                    raise DuplicateQueueError(config.name, owners[config.name], info)
                owners[config.name] = info
                registrations.append(QueueRegistration(config, info))
        return registrations

    async def startup(self, settings: HostSettings) -> None:
        """Run every ``rabbitworker_startup`` in load order; the first failure stops start-up."""
        for impl in self._impls("rabbitworker_startup"):
            try:
                await _resolve(impl.function(**_kwargs(impl, settings=settings)))
            except Exception as exc:
                raise PluginHookError(
                    self._info[impl.plugin_name], "rabbitworker_startup", exc
                ) from exc

    async def shutdown(self, settings: HostSettings) -> None:
        """Run every ``rabbitworker_shutdown`` in reverse load order; failures are logged."""
        for impl in reversed(self._impls("rabbitworker_shutdown")):
            try:
                await _resolve(impl.function(**_kwargs(impl, settings=settings)))
            except Exception as exc:
                logger.opt(exception=exc).error(
                    "plugin {} failed in rabbitworker_shutdown(): {}: {}",
                    self._info[impl.plugin_name].describe(),
                    type(exc).__name__,
                    exc,
                )

    def connection_changed(self, connected: bool, detail: str) -> None:
        """Call ``rabbitworker_connection_changed``; a plugin that raises is logged."""
        self._notify("rabbitworker_connection_changed", connected=connected, detail=detail)

    def consumer_changed(self, queue: str, consuming: bool, detail: str) -> None:
        """Call ``rabbitworker_consumer_changed``; a plugin that raises is logged."""
        self._notify(
            "rabbitworker_consumer_changed", queue=queue, consuming=consuming, detail=detail
        )

    def _notify(self, hook_name: str, **arguments: Any) -> None:
        for plugin, function in self._callers(hook_name, tuple(arguments)):
            try:
                function(*arguments.values())
            except Exception:
                logger.exception("plugin {}: {} raised", plugin, hook_name)

    def message_hooks(self) -> MessageHooks:
        """The per-message and publish hooks, resolved once for the hot path (see
        :class:`MessageHooks`); resolved again after a plugin is registered."""
        hooks = self._message_hooks
        if hooks is None:
            hooks = self._message_hooks = MessageHooks(
                self._callers("rabbitworker_message_received", ("delivery",)),
                self._callers("rabbitworker_message_settled", ("delivery", "outcome")),
                self._callers("rabbitworker_handler_context", ("delivery",)),
                self._callers(
                    "rabbitworker_publish_context",
                    ("exchange", "routing_key", "message_id", "headers"),
                ),
            )
        return hooks

    def _callers(self, hook_name: str, parameters: tuple[str, ...]) -> list[Caller]:
        """A hook's implementations in pluggy's call order, each taking ``parameters``
        positionally (an implementation may declare only some of them, by name)."""
        callers: list[Caller] = []
        # pluggy calls the list it keeps from its end: tryfirst, then the last registered.
        for impl in reversed(getattr(self._pm.hook, hook_name).get_hookimpls()):
            plugin = self._info[impl.plugin_name].describe()
            if tuple(impl.argnames) == parameters:
                callers.append((plugin, impl.function))
            else:

                def call(
                    *args: Any,
                    f: Callable[..., Any] = impl.function,
                    names: tuple[str, ...] = tuple(impl.argnames),
                ) -> Any:
                    return f(**{n: a for n, a in zip(parameters, args, strict=True) if n in names})

                callers.append((plugin, call))
        return callers

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        """A hook's implementations in load order (queues, start-up and shut-down)."""
        order = {name: index for index, name in enumerate(self._info)}
        impls = getattr(self._pm.hook, hook_name).get_hookimpls()
        return sorted(impls, key=lambda impl: order[impl.plugin_name])


#: The plugins of the host running in this process (see :func:`active`).
_active: HostPlugins | None = None


def active() -> HostPlugins:
    """The plugins that publishes made outside a host's own publisher go through
    (``publish_task``, ``rabbitworker-host publish``, ``dlq replay``): those of the host
    running in this process, else (a plain script, a CLI command) the built-ins, loaded on
    first use."""
    global _active
    if _active is None:
        _active = HostPlugins.builtins()
    return _active


def activate(plugins: HostPlugins | None) -> HostPlugins | None:
    """Make ``plugins`` the :func:`active` ones (a host does at start, and gives back the
    previous ones when it stops; ``None``: the built-ins again); returns the previous."""
    global _active
    previous, _active = _active, plugins
    return previous


def _importable(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def discover_entry_points() -> list[EntryPoint]:
    """The installed ``rabbitworker.queues`` entry points, one per name, sorted by name."""
    unique: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        unique.setdefault(entry_point.name, entry_point)
    return [unique[name] for name in sorted(unique)]


def _entry_point_info(entry_point: EntryPoint) -> PluginInfo:
    dist = entry_point.dist
    return PluginInfo(
        name=entry_point.name,
        distribution=dist.name if dist else None,
        version=dist.version if dist else None,
        module=entry_point.value,
    )


def _module_info(module_name: str) -> PluginInfo:
    top_level = module_name.split(".")[0]
    dists = packages_distributions().get(top_level, [])
    distribution = dists[0] if dists else None
    return PluginInfo(
        name=module_name,
        distribution=distribution,
        version=_dist_version(distribution) if distribution else None,
        module=module_name,
    )


def _dist_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except Exception:
        return None


def _kwargs(impl: pluggy.HookImpl, **available: Any) -> dict[str, Any]:
    return {name: available[name] for name in impl.argnames}


async def _resolve(value: object) -> object:
    """Hooks may return a value or an awaitable (pluggy itself is synchronous)."""
    if inspect.isawaitable(value):
        return await value
    return value


def iter_plugin_rows(registrations: Iterable[QueueRegistration]) -> list[dict[str, Any]]:
    """Queues as plain data, each with the plugin that contributed it (for ``queues --json``)."""
    return [
        {
            **registration.config.describe(),
            "plugin": {
                "name": registration.plugin.name,
                "distribution": registration.plugin.distribution,
                "version": registration.plugin.version,
            },
            "overrides": registration.overrides,
            "task_schemas": {
                task: spec.payload_schema()
                for task, spec in sorted(registration.config.handler_specs.items())
            },
        }
        for registration in registrations
    ]
