"""`python -m faclip serve`: the `Retriever` as a JSON service (FastAPI on uvicorn) and a search page.

    GET  /healthz                          {"status": "ok"} as soon as the port is open (liveness)
    GET  /readyz                           {"ready": true} once the models are loaded, else 503 (readiness)
    GET  /metrics                          Prometheus text: requests, latency, batch sizes, encode time
    GET  /info                             passages, dim, factory, manifest hashes, model sources
    GET  /search?text=...&k=5&per_dish=2   {"hits": [...], "took_ms": ...}
    POST /search        {"text": ...} or {"image": "<base64>"} or both (a question about the photo), "k", "per_dish"
    POST /search/image  multipart field `file`, optional field `text` (a question about it) (?k=5&per_dish=2)
    GET  /                                 the page (faclip/static), GET /docs the OpenAPI page (offline)

A hit is `Hit.to_dict()`, the rows `python -m faclip search --json` prints: one code path. Bad input is a
4xx with `{"detail": one line}` (at most MAX_DETAIL_CHARS), as /openapi.json says; bodies over the upload cap
get 413 before they are read. HEAD is answered wherever GET is. Concurrent queries are encoded in batches
(`Retriever.start_batching`). Endpoints only read: nothing the server does changes an artifact.
"""

import base64
import binascii
import logging
import os
import threading
import time
from pathlib import Path
from typing import Annotated

import fastapi_offline
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from faclip.errors import FaclipError
from faclip.models import read_model_info
from faclip.search import Retriever, check_text_query

logger = logging.getLogger(__name__)
disable_created_metrics()  # no `_created` timestamp series next to each counter and histogram

STATIC_DIR = Path(__file__).parent / "static"
MAX_K = 100  # a VQA prompt holds a handful of passages; thousands would only load the server
MAX_TEXT_CHARS = 2000  # queries are a dish name or a question; the model reads max_text_len tokens anyway
IMAGE_HELP = "give a JPEG/PNG/WebP photo"
QUERY_HELP = ('send {"text": "قورمه سبزی", "k": 5}, {"image": "<base64 photo>", "k": 5}, or both '
              '(a question about the photo)')
# The page loads its own script, style and photo previews (blob:) and talks only to this server.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MANIFEST_LISTED = {"factory", "dim", "count", "passage_ids", "docstore_sha256", "model_sha256", "index_sha256"}
# Swagger UI's files, from the fastapi-offline package: /docs works without a network. The page's init
# script is a file of ours (static/docs.js), so /docs keeps the strict CSP; Swagger UI draws its icons
# from data: URLs, which img-src allows.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
MAX_DETAIL_CHARS = 500  # an error body names the first problems and counts the rest: never megabytes
MAX_LOGGED_PATH = 200
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
LOADING = "the server is still loading its models; retry in a few seconds (GET /readyz says when it is ready)"


class ErrorOut(BaseModel):
    """Every 4xx and 503 body: one line saying what was wrong and what to do."""

    detail: str = Field(description=f"one line, at most {MAX_DETAIL_CHARS} characters")


def _errors(*statuses: int) -> dict:
    """OpenAPI `responses` for the error statuses an endpoint can answer, all with the one-line body."""
    what = {400: "the body is not valid JSON (or not valid multipart/form-data, for an upload)", 413: "the body or photo is larger than --max-upload-mb",
            422: "a parameter is out of range, the text is blank after normalisation, or the photo does not decode",
            503: "the models are still loading"}
    return {status: {"model": ErrorOut, "description": what[status]} for status in statuses}


class HitOut(BaseModel):
    """One passage, as `python -m faclip search --json` prints it."""

    rank: int = Field(description="1..k, by descending score")
    score: float = Field(description="cosine similarity of query and passage")
    passage_id: str
    food_id: str
    title: str
    passage_text: str


class SearchResponse(BaseModel):
    hits: list[HitOut]
    took_ms: float = Field(description="time spent on the query in the server (decode, encode, search)")


# The query rule as JSON Schema, for generated clients: text, image, or both (a question about the photo).
QUERY_RULE = {"anyOf": [{"required": ["text"]}, {"required": ["image"]}]}
QUERY_FIELDS = {"text", "image", "k", "per_dish"}


class SearchRequest(BaseModel):
    """`text`, `image`, or both: a question about the photo (`Retriever.ask`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=QUERY_RULE)

    text: str = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, examples=["قورمه سبزی"],
                      description="a dish name or a question; with `image`, a question about the photo")
    image: str = Field(None, min_length=1, description="a JPEG/PNG/WebP photo in base64 (a data: URL is accepted too)")
    k: int = Field(5, ge=1, le=MAX_K, strict=True, description="how many passages")
    per_dish: int = Field(None, ge=1, strict=True, description="keep at most this many passages per dish")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data):
        # Before field validation: a body with a million unknown keys is one error, not a million.
        if isinstance(data, dict):
            unknown = [key for key in data if key not in QUERY_FIELDS]
            if unknown:
                more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
                raise ValueError(f"unknown field {_short(unknown[0])}{more}; {QUERY_HELP}")
        return data

    @model_validator(mode="after")
    def _one_query(self):
        if self.text is None and self.image is None:
            raise ValueError("give text, image, or both (a question about the photo)")
        return self


class InfoResponse(BaseModel):
    passages: int = Field(description="passages in the index")
    dishes: int = Field(description="distinct food_id values among them")
    dim: int
    factory: str = Field(description="FAISS index_factory string")
    docstore_sha256: str
    model_sha256: str = Field(description="sha256 of the text model weights the index was built with")
    index_sha256: str
    index_search: dict = Field(description="how the index was chosen and tuned, as its manifest records it "
                                           "(choice, reason, search knob, measured recall)")
    text_model: str
    text_source: str | None = Field(description="what the text model was built (or fine-tuned) from, per its faclip.json")
    base_text_sha256: str | None
    vision_model: str
    vision_source: str | None
    vision_sha256: str | None = Field(description="the vision model the text model was tuned against")
    device: str
    max_k: int
    max_upload_mb: float


def create_app(retriever: Retriever | None = None, *, max_upload_mb: float = 10.0,
               cors_origins: tuple[str, ...] = ()) -> FastAPI:
    """The FastAPI app over `retriever`; with None it answers /healthz, and 503 to queries, until
    `set_retriever(app, retriever)` (what `serve` does once the models are loaded)."""
    max_upload = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="faclip", summary="Persian food passage retrieval by photo or text", version="0.1.0",
                  docs_url=None, redoc_url=None)
    app.state.retriever, app.state.info, app.state.max_upload_mb = None, None, max_upload_mb
    app.state.metrics = metrics = Metrics()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        status, detail = _validation_detail(exc.errors())
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(FaclipError)
    async def _faclip_error(request: Request, exc: FaclipError):
        return JSONResponse({"detail": _capped(_one_line(str(exc)))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 405:  # Starlette names the methods of one route only; a path may have several
            allowed = allowed_methods(request.app, request.scope)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; use {', '.join(allowed)}"
        elif exc.status_code == 404:
            detail = "no such endpoint; see /docs for the API"
        return JSONResponse({"detail": _capped(_one_line(detail))}, status_code=exc.status_code, headers=headers)

    def ready() -> Retriever:
        if app.state.retriever is None:
            raise HTTPException(503, detail=LOADING, headers={"Retry-After": "2"})
        return app.state.retriever

    def run(query, k: int, per_dish: int | None, question: str | None = None) -> SearchResponse:
        retriever = ready()
        start = time.perf_counter()
        if question is not None:
            hits = retriever.ask(query, question, k=k, per_dish=per_dish)
        elif isinstance(query, bytes):
            hits = retriever.by_image(query, k=k, per_dish=per_dish)
        else:
            hits = retriever.by_text(query, k=k, per_dish=per_dish)
        took_ms = (time.perf_counter() - start) * 1000
        return SearchResponse(hits=[HitOut(**hit.to_dict()) for hit in hits], took_ms=round(took_ms, 2))

    # Plain `def` endpoints: FastAPI runs them in its thread pool, so encoding never blocks the event loop.
    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the process answers (the models may still be loading; see /readyz)."""
        return {"status": "ok"}

    @app.get("/readyz", responses=_errors(503))
    def readyz() -> dict:
        """Readiness: 200 once the models are loaded and queries are answered, 503 before."""
        ready()
        return {"ready": True}

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format"}})
    def get_metrics() -> Response:
        """Request counts by route and status, latency histograms, batch sizes and encode time."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", responses=_errors(503))
    def get_info() -> InfoResponse:
        retriever = ready()
        if app.state.info is None:
            app.state.info = _info(retriever, max_upload_mb)
        return app.state.info

    @app.get("/search", responses=_errors(413, 422, 503))
    def search_get(text: Annotated[str, Query(min_length=1, max_length=MAX_TEXT_CHARS, description="e.g. a dish name")],
                   k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
                   per_dish: Annotated[int | None, Query(ge=1)] = None) -> SearchResponse:
        """Passages for a text query."""
        return run(_checked_text(text), k, per_dish)

    @app.post("/search", responses=_errors(400, 413, 422, 503))
    def search_post(body: SearchRequest) -> SearchResponse:
        """Passages for a text, a base64 photo, or both (a question about the photo)."""
        question = None if body.text is None else _checked_text(body.text)
        if body.image is None:
            return run(question, body.k, body.per_dish)
        return run(_decode_image(body.image, max_upload), body.k, body.per_dish, question)

    @app.post("/search/image", responses=_errors(400, 413, 422, 503))
    def search_image(file: Annotated[UploadFile, File(description="a JPEG/PNG/WebP photo")],
                     text: Annotated[str | None, Form(min_length=1, max_length=MAX_TEXT_CHARS,
                                                      description="a question about the photo")] = None,
                     k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
                     per_dish: Annotated[int | None, Query(ge=1)] = None) -> SearchResponse:
        """Passages for an uploaded photo (multipart/form-data, field `file`), and a question about it (`text`)."""
        question = None if text is None else _checked_text(text)
        if file.size is not None and file.size > max_upload:
            raise HTTPException(413, detail=_too_large(max_upload))
        data = file.file.read(max_upload + 1)  # the parser spooled it to disk past 1 MB; read at most the cap
        if len(data) > max_upload:
            raise HTTPException(413, detail=_too_large(max_upload))
        if not data:
            raise HTTPException(422, detail=f"the uploaded file is empty; {IMAGE_HELP}")
        return run(data, k, per_dish, question)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    # Innermost first; outermost last: the log line sees every response, the 413s of the body cap included.
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyLimit, max_bytes=body_limit(max_upload), detail=_too_large(max_upload))
    app.add_middleware(SecurityHeaders)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    app.add_middleware(RequestLog, metrics=metrics)
    if retriever is not None:
        set_retriever(app, retriever)
    return app


def set_retriever(app: FastAPI, retriever: Retriever) -> None:
    """Answer queries with `retriever` from now on: /readyz turns 200, and its batches are measured."""
    metrics: Metrics = app.state.metrics
    retriever.on_batch = metrics.observe_batch
    app.state.retriever = retriever
    metrics.ready.set(1)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("faclip_http_requests", "HTTP requests answered, by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("faclip_http_request_duration_seconds", "time from request to response",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("faclip_batch_size", "queries encoded in one forward pass", ["kind"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.encode_seconds = Histogram("faclip_encode_seconds", "time of one batched forward pass", ["kind"],
                                        registry=self.registry,
                                        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.ready = Gauge("faclip_ready", "1 once the models are loaded", registry=self.registry)

    def observe_batch(self, kind: str, size: int, seconds: float) -> None:
        self.batch_size.labels(kind).observe(size)
        self.encode_seconds.labels(kind).observe(seconds)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"  # any token is a method: keep the label bounded
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


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


def _info(retriever: Retriever, max_upload_mb: float) -> InfoResponse:
    manifest, info = retriever.manifest, read_model_info(retriever.model_dir)
    vision_info = read_model_info(retriever.vision_dir)
    return InfoResponse(
        passages=int(manifest["count"]), dishes=int(retriever.passages["food_id"].nunique()),
        dim=int(manifest["dim"]), factory=str(manifest["factory"]),
        docstore_sha256=manifest["docstore_sha256"], model_sha256=manifest["model_sha256"],
        index_sha256=manifest["index_sha256"],
        index_search={key: value for key, value in manifest.items() if key not in MANIFEST_LISTED},
        text_model=str(retriever.model_dir), text_source=info.get("source", info.get("base_text_source")),
        base_text_sha256=info.get("base_text_sha256"),
        vision_model=str(retriever.vision_dir), vision_source=vision_info.get("source"),
        vision_sha256=info.get("vision_sha256"), device=str(retriever.device), max_k=MAX_K,
        max_upload_mb=max_upload_mb,
    )


def _checked_text(text: str) -> str:
    try:
        check_text_query(text)
    except FaclipError:
        raise HTTPException(422, detail='text is empty (only spaces or ZWNJ); give a few words, e.g. "قورمه سبزی"')
    return text


def _decode_image(data: str, max_upload: int) -> bytes:
    if data.startswith("data:") and "," in data[:100]:
        data = data.split(",", 1)[1]  # data:image/jpeg;base64,....
    data = "".join(data.split())  # `base64` wraps lines at 76 columns
    if not data:
        raise HTTPException(422, detail=f"image is empty; {IMAGE_HELP} in base64")
    if len(data) * 3 // 4 > max_upload + 3:
        raise HTTPException(413, detail=_too_large(max_upload))
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise HTTPException(422, detail=f"image is not valid base64 ({err}); send the photo's bytes base64-encoded")


def _too_large(max_upload: int) -> str:
    return (f"the photo is larger than the server's limit of {max_upload / 1024 / 1024:g} MB; "
            "send a smaller photo (or start the server with a larger --max-upload-mb)")


def body_limit(max_upload: int) -> int:
    """The most bytes a request body may have for photos of up to `max_upload` bytes."""
    # A base64 photo is 4/3 of its bytes; JSON and multipart framing add a little.
    return max_upload * 4 // 3 + 64 * 1024


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _capped(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validation_detail(errors, shown: int = 3) -> tuple[int, str]:
    """One line for pydantic's error list: (status, detail); a body that is not JSON at all is 400.

    The first `shown` problems are named and the rest counted, and the line is capped at MAX_DETAIL_CHARS."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            return 400, _capped(_one_line(f"the request body is not valid JSON ({reason}); {QUERY_HELP}"))
        if len(parts) == shown:
            continue
        loc = [_short(part, quote=False) for part in error.get("loc", ()) if part not in ("body", "query")]
        msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "missing" and loc == ["file"]:
            msg = f"no file uploaded; send the photo as multipart/form-data field `file` ({IMAGE_HELP})"
        elif error.get("type") == "extra_forbidden":
            msg = f"unknown field; {QUERY_HELP}"
        elif error.get("type") == "missing" and not loc:
            msg = f"the request body is empty; {QUERY_HELP}"
        elif "input" in error and loc and not isinstance(error["input"], (dict, list)):
            msg = f"{msg} (got {_short(error['input'])})"
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    if len(errors) > len(parts) and parts:
        parts.append(f"and {len(errors) - len(parts)} more problems")
    return 422, _capped(_one_line("; ".join(parts) or "invalid request"))


def _short(value, quote: bool = True) -> str:
    text = repr(value) if quote else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


def set_threads(threads: int) -> None:
    """torch intra-op threads for the (serialised) model calls; FAISS one thread (a batch of queries is small)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(1)  # a few query vectors per search: OpenMP start-up would cost more than it saves


def return_freed_memory() -> None:
    """Make glibc hand large freed blocks (a decoded photo: hundreds of MB) back to the system at once.

    glibc raises its mmap threshold after each large free, so later photo-sized blocks come from per-thread
    heaps that keep their pages: 8 concurrent uploads of a 64 Mpx PNG left the server GBs larger for good.
    A fixed 1 MiB threshold keeps every such block mmapped (freed = returned). No-op off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_MMAP_THRESHOLD = -3
    mallopt(M_MMAP_THRESHOLD, 1 << 20)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def serve(*, model_dir, vision_dir, index_dir, docstore_path, lexical_dir, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = 10.0, threads: int | None = None, cors_origins: tuple[str, ...] = (),
          max_batch: int = 32, max_wait_ms: float = 2.0) -> None:
    """Open the port at once (/healthz answers, /readyz says 503), load the artifacts in the background, then
    answer queries until Ctrl-C. A stale index or a wrong vision model stops the server: one line, exit 2."""
    if not 0 < max_upload_mb < float("inf"):
        raise FaclipError(f"--max-upload-mb {max_upload_mb:g} is invalid; give a positive size in MB, e.g. 10")
    if "*" in cors_origins:
        raise FaclipError("--cors-origin '*' would let any web page query this server; name the origins instead")
    if max_batch < 1:
        raise FaclipError(f"--max-batch {max_batch} is invalid; give 1 (no batching) or more, e.g. 32")
    if not 0 <= max_wait_ms <= 1000:
        raise FaclipError(f"--max-wait-ms {max_wait_ms:g} is invalid; give 0 to 1000 ms, e.g. 2")
    set_threads(threads or default_threads())
    return_freed_memory()
    app = create_app(None, max_upload_mb=max_upload_mb, cors_origins=tuple(cors_origins))
    # access_log off: RequestLog writes the one line per request; log_config=None keeps faclip's format.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           server_header=False))
    failed: list[Exception] = []

    def load() -> None:
        try:
            retriever = Retriever(model_dir, vision_dir, index_dir, docstore_path, lexical_dir)
            # Load the vision model now (and check it is the one the text model was tuned against), so the
            # first photo query is not the slow one and a mismatch stops the server here.
            from PIL import Image

            retriever.by_image(Image.new("RGB", (32, 32), (128, 128, 128)), k=1)
        except Exception as err:  # raised again below, once the server has closed the port
            failed.append(err)
            server.should_exit = True
            return
        if max_batch > 1:
            retriever.start_batching(max_batch=max_batch, max_wait_ms=max_wait_ms)
        set_retriever(app, retriever)
        logger.info("ready: %d passages (%s, dim %d) on %s, batches of up to %d; http://%s:%d/",
                    retriever.index.ntotal, retriever.manifest["factory"], retriever.index.d, retriever.device,
                    max_batch, host, port)

    threading.Thread(target=load, name="faclip-load", daemon=True).start()
    server.run()
    if failed:
        raise failed[0]
