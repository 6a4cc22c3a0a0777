"""OpenTelemetry tracing (the built-in ``rabbitworker.tracing`` plugin), end to end.

One scenario runs once for the module on a real broker, with a real host in this process and
the SDK's in-memory exporter behind the global TracerProvider: ``publish_task`` of a task
that fails on its first attempt and succeeds on its retry, of one that fails until it is
replayed (retried, dead-lettered, ``dlq replay``-ed, then handled), and of a plain ``def``
task. The tests read the spans it left. ``pytest -s`` prints their tree.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from brokertools import AmqpClient, Broker, create_vhost, delete_vhost
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from rabbitworker import QueueConfig, current_task, hookimpl, publish_task
from rabbitworker.dlq import replay
from rabbitworker.plugins import HostPlugins
from rabbitworker.settings import HostSettings
from rabbitworker.testing import BrokerHost
from rabbitworker.tracing import HEADER_FIRST_TRACEPARENT

pytestmark = pytest.mark.broker

QUEUE = "traced.queue"

_exporter = InMemorySpanExporter()


def _install_exporter() -> InMemorySpanExporter:
    """The global TracerProvider (set once per process) exporting to ``_exporter``."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_rabbitworker_test_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        provider._rabbitworker_test_exporter = True  # type: ignore[attr-defined]
    return _exporter


# -- the plugin under test -----------------------------------------------------------------

#: message id → the span a plain handler saw as current, in its thread.
seen_in_thread: dict[str, SpanContext] = {}


async def flaky(message: dict[str, Any]) -> str:
    if current_task().attempt == 1:
        raise ValueError("the first attempt fails")
    return "done"


async def broken(message: dict[str, Any]) -> str:
    if "x-rabbitworker-replayed-from" not in current_task().headers:
        raise RuntimeError("broken until replayed")
    return "fixed"


def plain(message: dict[str, Any]) -> str:
    message_id = current_task().message_id
    assert message_id is not None
    seen_in_thread[message_id] = trace.get_current_span().get_span_context()
    return "plain"


@hookimpl
def rabbitworker_queues() -> list[QueueConfig]:
    return [
        QueueConfig(
            QUEUE,
            "traced",
            {"flaky": flaky, "broken": broken, "plain": plain},
            max_retries=1,
            retry_delays=[0.2],
        )
    ]


# -- the scenario --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    spans: list[ReadableSpan]
    flaky: str
    broken: str
    plain: str
    delayed: str

    def of(self, message_id: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
        """The spans of one message (in start order), optionally of one kind."""
        return sorted(
            (
                s
                for s in self.spans
                if (s.attributes or {}).get("messaging.message.id") == message_id
                and (kind is None or s.kind is kind)
            ),
            key=lambda s: s.start_time or 0,
        )

    def by_id(self) -> dict[int, ReadableSpan]:
        return {s.context.span_id: s for s in self.spans if s.context is not None}


async def _until(condition: Callable[[], bool], timeout: float = 15.0) -> None:  # noqa: ASYNC109
    """Poll with a deadline: the exporter tells no one when a span ends."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _run_scenario(amqp_url: str, vhost: str, exporter: InMemorySpanExporter) -> Scenario:
    host = BrokerHost(amqp_url, vhost, HostPlugins.select(sys.modules[__name__]))
    await host.start()
    try:
        flaky_id = await publish_task({"task": "flaky"}, "traced")
        broken_id = await publish_task({"task": "broken"}, "traced")
        plain_id = await publish_task({"task": "plain"}, "traced")
        delayed_id = await publish_task({"task": "plain"}, "traced", delay=1)
        assert (await host.wait_for(delayed_id)).acked
        assert (await host.wait_for(flaky_id)).acked
        assert (await host.wait_for(plain_id)).acked
        assert (await host.wait_for(broken_id)).dead_lettered
        report = await replay(amqp_url, "tasks.dlq")
        assert report.replayed == 1, report.problems

        def replayed_handled() -> bool:
            return any(
                (s.attributes or {}).get("messaging.message.id") == broken_id
                and s.kind is SpanKind.CONSUMER
                and s.status.status_code is not StatusCode.ERROR
                for s in exporter.get_finished_spans()
            )

        await _until(replayed_handled)
    finally:
        await host.stop()
    spans = list(exporter.get_finished_spans())
    return Scenario(spans, flaky_id, broken_id, plain_id, delayed_id)


@pytest.fixture(scope="module")
def scenario(management_api: str) -> Iterator[Scenario]:
    exporter = _install_exporter()
    exporter.clear()
    vhost = create_vhost(management_api)
    amqp_url = Broker(vhost, management_api).amqp_url
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RABBITWORKER_AMQP_URL", amqp_url)
        try:
            yield asyncio.run(_run_scenario(amqp_url, vhost, exporter))
        finally:
            delete_vhost(vhost, management_api)


def span_tree(spans: Sequence[ReadableSpan]) -> str:
    """One line per span, children indented under their parent: name, kind, status, parent."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None else None
        children.setdefault(parent if parent in by_id else None, []).append(s)
    lines: list[str] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        parent = by_id.get(span.parent.span_id) if span.parent is not None else None
        status = " ERROR" if span.status.status_code is StatusCode.ERROR else ""
        links = "".join(
            f" [link: {by_id[link.context.span_id].name}]"
            for link in span.links
            if link.context.span_id in by_id
        )
        lines.append(
            f"{'  ' * depth}{span.name}  {span.kind.name}{status}"
            f"  (parent: {parent.name if parent else '-'}){links}"
        )
        for child in sorted(children.get(span.context.span_id, []), key=_start):  # type: ignore[union-attr]
            walk(child, depth + 1)

    for root in sorted(children.get(None, []), key=_start):
        lines.append(f"trace {root.context.trace_id:032x}")  # type: ignore[union-attr]
        walk(root, 1)
    return "\n".join(lines)


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


# -- one trace, parent by parent -----------------------------------------------------------


def test_one_trace_runs_from_publish_task_through_retry_dead_letter_and_replay(
    scenario: Scenario,
) -> None:
    print("\n" + span_tree(scenario.spans))
    spans = scenario.of(scenario.broken)

    assert [(s.name, s.kind) for s in spans] == [
        ("tasks publish", SpanKind.PRODUCER),
        (f"{QUEUE} process", SpanKind.CONSUMER),
        (spans[2].name, SpanKind.PRODUCER),  # the retry copy, to its delay queue
        (f"{QUEUE} process", SpanKind.CONSUMER),
        ("tasks.dlx publish", SpanKind.PRODUCER),
        (f"{QUEUE} publish", SpanKind.PRODUCER),  # dlq replay, on the default exchange
        (f"{QUEUE} process", SpanKind.CONSUMER),
    ]
    assert spans[2].name.startswith(f"{QUEUE}.retry.")
    assert len({s.context.trace_id for s in spans if s.context is not None}) == 1
    # Each span is the child of the one before: publish, handler, its copy, ..., replay.
    assert spans[0].parent is None
    for parent, child in itertools.pairwise(spans):
        assert child.parent is not None
        assert parent.context is not None
        assert child.parent.span_id == parent.context.span_id, (child.name, parent.name)


def test_a_retried_message_stays_in_its_trace(scenario: Scenario) -> None:
    spans = scenario.of(scenario.flaky)

    assert [s.kind for s in spans] == [
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
    ]
    assert len({s.context.trace_id for s in spans if s.context is not None}) == 1


def test_consumer_spans_are_children_of_producer_spans_and_copies_of_consumer_spans(
    scenario: Scenario,
) -> None:
    by_id = scenario.by_id()
    for span in scenario.spans:
        if span.parent is None:
            assert span.name == "tasks publish", span.name
            continue
        parent = by_id[span.parent.span_id]
        if span.kind is SpanKind.CONSUMER:
            assert parent.kind is SpanKind.PRODUCER, span.name
        elif span.name == f"{QUEUE} publish":  # replay: continues the dead letter's trace
            assert parent.name == "tasks.dlx publish"
        else:  # a retry or dead-letter copy, published after its handler
            assert parent.kind is SpanKind.CONSUMER, span.name


def test_a_delayed_message_is_traced_from_its_publish_to_its_handler(scenario: Scenario) -> None:
    publish, process = scenario.of(scenario.delayed)

    assert (publish.name, publish.kind) == ("tasks publish", SpanKind.PRODUCER)
    assert (publish.attributes or {})["messaging.destination.name"] == "tasks"
    assert (process.name, process.kind) == (f"{QUEUE} process", SpanKind.CONSUMER)
    assert process.parent is not None
    assert publish.context is not None
    assert process.parent.span_id == publish.context.span_id, "through the delay tiers"


def test_spans_carry_the_messaging_conventions(scenario: Scenario) -> None:
    publish, process, *_ = scenario.of(scenario.flaky)

    assert publish.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation": "publish",
        "messaging.destination.name": "tasks",
        "messaging.rabbitmq.destination.routing_key": "traced",
        "messaging.message.id": scenario.flaky,
    }
    assert process.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation": "process",
        "messaging.destination.name": QUEUE,
        "messaging.message.id": scenario.flaky,
        "rabbitworker.task": "flaky",
        "rabbitworker.attempt": 1,
    }


def test_a_handler_error_is_recorded_on_its_consumer_span(scenario: Scenario) -> None:
    first, second = scenario.of(scenario.flaky, SpanKind.CONSUMER)

    assert first.status.status_code is StatusCode.ERROR
    [event] = [e for e in first.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "the first attempt fails"
    assert second.status.status_code is not StatusCode.ERROR
    assert not second.events


def test_a_retried_attempt_links_to_the_first_attempts_span(scenario: Scenario) -> None:
    for message_id in (scenario.flaky, scenario.broken):
        first, *later = scenario.of(message_id, SpanKind.CONSUMER)
        assert first.context is not None
        assert not first.links
        for span in later:
            assert [link.context.span_id for link in span.links] == [first.context.span_id]


def test_a_plain_handler_sees_its_consumer_span_as_current_in_its_thread(
    scenario: Scenario,
) -> None:
    [process] = scenario.of(scenario.plain, SpanKind.CONSUMER)

    assert scenario.plain in seen_in_thread
    assert seen_in_thread[scenario.plain] == process.context


# -- the CLI, and without opentelemetry ----------------------------------------------------

#: The CLI with an SDK configured in code, its spans printed on stderr.
TRACED_CLI = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
trace.set_tracer_provider(provider)
from rabbitworker.cli import main
main()
"""


async def test_cli_publish_sends_the_trace_context_of_its_producer_span(
    run_cli: Callable[..., Any], amqp_url: str, amqp: AmqpClient
) -> None:
    from opstools import declare_like_the_host

    await declare_like_the_host(amqp_url, [{"name": "probe.q", "routing_key": "probe"}])

    result = await asyncio.to_thread(
        run_cli,
        "publish",
        "work",
        "--routing-key",
        "probe",
        amqp_url=amqp_url,
        command=(sys.executable, "-c", TRACED_CLI),
    )

    assert result.returncode == 0, result.stderr
    [message] = await amqp.take_all("probe.q")
    traceparent = (message.headers or {})["traceparent"]
    assert isinstance(traceparent, str)
    _, trace_id, span_id, _ = traceparent.split("-")
    exported = json.loads(result.stderr[result.stderr.index("{") : result.stderr.rindex("}") + 1])
    assert exported["name"] == "tasks publish"
    assert exported["kind"] == "SpanKind.PRODUCER"
    assert exported["context"]["trace_id"] == f"0x{trace_id}"
    assert exported["context"]["span_id"] == f"0x{span_id}"
    assert HEADER_FIRST_TRACEPARENT not in (message.headers or {})


def test_the_tracing_plugin_is_not_registered_without_opentelemetry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "rabbitworker.tracing", raising=False)

    plugins = HostPlugins.load(HostSettings(disable_plugin_autoload=True))

    assert [p.name for p in plugins.plugins] == ["rabbitworker.messagelog"]
    assert "rabbitworker.tracing" not in sys.modules


def test_the_tracing_plugin_is_a_builtin_when_opentelemetry_is_installed() -> None:
    plugins = HostPlugins.load(HostSettings(disable_plugin_autoload=True))

    assert [p.name for p in plugins.plugins] == ["rabbitworker.messagelog", "rabbitworker.tracing"]
    assert all(p.distribution == "rabbitworker-host" for p in plugins.plugins)


def test_without_an_sdk_a_publish_leaves_the_trace_context_in_its_headers_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.trace import NoOpTracer

    from rabbitworker import tracing

    # What the API gives when no SDK is configured.
    monkeypatch.setattr(tracing, "_tracer", NoOpTracer())
    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    headers: dict[str, Any] = {"traceparent": traceparent}

    with tracing.rabbitworker_publish_context("tasks", "rk", "m-1", headers):
        pass

    assert headers == {"traceparent": traceparent}
