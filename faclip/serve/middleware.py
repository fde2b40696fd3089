"""The ASGI middlewares around the app: the body cap, security headers, HEAD as GET, the request log."""

import logging
import time
from typing import TYPE_CHECKING

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.routing import Match

if TYPE_CHECKING:
    from faclip.serve.metrics import Metrics

logger = logging.getLogger("faclip.serve")  # one logger for the server's lines, whichever module writes them

# The page loads its own script, style and photo previews (blob:) and talks only to this server.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MAX_LOGGED_PATH = 200

class BodyLimit:
    """413 for a request body over `max_bytes`: at once from Content-Length, else as soon as the stream passes it.

    Nothing past the cap is read, so a huge upload costs the server neither memory nor disk.
    """

    def __init__(self, app, max_bytes: int, detail: str):
        self.app, self.max_bytes, self.detail = app, max_bytes, detail

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            # Answer without reading the body (a client that sent `Expect: 100-continue` never sends it).
            response = JSONResponse({"detail": self.detail}, status_code=413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's body parsing: FastAPI answers it as a 413 JSON response.
                    raise HTTPException(413, detail=self.detail, headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeaders:
    """nosniff, no-referrer and a CSP without inline script on every response, /docs included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                            (b"content-security-policy", PAGE_CSP.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class HeadAsGet:
    """HEAD wherever GET is served: the app sees a GET; the headers go out, the body does not."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class RequestLog:
    """One log line per request: method, path (escaped; no query: it holds what users typed), status, latency.

    And the request's Prometheus counts, by route template (never the raw path)."""

    def __init__(self, app, metrics: "Metrics | None" = None):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        route = route_template(scope.get("app"), scope) if self.metrics is not None else None

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.perf_counter() - start
            logger.info("%s %s %d %.1f ms", scope["method"], log_safe(scope["path"]), status, seconds * 1000)
            if self.metrics is not None:
                self.metrics.observe_request(scope["method"], route, status, seconds)


def log_safe(text: str, limit: int = MAX_LOGGED_PATH) -> str:
    """`text` for a one-line log: control, format and line-break characters (a decoded %0A, an ANSI escape,
    a bidi override) as \\xNN / \\uNNNN escapes, backslashes doubled, cut at `limit` characters."""
    out = []
    for char in text[:limit]:
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable() or char == " ":
            out.append(char)
        else:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
                       if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(out) + ("..." if len(text) > limit else "")


def _routing_scope(scope, method: str) -> dict:
    # The request's path as the router first saw it (the router and mounts rewrite root_path as they go).
    return {"type": "http", "path": scope["path"], "root_path": "", "method": method}


def route_template(app, scope) -> str:
    """The route a request matches, as declared (`/search`, `/static`): a metrics label of bounded cardinality."""
    method = "GET" if scope["method"] == "HEAD" else scope["method"]
    for route in getattr(app, "routes", ()):
        if route.matches(_routing_scope(scope, method))[0] != Match.NONE:
            return route.path
    return "unmatched"


def allowed_methods(app, scope) -> list[str]:
    """Every method some route of `app` answers on this path (HEAD wherever GET), for a 405's Allow header."""
    methods = set()
    for route in app.routes:
        if route.matches(_routing_scope(scope, "GET"))[0] != Match.NONE:  # PARTIAL: the path matched, not the method
            methods |= set(getattr(route, "methods", None) or {"GET"})  # a Mount (static files) serves GET
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)

