"""The web console in a real browser, against a console process on a real broker vhost:
browse, filter, replay, edit; exact counts read back over AMQP. Saves the README's
screenshots under docs/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from brokertools import AmqpClient, wait_for
from consoletools import ConsoleProcess, Letter, fill_dlq, run_async
from opstools import DLQ

from rabbitworker import dlq
from rabbitworker.events import DeadLetterReason

pytestmark = [pytest.mark.broker, pytest.mark.browser]

DOCS = Path(__file__).parent.parent.parent / "docs"
Page = Any  # playwright.sync_api.Page
#: The page writes ranges with an en dash (U+2013) between the numbers.
DASH = "\u2013"


def two_hundred() -> list[Letter]:
    return [
        Letter(
            f"dl-{i:03d}",
            "other.q" if i % 4 == 0 else "probe.q",
            "work" if i % 3 == 0 else "fail",
            {"id": f"dl-{i:03d}", "order": i},
            error="disk full" if i % 5 == 0 else "connection refused",
            reason=DeadLetterReason.TIMEOUT if i % 10 == 7 else DeadLetterReason.HANDLER_ERROR,
        )
        for i in range(200)
    ]


def ids(url: str, count: int | None = None) -> list[str | None]:
    """The DLQ's message ids in order. The page may be reading the DLQ at that moment (its
    messages are borrowed for a few milliseconds): with ``count``, read until all are seen."""

    def read() -> list[str | None] | None:
        found = [letter.message_id for letter in run_async(dlq.show(url, DLQ))]
        return found if count is None or len(found) == count else None

    return wait_for(read, message=f"{count} dead letters readable")  # type: ignore[no-any-return]


async def _ready(url: str, queue: str) -> int:
    async with AmqpClient(url) as client:
        return await client.ready(queue)


def ready(url: str, queue: str) -> int:
    return run_async(_ready(url, queue))


def open_dead_letters(page: Page, console: ConsoleProcess) -> None:
    page.goto(f"{console.url}/#dead-letters")
    page.wait_for_selector("body[data-ready=yes]")
    page.wait_for_selector("#letters tbody tr")


def apply_filter(page: Page, **values: str) -> None:
    for name, value in values.items():
        field = page.locator(f"#f-{name}")
        if name == "text":
            field.fill(value)
        else:
            field.select_option(value)
    with page.expect_response(lambda r: "/letters?" in r.url):
        page.click("#apply")


def test_browsing_and_filtering_200_dead_letters_leaves_the_dlq_as_it_was(
    console: ConsoleProcess, declared: str, page: Page
) -> None:
    written = two_hundred()
    run_async(fill_dlq(declared, written))
    before = ids(declared)

    open_dead_letters(page, console)
    assert page.locator("#letters tbody tr").count() == 50
    assert page.text_content("#summary") == f"1{DASH}50 of 200 dead letters"
    first = page.locator("#letters tbody tr").first
    assert "ValueError: disk full" in first.text_content()
    with page.expect_response(lambda r: "/letters?" in r.url):
        page.click("#next")
    page.wait_for_selector("#letters tbody tr[data-id=dl-050]")
    assert page.text_content("#summary") == f"51{DASH}100 of 200 dead letters"

    apply_filter(page, queue="other.q", text="disk")
    expected = [w.message_id for w in written if w.queue == "other.q" and w.error == "disk full"]
    # Read the rows in one go: a live update may redraw the table between two reads.
    shown = page.eval_on_selector_all(
        "#letters tbody tr", "rows => rows.map(row => row.dataset.id)"
    )
    assert shown == expected
    assert (
        page.text_content("#summary")
        == f"1{DASH}{len(expected)} of {len(expected)} matching (DLQ depth 200)"
    )

    apply_filter(page, queue="", text="", reason="timeout", task="fail")
    expected = [w.message_id for w in written if w.reason == "timeout" and w.task == "fail"]
    assert page.locator("#letters tbody tr").count() == len(expected)

    page.click("#letters tbody tr >> nth=0")
    page.wait_for_selector("#detail:not([hidden])")
    assert "x-rabbitworker-exception-type" in page.text_content("#detail-headers")
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console-dead-letters.png"), full_page=True)

    assert ids(declared, len(before)) == before


def test_replaying_a_filtered_subset_moves_exactly_those_to_their_queue(
    console: ConsoleProcess, declared: str, page: Page
) -> None:
    written = two_hundred()
    run_async(fill_dlq(declared, written))
    before = ids(declared)
    open_dead_letters(page, console)

    apply_filter(page, queue="other.q", task="work")
    chosen = [w.message_id for w in written if w.queue == "other.q" and w.task == "work"]
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda r: r.url.endswith("/replay")):
        page.click("#replay-matching")
    page.wait_for_selector(f"#notice:has-text('replayed {len(chosen)}, failed 0')")

    assert ready(declared, "other.q") == len(chosen)
    assert ready(declared, "probe.q") == 0
    left = [i for i in before if i not in chosen]
    assert ids(declared, len(left)) == left

    apply_filter(page, queue="", task="")
    page.check("#letters tbody tr[data-id=dl-001] input")
    page.check("#letters tbody tr[data-id=dl-002] input")
    with page.expect_response(lambda r: r.url.endswith("/replay")):
        page.click("#replay-selected")
    page.wait_for_selector("#notice:has-text('replayed 2, failed 0')")

    assert ready(declared, "probe.q") == 2
    left = [i for i in before if i not in {*chosen, "dl-001", "dl-002"}]
    assert ids(declared, len(left)) == left


def test_an_edit_the_schema_rejects_sends_nothing_and_a_valid_edit_is_replayed(
    console: ConsoleProcess, declared: str, page: Page
) -> None:
    run_async(
        fill_dlq(
            declared,
            [
                Letter("greet-1", "typed.queue", "greet", {"name": "", "times": 1}),
                *two_hundred()[:3],
            ],
        )
    )
    open_dead_letters(page, console)
    page.click("#letters tbody tr[data-id=greet-1]")
    page.wait_for_selector("#detail:not([hidden])")

    page.fill("#edit-body", '{"task": "greet", "payload": {"name": "", "times": "twice"}}')
    page.click("#replay-edited")
    page.wait_for_selector("#edit-errors:not([hidden])")
    errors = page.text_content("#edit-errors")
    assert "does not match the schema of 'greet'; nothing sent" in errors
    assert "payload['times']" in errors
    assert "payload['name']" in errors
    page.screenshot(path=str(DOCS / "console-edit.png"), full_page=True)
    assert ready(declared, "typed.queue") == 0
    assert ids(declared, 4) == ["greet-1", "dl-000", "dl-001", "dl-002"]

    page.fill("#edit-body", '{"task": "greet", "payload": {"name": "Ada", "times": 2}}')
    with page.expect_response(lambda r: r.url.endswith("/greet-1/replay")):
        page.click("#replay-edited")
    page.wait_for_selector("#notice:has-text('replayed 1, failed 0')")

    assert ids(declared, 3) == ["dl-000", "dl-001", "dl-002"]

    async def replayed() -> list[Any]:
        async with AmqpClient(declared) as client:
            return [m.body for m in await client.take_all("typed.queue")]

    assert run_async(replayed()) == [b'{"task":"greet","payload":{"name":"Ada","times":2}}']


def test_screenshots_of_the_queues_and_topology_pages_with_live_numbers(
    console: ConsoleProcess, declared: str, page: Page
) -> None:
    run_async(fill_dlq(declared, two_hundred()[:40]))
    page.goto(f"{console.url}/#queues")
    page.wait_for_selector("body[data-ready=yes]")
    # The management API reports new depths a few seconds late; the page updates itself.
    page.wait_for_selector(
        "#dlqs-table tr[data-dlq='tasks.dlq'] td.depth:text-is('40')", timeout=30_000
    )
    page.wait_for_selector("#live.on")
    assert page.locator("#queues-table tbody tr").count() == 3
    page.screenshot(path=str(DOCS / "console-queues.png"), full_page=True)

    page.click("nav a[data-view=topology]")
    page.wait_for_selector("#topology svg g[data-node='q:tasks.dlq']")
    assert page.locator("#topology svg g[data-node='x:tasks.dlx']").count() == 1
    assert page.locator("#topology svg g.retry").count() >= 1
    page.screenshot(path=str(DOCS / "console-topology.png"), full_page=True)


def test_measure_first_page_load_with_10000_dead_letters_and_replay_throughput(
    console: ConsoleProcess, declared: str, page: Page
) -> None:
    count = 10_000
    run_async(
        fill_dlq(
            declared, [Letter(f"big-{i:05d}", "probe.q", "fail", {"i": i}) for i in range(count)]
        )
    )
    started = time.perf_counter()
    open_dead_letters(page, console)
    page_load = time.perf_counter() - started
    assert page.text_content("#summary") == f"1{DASH}50 of {count} dead letters"

    started = time.perf_counter()
    response = httpx.post(
        f"{console.url}/api/dlqs/{DLQ}/replay",
        json={"filter": {}},
        headers={"X-CSRF-Token": page.evaluate("state.session.csrf")},
        cookies={c["name"]: c["value"] for c in page.context.cookies()},
        timeout=300,
    )
    replay_seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert response.json()["replayed"] == count
    wait_for(lambda: ready(declared, "probe.q") == count, message="all replayed")
    assert ready(declared, DLQ) == 0
    print(
        f"\nconsole with {count} dead letters: first page loaded in {page_load:.2f} s; "
        f"replayed {count} in {replay_seconds:.1f} s = {count / replay_seconds:.0f} messages/s"
    )
