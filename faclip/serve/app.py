"""The FastAPI app and its routes: `create_app(retriever)`, `set_retriever(app, retriever)`.

Search endpoints check their input, then answer through the `Retriever` (whose batcher encodes concurrent
queries together); liveness (/healthz, /readyz, /metrics) answers on the event loop. The models of each
request and response are in `contract.py`, the middlewares in `middleware.py`, the metrics in `metrics.py`.
"""

import asyncio
import base64
import binascii
import time
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Annotated, Callable

import anyio

import fastapi_offline
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from faclip.errors import FaclipError
from faclip.models import read_model_info
from faclip.batching import Caller, on_behalf_of
from faclip.search import Retriever, check_text_query
from faclip.serve.admission import Admission
from faclip.serve.contract import (BASE64_SPACE, IMAGE_HELP, LOADING, MAX_K, MAX_TEXT_CHARS, PHOTO_WEIGHT_DESCRIPTION,
                                   TEXT_DESCRIPTION, TEXT_EMPTY, VISIBLE, HitOut, InfoResponse, SearchRequest,
                                   SearchResponse, busy, capped, error_responses, one_line, validation_detail)
from faclip.vqa import check_photo_weight
from faclip.serve.metrics import Metrics
from faclip.serve.middleware import BodyLimit, HeadAsGet, RequestLog, SecurityHeaders, allowed_methods

STATIC_DIR = Path(__file__).parent.parent / "static"
MANIFEST_LISTED = {"factory", "dim", "count", "passage_ids", "docstore_sha256", "model_sha256", "index_sha256"}
# Swagger UI's files, from the fastapi-offline package: /docs works without a network. The page's init
# script is a file of ours (static/docs.js), so /docs keeps the strict CSP; Swagger UI draws its icons
# from data: URLs, which img-src allows.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
MAX_QUEUE_WAIT_S = 2.0  # `faclip serve --max-queue-wait`: seconds of encoding a query may have queued ahead of it
CLIENT_GONE = 499  # the status logged (never sent: nobody is there) for a query whose client disconnected


def create_app(retriever: Retriever | None = None, *, max_upload_mb: float = 10.0,
               cors_origins: tuple[str, ...] = (), max_queue_wait_s: float = MAX_QUEUE_WAIT_S) -> FastAPI:
    """The FastAPI app over `retriever`; with None it answers /healthz, and 503 to queries, until
    `set_retriever(app, retriever)` (what `serve` does once the models are loaded). A query that would wait
    more than `max_queue_wait_s` of encoding behind those admitted is refused at once (`Admission`)."""
    max_upload = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="faclip", summary="Persian food passage retrieval by photo or text", version="0.1.0",
                  docs_url=None, redoc_url=None)
    app.state.retriever, app.state.info, app.state.max_upload_mb = None, None, max_upload_mb
    app.state.admission = admission = Admission(max_queue_wait_s)
    app.state.metrics = metrics = Metrics(admission)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        status, detail = validation_detail(exc.errors())
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(FaclipError)
    async def _faclip_error(request: Request, exc: FaclipError):
        return JSONResponse({"detail": capped(one_line(str(exc)))}, status_code=422)

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
        return JSONResponse({"detail": capped(one_line(detail))}, status_code=exc.status_code, headers=headers)

    def ready() -> Retriever:
        if app.state.retriever is None:
            raise HTTPException(503, detail=LOADING, headers={"Retry-After": "2"})
        return app.state.retriever

    async def answer(request: Request, kind: str, search: Callable[[Retriever], list]) -> SearchResponse | Response:
        """Admit the query or refuse it at once (503, Retry-After); run `search(retriever)` on a worker thread
        for this client, dropped unencoded if the client disconnects before its batch."""
        retriever = ready()
        retry_after = admission.enter(kind)
        if retry_after is not None:
            metrics.shed.labels(kind).inc()
            raise HTTPException(503, detail=busy(retry_after), headers={"Retry-After": str(retry_after)})
        caller, start = Caller(), time.perf_counter()
        watcher = asyncio.ensure_future(_leave_when_disconnected(request.receive, caller))
        try:
            hits = await anyio.to_thread.run_sync(_search_for, caller, search, retriever)
        except CancelledError:  # the client left before its batch: nobody reads this answer
            metrics.gone.labels(kind).inc()
            return Response(status_code=CLIENT_GONE)
        finally:
            watcher.cancel()
            admission.leave(kind)
        took_ms = (time.perf_counter() - start) * 1000
        return SearchResponse(hits=[HitOut(**hit.to_dict()) for hit in hits], took_ms=round(took_ms, 2))

    # Liveness, readiness and metrics are `async`: they run on the event loop, never in the thread pool the
    # searches wait in, so they answer at once whatever the load.
    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness: the process answers (the models may still be loading; see /readyz)."""
        return {"status": "ok"}

    @app.get("/readyz", responses=error_responses(503))
    async def readyz() -> dict:
        """Readiness: 200 once the models are loaded and queries are answered, 503 before."""
        ready()
        return {"ready": True}

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format"}})
    async def get_metrics() -> Response:
        """Request counts by route and status, latency histograms, batch sizes, encode time, shed queries."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", responses=error_responses(503))
    def get_info() -> InfoResponse:
        retriever = ready()
        if app.state.info is None:
            app.state.info = _info(retriever, max_upload_mb)
        return app.state.info

    # Searches check their input on the event loop, then decode, wait for their batch and search on a worker
    # thread (`answer`), so encoding never blocks the event loop.
    @app.get("/search", responses=error_responses(413, 422, 503))
    async def search_get(request: Request,
                         text: Annotated[str, Query(min_length=1, max_length=MAX_TEXT_CHARS, pattern=VISIBLE,
                                                    description=TEXT_DESCRIPTION)],
                         k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
                         per_dish: Annotated[int | None, Query(ge=1)] = None) -> SearchResponse:
        """Passages for a text query."""
        text = _checked_text(text)
        return await answer(request, "text", lambda retriever: retriever.by_text(text, k=k, per_dish=per_dish))

    @app.post("/search", responses=error_responses(400, 413, 422, 503))
    async def search_post(request: Request, body: SearchRequest) -> SearchResponse:
        """Passages for a text, a base64 photo, or both (a question about the photo)."""
        question = None if body.text is None else _checked_text(body.text)
        ask = _ask_options(body.photo_weight, body.image is not None and question is not None)
        if body.image is None:
            return await answer(request, "text",
                                lambda retriever: retriever.by_text(question, k=body.k, per_dish=body.per_dish))
        return await answer(request, "image", lambda retriever: _by_photo(
            retriever, _decode_image(body.image, max_upload), question, body.k, body.per_dish, ask))

    @app.post("/search/image", responses=error_responses(400, 413, 422, 503))
    async def search_image(request: Request,
                           file: Annotated[UploadFile, File(description="a JPEG/PNG/WebP photo",
                                                            json_schema_extra={"minLength": 1})],
                           text: Annotated[str | None, Form(min_length=1, max_length=MAX_TEXT_CHARS, pattern=VISIBLE,
                                                            description="a question about the photo")] = None,
                           photo_weight: Annotated[float, Form(ge=0, le=1, allow_inf_nan=False,
                                                                      description=PHOTO_WEIGHT_DESCRIPTION)] = None,
                           k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
                           per_dish: Annotated[int | None, Query(ge=1)] = None) -> SearchResponse:
        """Passages for an uploaded photo (multipart/form-data, field `file`), and a question about it (`text`)."""
        question = None if text is None else _checked_text(text)
        ask = _ask_options(photo_weight, question is not None)
        if file.size is not None and file.size > max_upload:
            raise HTTPException(413, detail=_too_large(max_upload))

        def search(retriever: Retriever) -> list:
            data = file.file.read(max_upload + 1)  # the parser spooled it to disk past 1 MB; read at most the cap
            if len(data) > max_upload:
                raise HTTPException(413, detail=_too_large(max_upload))
            if not data:
                raise HTTPException(422, detail=f"the uploaded file is empty; {IMAGE_HELP}")
            return _by_photo(retriever, data, question, k, per_dish, ask)

        return await answer(request, "image", search)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})

    spec = app.openapi

    def openapi() -> dict:  # the upload's form says what SearchRequest says: photo_weight needs a question
        if app.openapi_schema is None:
            form = spec()["paths"]["/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"]
            name = form["schema"]["$ref"].rsplit("/", 1)[1]
            app.openapi_schema["components"]["schemas"][name]["dependentRequired"] = {"photo_weight": ["text"]}
        return app.openapi_schema

    app.openapi = openapi
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
    admission: Admission = app.state.admission

    def on_batch(kind: str, size: int, seconds: float) -> None:
        metrics.observe_batch(kind, size, seconds)
        admission.observe(kind, size, seconds)

    retriever.on_batch = on_batch
    app.state.retriever = retriever
    metrics.ready.set(1)

async def _leave_when_disconnected(receive, caller: Caller) -> None:
    # The request's body is read by now: what the connection says next is that the client has gone.
    while (await receive())["type"] != "http.disconnect":
        pass
    caller.leave()


def _search_for(caller: Caller, search: Callable[[Retriever], list], retriever: Retriever) -> list:
    with on_behalf_of(caller):
        return search(retriever)


def _ask_options(photo_weight: float | None, photo_and_question: bool) -> dict:
    """`Retriever.ask`'s options from a request: `photo_weight` only weighs a photo against a question."""
    if photo_weight is None:
        return {}
    if not photo_and_question:
        raise HTTPException(422, detail="photo_weight weighs a photo against a question; give both a photo and text")
    return {"photo_weight": check_photo_weight(photo_weight)}


def _by_photo(retriever: Retriever, photo: bytes, question: str | None, k: int, per_dish: int | None,
              ask: dict) -> list:
    if question is None:
        return retriever.by_image(photo, k=k, per_dish=per_dish)
    return retriever.ask(photo, question, k=k, per_dish=per_dish, **ask)


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
        raise HTTPException(422, detail=TEXT_EMPTY)
    return text


def _decode_image(data: str, max_upload: int) -> bytes:
    if data.startswith("data:") and "," in data[:100]:
        data = data.split(",", 1)[1]  # data:image/jpeg;base64,....
    data = data.translate(dict.fromkeys(map(ord, BASE64_SPACE)))  # `base64` wraps lines at 76 columns
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

