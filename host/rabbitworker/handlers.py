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
import typing
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
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


def handlers_running_in_threads() -> int:
    """Plain ``def`` handlers running right now (a timed-out one may still be running)."""
    return _running_in_threads


def _in_thread(handler: Handler, executor: Executor | None) -> Invoker:
    def tracked(*args: Any, **kwargs: Any) -> Any:
        global _running_in_threads
        with _running_lock:
            _running_in_threads += 1
        try:
            return handler(*args, **kwargs)
        finally:
            with _running_lock:
                _running_in_threads -= 1

    async def run_in_thread(*args: Any, **kwargs: Any) -> Any:
        # The context is copied, so current_task() works in plain handlers too.
        context = contextvars.copy_context()
        call = functools.partial(context.run, tracked, *args, **kwargs)
        result = await asyncio.get_running_loop().run_in_executor(executor, call)
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
