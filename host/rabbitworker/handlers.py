"""How a handler is called, decided once per handler at start-up.

A handler's first parameter receives the message. Unannotated (or ``dict``) it is the
whole decoded body; annotated with a pydantic model it is the body's ``payload`` validated
into that model (a validation failure dead-letters the message as ``invalid-payload``,
never retried). A parameter annotated :class:`~rabbitworker.TaskContext` receives the
context. ``async def`` handlers are awaited; plain ``def`` handlers run in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from rabbitworker.context import TaskContext, _current

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

    def invoker(self) -> Invoker:
        """A coroutine function taking the decoded body, built for this handler's shape."""
        handler, model, context = self.handler, self.payload_model, self.context_parameter
        if model is None and context is None:
            return handler if self.is_async else _in_thread(handler)
        call = handler if self.is_async else _in_thread(handler)

        async def typed(body: dict[str, Any]) -> Any:
            argument: Any = model.model_validate(body.get("payload", {})) if model else body
            if context is None:
                return await call(argument)
            return await call(argument, **{context: _current.get()})

        return typed


def _in_thread(handler: Handler) -> Invoker:
    async def run_in_thread(*args: Any, **kwargs: Any) -> Any:
        # to_thread copies the context, so current_task() works in plain handlers too.
        result = await asyncio.to_thread(handler, *args, **kwargs)
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
