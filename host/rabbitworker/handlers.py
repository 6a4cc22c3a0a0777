"""How a handler is called, decided once per handler at start-up.

A handler's first parameter receives the message. Unannotated (or ``dict``) it is the
whole decoded body; annotated with a pydantic model it is the body's ``payload`` validated
into that model (a validation failure dead-letters the message as ``invalid-payload``,
never retried). A parameter annotated :class:`~rabbitworker.TaskContext` receives the
context. ``async def`` handlers are awaited; plain ``def`` handlers run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import time
import typing
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from rabbitworker.context import TaskContext, _current
from rabbitworker.errors import InvalidPayloadError

Handler = Callable[..., Any]
Invoker = Callable[[dict[str, Any]], Awaitable[Any]]


class HandlerSignatureError(TypeError):
    """A handler's parameters cannot be filled from a message."""


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What the host learned about a handler by inspecting it once."""

    handler: Handler
    is_async: bool
    payload_model: type[BaseModel] | None
    context_parameter: str | None

    @classmethod
    def inspect(cls, handler: Handler) -> HandlerSpec:
        """Inspect ``handler``'s signature and annotations.

        :raises HandlerSignatureError: it takes no parameter, or more than the message and
            a TaskContext.
        """
        target = handler
        if not (inspect.isfunction(handler) or inspect.ismethod(handler)) and not isinstance(
            handler, functools.partial
        ):
            target = getattr(handler, "__call__", handler)  # noqa: B004 - callable objects
        unwrapped = inspect.unwrap(target)
        is_async = any(
            inspect.iscoroutinefunction(f) or asyncio.iscoroutinefunction(f)
            for f in (handler, target, unwrapped)
        )
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            # Some builtins and C callables hide their signature: call them with the body.
            return cls(handler, is_async, None, None)
        try:
            hints = typing.get_type_hints(unwrapped)
        except Exception:
            hints = {}
        parameters = [
            p
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is p.empty
        ]
        context_parameter = next(
            (p.name for p in parameters if hints.get(p.name) is TaskContext), None
        )
        message_parameters = [p for p in parameters if p.name != context_parameter]
        if len(message_parameters) > 1 or (
            not message_parameters and not _takes_positional(signature)
        ):
            raise HandlerSignatureError(
                f"handler {_name(handler)} must take one parameter for the message (and "
                f"optionally one annotated TaskContext); it takes {len(message_parameters)} "
                f"required parameter(s): {', '.join(p.name for p in message_parameters) or '-'}"
            )
        model = hints.get(message_parameters[0].name) if message_parameters else None
        payload_model = model if isinstance(model, type) and issubclass(model, BaseModel) else None
        return cls(handler, is_async, payload_model, context_parameter)

    def payload_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the payload must match, for typed handlers."""
        return self.payload_model.model_json_schema() if self.payload_model else None

    def invoker(self, executor: Executor | None = None) -> Invoker:
        """A coroutine function taking the decoded body, built for this handler's shape.

        :param executor: where plain ``def`` handlers run (default: the loop's default).
        """
        handler, model, context = self.handler, self.payload_model, self.context_parameter
        call = handler if self.is_async else _in_thread(handler, executor)
        if model is None and context is None:
            return call

        async def typed(body: dict[str, Any]) -> Any:
            argument: Any = body
            if model is not None:
                payload = body.get("payload")
                if not isinstance(payload, dict):
                    raise InvalidPayloadError(
                        f"the message has no 'payload' object (got {type(payload).__name__}); "
                        f"task {body.get('task')!r} expects {model.__name__}: "
                        f"{', '.join(model.model_fields)}"
                    )
                argument = model.model_validate(payload)
            if context is None:
                return await call(argument)
            return await call(argument, **{context: _current.get()})

        return typed


_running_in_threads = 0
_running_lock = threading.Lock()
_fallback: ThreadPoolExecutor | None = None


def _fallback_executor() -> ThreadPoolExecutor:
    """For plain handlers called without the host's pool (tools, tests)."""
    global _fallback
    if _fallback is None:
        _fallback = ThreadPoolExecutor(thread_name_prefix="rabbitworker-handler")
    return _fallback


def handlers_running_in_threads() -> int:
    """Plain ``def`` handlers running right now (a timed-out one may still be running)."""
    return _running_in_threads


class RunSlot:
    """One handler run, as the consumer sees it: when it really started (a plain handler
    starts when its thread does) and when it really ended (a timed-out thread goes on)."""

    __slots__ = ("_loop", "_on_end", "ended", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_end: Callable[[], None]) -> None:
        self._loop = loop
        self._on_end = on_end
        self.started: float | None = None
        self.ended = False

    def start(self) -> None:
        self.started = time.monotonic()

    def end(self) -> None:
        """Call once when the handler has really returned (from any thread)."""
        if threading.get_ident() == _loop_thread(self._loop):
            self._finish()
        else:
            self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.ended:
            self.ended = True
            self._on_end()


_loop_threads: dict[int, int] = {}


def _loop_thread(loop: asyncio.AbstractEventLoop) -> int:
    return _loop_threads.get(id(loop), -1)


def bind_loop_thread(loop: asyncio.AbstractEventLoop) -> None:
    """Remember which thread runs ``loop`` (so :meth:`RunSlot.end` knows where it is)."""
    _loop_threads[id(loop)] = threading.get_ident()


#: The run of the handler being called (set by the consumer around the call).
current_run: contextvars.ContextVar[RunSlot | None] = contextvars.ContextVar(
    "rabbitworker_run", default=None
)


def _in_thread(handler: Handler, executor: Executor | None) -> Invoker:
    def tracked(slot: RunSlot | None, *args: Any, **kwargs: Any) -> Any:
        global _running_in_threads
        with _running_lock:
            _running_in_threads += 1
        if slot is not None:
            slot.start()
        try:
            return handler(*args, **kwargs)
        finally:
            with _running_lock:
                _running_in_threads -= 1
            if slot is not None:
                slot.end()

    async def run_in_thread(*args: Any, **kwargs: Any) -> Any:
        # The context is copied, so current_task() works in plain handlers too.
        context = contextvars.copy_context()
        slot = current_run.get()
        call = functools.partial(context.run, tracked, slot, *args, **kwargs)
        submitted = (executor or _fallback_executor()).submit(call)
        try:
            result = await asyncio.wrap_future(submitted)
        except asyncio.CancelledError:
            # Cancelled before a thread took it: it will never run, so it has ended.
            if submitted.cancel() and slot is not None:
                slot.end()
            raise
        if inspect.isawaitable(result):
            result = await result
        return result

    return run_in_thread


def _takes_positional(signature: inspect.Signature) -> bool:
    return any(
        p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in signature.parameters.values()
    )


def _name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
