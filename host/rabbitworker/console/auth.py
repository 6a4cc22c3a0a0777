"""Who may use the console, and CSRF protection of everything that changes a queue.

- Without ``RABBITWORKER_CONSOLE_TOKEN`` the console only binds loopback; it still answers
  only requests whose ``Host`` is a loopback name (a web page cannot reach it through DNS
  rebinding), and state-changing requests need the session's CSRF token.
- With the token, every request needs ``Authorization: Bearer <token>`` or the session
  cookie the sign-in page sets (HttpOnly, SameSite=Strict). Bearer requests need no CSRF
  token (a browser never adds that header by itself); cookie requests that change
  anything must send the session's token in ``X-CSRF-Token``, and their ``Origin``, when
  given, must be the console's own.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "rabbitworker_console"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
#: Reachable without a token: the sign-in page and what it needs.
PUBLIC_PATHS = frozenset({"/signin", "/static/console.css"})


@dataclass(slots=True)
class Sessions:
    """Browser sessions of this process: session id → CSRF token."""

    csrf: dict[str, str] = field(default_factory=dict)

    def new(self) -> tuple[str, str]:
        session, token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.csrf[session] = token
        return session, token

    def token_of(self, session: str | None) -> str | None:
        return self.csrf.get(session) if session else None

    def end(self, session: str | None) -> None:
        if session:
            self.csrf.pop(session, None)


def same(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two secrets; ``None`` never matches."""
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str


class Guard:
    """ASGI middleware: refuses what the rules above do not allow, and tells the app who
    is asking (``request.state.session``, ``request.state.bearer``)."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        sessions: Sessions,
    ) -> None:
        self.app = app
        self.token = token
        self.sessions = sessions

    def check(self, request: Request) -> Refusal | None:
        state = request.state
        session = request.cookies.get(COOKIE)
        state.session = session if self.sessions.token_of(session) else None
        state.bearer = False
        if self.token is None:
            if _host_name(request.headers.get("host", "")) not in LOOPBACK_NAMES:
                return Refusal(403, "this console answers loopback names only (no token is set)")
        else:
            authorization = request.headers.get("authorization", "")
            scheme, _, given = authorization.partition(" ")
            if scheme.lower() == "bearer" and same(given.strip(), self.token):
                state.bearer = True
                return None
            if state.session is None:
                if request.url.path in PUBLIC_PATHS:
                    return None
                return Refusal(401, "sign in: this console needs its token")
        if request.method in SAFE_METHODS or request.url.path in PUBLIC_PATHS:
            return None
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            return Refusal(403, "cross-origin request refused")
        if not same(request.headers.get(CSRF_HEADER), self.sessions.token_of(state.session)):
            return Refusal(403, "missing or wrong CSRF token; reload the page")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        refusal = self.check(request)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await refusal_response(request, refusal.status, refusal.message)(scope, receive, send)


STATIC = Path(__file__).parent / "static"


def signin_page(message: str = "", status: int = 200) -> HTMLResponse:
    """The sign-in form, with ``message`` above it."""
    html = (STATIC / "signin.html").read_text(encoding="utf-8")
    note = f'<p class="problem" role="alert">{escape(message)}</p>' if message else ""
    return HTMLResponse(html.replace("<!--message-->", note), status_code=status)


def refusal_response(request: Request, status: int, message: str) -> Response:
    """A browser asking for a page gets the sign-in form; anything else gets JSON."""
    wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
    headers = {"WWW-Authenticate": 'Bearer realm="rabbitworker console"'} if status == 401 else {}
    if wants_page and status == 401:
        response: Response = signin_page(message, status)
    else:
        response = JSONResponse({"error": message}, status_code=status)
    response.headers.update(headers)
    return response
