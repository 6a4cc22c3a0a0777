"""Built-in plugin: OpenTelemetry tracing, on the same hooks any plugin can implement.

Registered when ``opentelemetry-api`` is importable (``pip install 'rabbitworker-host[otel]'``);
it records spans wherever an OpenTelemetry SDK is configured (``opentelemetry-instrument``, or
a ``TracerProvider`` set in code), following OpenTelemetry's messaging conventions:

- every publish gets a PRODUCER span ``"{destination} publish"`` (the exchange, or the
  routing key on the default exchange), and W3C trace context (``traceparent``,
  ``tracestate``, through the global propagator) goes into the message's AMQP headers;
- every handler call gets a CONSUMER span ``"{queue} process"``, a child of the span in
  the message's headers and current while the handler runs (async, or plain in its
  thread); a handler's exception is recorded on it and sets its status to ERROR;
- a retry or dead-letter copy is published in its handler's context, so its PRODUCER span
  is a child of that CONSUMER span; the retry copy carries the first attempt's span in
  ``x-rabbitworker-first-traceparent``, and every later attempt's span links to it;
- a publish outside any span of a message that already carries trace context (``dlq
  replay`` of a dead letter) continues that trace.

Without an SDK, the API's spans do nothing and the headers pass through unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rabbitworker.events import Delivery
from rabbitworker.hookspecs import hookimpl

#: On retry copies (and the dead letters and replays that follow): the first attempt's span.
HEADER_FIRST_TRACEPARENT = "x-rabbitworker-first-traceparent"

try:
    _version: str | None = version("rabbitworker-host")
except PackageNotFoundError:
    _version = None

_tracer = trace.get_tracer("rabbitworker", _version)
_traceparent = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads AMQP headers, whose strings may arrive as bytes and whose values may be
    anything (numbers, tables, timestamps)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_headers = _HeaderGetter()


@dataclass(frozen=True, slots=True)
class _Processing:
    """The message whose handler is running (or whose copy is being published)."""

    message_id: str | None
    span_context: SpanContext


_processing: ContextVar[_Processing | None] = ContextVar("rabbitworker_tracing", default=None)


@hookimpl(tryfirst=True)
def rabbitworker_handler_context(delivery: Delivery) -> contextlib.AbstractContextManager[None]:
    # tryfirst: outermost, so other plugins' handler contexts run inside the span.
    return _process(delivery)


@hookimpl(tryfirst=True)
def rabbitworker_publish_context(
    exchange: str, routing_key: str, message_id: str, headers: dict[str, Any]
) -> contextlib.AbstractContextManager[None]:
    return _publish(exchange, routing_key, message_id, headers)


@contextlib.contextmanager
def _process(delivery: Delivery) -> Iterator[None]:
    headers = delivery.headers
    first = _span_context(headers.get(HEADER_FIRST_TRACEPARENT))
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation": "process",
        "messaging.destination.name": delivery.queue,
        "rabbitworker.attempt": delivery.attempt,
    }
    if delivery.message_id is not None:
        attributes["messaging.message.id"] = delivery.message_id
    if delivery.task is not None:
        attributes["rabbitworker.task"] = delivery.task
    # Attached, not only used as the parent: baggage in the headers becomes current too.
    token = context.attach(propagate.extract(headers, getter=_headers))
    try:
        with _tracer.start_as_current_span(
            f"{delivery.queue} process",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(first, {"rabbitworker.link": "first attempt"})] if first else (),
        ) as span:
            processing = _processing.set(_Processing(delivery.message_id, span.get_span_context()))
            try:
                yield
            finally:
                _processing.reset(processing)
    finally:
        context.detach(token)


@contextlib.contextmanager
def _publish(
    exchange: str, routing_key: str, message_id: str, headers: dict[str, Any]
) -> Iterator[None]:
    token = None
    if not trace.get_current_span().get_span_context().is_valid:
        # Published outside any span: a message published again (a replayed dead letter)
        # continues the trace its headers carry; a new one starts a trace.
        token = context.attach(propagate.extract(headers, getter=_headers))
    try:
        destination = exchange or routing_key
        with _tracer.start_as_current_span(
            f"{destination} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation": "publish",
                "messaging.destination.name": destination,
                "messaging.rabbitmq.destination.routing_key": routing_key,
                "messaging.message.id": message_id,
            },
        ) as span:
            if span.get_span_context().is_valid:
                for field in propagate.get_global_textmap().fields:
                    headers.pop(field, None)
                propagate.inject(headers)
                processing = _processing.get()
                if (
                    processing is not None
                    and processing.message_id == message_id
                    and processing.span_context.is_valid
                ):
                    # A copy of the message being handled (a retry, a dead letter): keep
                    # pointing at its first attempt.
                    headers.setdefault(HEADER_FIRST_TRACEPARENT, _format(processing.span_context))
            yield
    finally:
        if token is not None:
            context.detach(token)


def _format(span_context: SpanContext) -> str:
    carrier: dict[str, str] = {}
    _traceparent.inject(
        carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(span_context))
    )
    return carrier["traceparent"]


def _span_context(traceparent: object) -> SpanContext | None:
    if traceparent is None:
        return None
    extracted = _traceparent.extract({"traceparent": traceparent}, getter=_headers)
    span_context = trace.get_current_span(extracted).get_span_context()
    return span_context if span_context.is_valid else None
