"""The console's Starlette app: a JSON API under ``/api``, live numbers as Server-Sent
Events, and one static page that uses them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
from jsonschema import Draft202012Validator
from loguru import logger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from rabbitworker import dlq as dead_letters
from rabbitworker.console import letters
from rabbitworker.console.auth import COOKIE, STATIC, Guard, Sessions, same, signin_page
from rabbitworker.console.drawing import topology_svg
from rabbitworker.console.management import Management
from rabbitworker.events import DeadLetterReason
from rabbitworker.plugins import QueueRegistration, iter_plugin_rows
from rabbitworker.settings import ConsoleSettings, HostSettings
from rabbitworker.topology import plan_topology

#: Seconds between two live updates of the numbers.
LIVE_INTERVAL = 2.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


class Console:
    """What the console knows: the installed queues, the broker, the sessions."""

    def __init__(
        self,
        settings: HostSettings,
        console: ConsoleSettings,
        registrations: Sequence[QueueRegistration],
    ) -> None:
        self.settings = settings
        self.console = console
        self.rows = iter_plugin_rows(registrations)
        self.amqp_url = settings.amqp_url
        self.management = Management(console.management_url, settings.amqp_url)
        self.sessions = Sessions()
        self.svg = topology_svg(plan_topology(registrations), registrations)
        self.dlqs = sorted({row["dlq"] for row in self.rows})

    # -- helpers ---------------------------------------------------------------------------

    def _dlq(self, request: Request) -> str:
        name = str(request.path_params["dlq"])
        if name not in self.dlqs:
            raise ApiError(404, f"{name!r} is not the DLQ of an installed queue")
        return name

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            data = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"the request is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "the request must be a JSON object")
        return data

    async def _stats(self) -> tuple[dict[str, Any], str | None]:
        try:
            stats = await self.management.queues()
        except httpx.HTTPError as exc:
            return {}, f"management API at {self.management.shown_url}: {type(exc).__name__}"
        return {name: vars_of(value) for name, value in stats.items()}, None

    def schema_of(self, queue: str | None, task: str | None) -> tuple[bool, Any]:
        """(is the task handled on that queue, its payload schema or None)."""
        for row in self.rows:
            if row["queue"] == queue and task in row["tasks"]:
                return True, row["task_schemas"].get(task)
        return False, None

    # -- pages -----------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def signin_form(self, request: Request) -> Response:
        if self.console.token is None:
            return RedirectResponse("/", status_code=303)
        return signin_page()

    async def signin(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if self.console.token is None:
            return RedirectResponse("/", status_code=303)
        if not same(given, self.console.token):
            await asyncio.sleep(0.5)  # slows down guessing
            logger.warning("console: a sign-in with a wrong token")
            return signin_page("That is not the console's token.", 401)
        session, _ = self.sessions.new()
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        return response

    async def signout(self, request: Request) -> Response:
        self.sessions.end(request.state.session)
        response = RedirectResponse("/signin" if self.console.token else "/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- API -------------------------------------------------------------------------------

    async def session(self, request: Request) -> Response:
        current: str | None = request.state.session
        csrf = self.sessions.token_of(current)
        new_session = None
        if csrf is None:
            new_session, csrf = self.sessions.new()
        response = _json(
            {
                "csrf": csrf,
                "signed_in": self.console.token is not None,
                "amqp_url": self.settings.masked_amqp_url,
                "management_url": self.management.shown_url,
                "vhost": self.management.vhost,
                "page_size": self.console.console_page_size,
                "dlqs": self.dlqs,
                "reasons": [str(reason) for reason in DeadLetterReason],
            }
        )
        if new_session is not None:
            response.set_cookie(COOKIE, new_session, httponly=True, samesite="strict", path="/")
        return response

    async def queues(self, request: Request) -> Response:
        return _json(await self.snapshot())

    async def snapshot(self) -> dict[str, Any]:
        stats, problem = await self._stats()
        queues = [
            {
                "queue": row["queue"],
                "routing_key": row["routing_key"],
                "exchange": row["exchange"],
                "prefetch_count": row["prefetch_count"],
                "dlx": row["dlx"],
                "dlq": row["dlq"],
                "tasks": row["tasks"],
                "plugin": row["plugin"]["name"],
                "stats": stats.get(row["queue"]),
            }
            for row in self.rows
        ]
        dlqs = [
            {
                "dlq": name,
                "sources": [row["queue"] for row in self.rows if row["dlq"] == name],
                "tasks": sorted(
                    {t for row in self.rows if row["dlq"] == name for t in row["tasks"]}
                ),
                "stats": stats.get(name),
            }
            for name in self.dlqs
        ]
        return {"queues": queues, "dlqs": dlqs, "problem": problem}

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            while True:
                data = orjson.dumps(await self.snapshot())
                yield b"event: stats\ndata: " + data + b"\n\n"
                await asyncio.sleep(LIVE_INTERVAL)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def letters_page(self, request: Request) -> Response:
        dlq = self._dlq(request)
        query = request.query_params
        try:
            offset = max(int(query.get("offset", 0)), 0)
            limit = min(max(int(query.get("limit", self.console.console_page_size)), 1), 1000)
        except ValueError as exc:
            raise ApiError(400, "offset and limit are whole numbers") from exc
        wanted = letters.LetterFilter.of(dict(query))
        page = await letters.page(self.amqp_url, dlq, wanted, offset, limit)
        return _json({"dlq": dlq, **page.as_dict()})

    async def letter(self, request: Request) -> Response:
        dlq = self._dlq(request)
        message_id = str(request.path_params["message_id"])
        found = await letters.find(self.amqp_url, dlq, message_id)
        if found is None:
            raise ApiError(404, f"no dead letter with message id {message_id!r} in {dlq}")
        handled, schema = self.schema_of(found["source_queue"], found["task"])
        return _json({**found, "handled": handled, "schema": schema})

    async def replay(self, request: Request) -> Response:
        dlq = self._dlq(request)
        data = await self._body(request)
        if "ids" in data:
            ids = data["ids"]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
                raise ApiError(400, "ids must be a non-empty list of message ids")
            chosen = set(ids)
            report = await dead_letters.replay(
                self.amqp_url, dlq, select=lambda letter: letter.message_id in chosen
            )
        elif isinstance(data.get("filter"), dict):
            wanted = letters.LetterFilter.of(data["filter"])
            report = await dead_letters.replay(self.amqp_url, dlq, select=wanted)
        else:
            raise ApiError(400, 'give "ids" (a list) or "filter" (an object)')
        logger.info(
            "console: replayed {} from {} ({} left, {} failed)",
            report.replayed,
            dlq,
            report.skipped,
            report.failed,
        )
        return _json(_report(report))

    async def replay_edited(self, request: Request) -> Response:
        dlq = self._dlq(request)
        message_id = str(request.path_params["message_id"])
        body = (await self._body(request)).get("body")
        if not isinstance(body, dict) or not isinstance(body.get("task"), str):
            raise ApiError(422, 'the message must be a JSON object with a string "task"')
        found = await letters.find(self.amqp_url, dlq, message_id)
        if found is None:
            raise ApiError(404, f"no dead letter with message id {message_id!r} in {dlq}")
        queue, task = found["source_queue"], body["task"]
        handled, schema = self.schema_of(queue, task)
        if not handled:
            raise ApiError(422, f"queue {queue!r} has no handler for task {task!r}; nothing sent")
        if schema is not None:
            problems = [
                {
                    "path": "payload" + "".join(f"[{p!r}]" for p in error.absolute_path),
                    "message": error.message,
                }
                for error in sorted(
                    Draft202012Validator(schema).iter_errors(body.get("payload")),
                    key=lambda e: list(map(str, e.absolute_path)),
                )
            ]
            if problems:
                raise ApiError(
                    422,
                    f"the payload does not match the schema of {task!r}; nothing sent",
                    schema_errors=problems,
                )
        report = await dead_letters.replay(
            self.amqp_url,
            dlq,
            select=lambda letter: letter.message_id == message_id,
            limit=1,
            bodies={message_id: orjson.dumps(body)},
        )
        logger.info("console: replayed {} edited from {}", message_id, dlq)
        return _json(_report(report))

    async def purge(self, request: Request) -> Response:
        dlq = self._dlq(request)
        if (await self._body(request)).get("confirm") != dlq:
            raise ApiError(400, f'to purge, confirm with the DLQ\'s name: {{"confirm": "{dlq}"}}')
        count = await dead_letters.purge(self.amqp_url, dlq)
        logger.warning("console: purged {} message(s) from {}", count, dlq)
        return _json({"purged": count})

    async def topology(self, request: Request) -> Response:
        return Response(self.svg, media_type="image/svg+xml")


def vars_of(stats: Any) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in stats.__slots__}


def _report(report: dead_letters.ReplayReport) -> dict[str, Any]:
    return {
        "replayed": report.replayed,
        "skipped": report.skipped,
        "failed": report.failed,
        "problems": report.problems,
    }


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _json({"error": exc.message, **exc.extra}, exc.status)


async def _lookup_error(request: Request, exc: Exception) -> Response:
    return _json({"error": str(exc)}, 404)


def create_app(
    settings: HostSettings,
    console_settings: ConsoleSettings,
    registrations: Sequence[QueueRegistration],
) -> ASGIApp:
    """The console for these settings and installed queues."""
    console = Console(settings, console_settings, registrations)
    api = "/api/dlqs/{dlq}"
    app = Starlette(
        routes=[
            Route("/", console.index),
            Route("/signin", console.signin_form, methods=["GET"]),
            Route("/signin", console.signin, methods=["POST"]),
            Route("/signout", console.signout, methods=["POST"]),
            Route("/api/session", console.session),
            Route("/api/queues", console.queues),
            Route("/api/events", console.events),
            Route("/api/topology.svg", console.topology),
            Route(f"{api}/letters", console.letters_page),
            Route(f"{api}/letters/{{message_id}}", console.letter),
            Route(f"{api}/letters/{{message_id}}/replay", console.replay_edited, methods=["POST"]),
            Route(f"{api}/replay", console.replay, methods=["POST"]),
            Route(f"{api}/purge", console.purge, methods=["POST"]),
            Mount("/static", StaticFiles(directory=Path(STATIC)), name="static"),
        ],
        exception_handlers={ApiError: _api_error, LookupError: _lookup_error},
    )
    app.state.console = console
    return Guard(app, console_settings.token, console.sessions)
