"""`python -m faclip serve`: the `Retriever` as a JSON service (FastAPI on uvicorn) and a search page.

    GET  /healthz                          {"status": "ok"}
    GET  /info                             passages, dim, factory, manifest hashes, model sources
    GET  /search?text=...&k=5&per_dish=2   {"hits": [...], "took_ms": ...}
    POST /search        {"text": ...} or {"image": "<base64>"} or both (a question about the photo), "k", "per_dish"
    POST /search/image  multipart field `file`, optional field `text` (a question about it) (?k=5&per_dish=2)
    GET  /                                 the page (faclip/static), GET /docs the OpenAPI page

A hit is `Hit.to_dict()`, the rows `python -m faclip search --json` prints: one code path. Bad input is a
4xx with `{"detail": one line}`; bodies over the upload cap get 413 before they are read. Endpoints only
read: nothing the server does changes an artifact.
"""

import base64
import binascii
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator

from faclip.errors import FaclipError
from faclip.models import read_model_info
from faclip.search import Retriever, check_text_query

logger = logging.getLogger(__name__)

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
DOCS_PATHS = ("/docs", "/redoc")  # FastAPI's OpenAPI pages load Swagger UI / ReDoc with inline script


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


class SearchRequest(BaseModel):
    """`text`, `image`, or both: a question about the photo (`Retriever.ask`)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=MAX_TEXT_CHARS, examples=["قورمه سبزی"],
                             description="a text query; with `image`, a question about the photo")
    image: str | None = Field(None, description="a JPEG/PNG/WebP photo in base64 (a data: URL is accepted too)")
    k: int = Field(5, ge=1, le=MAX_K, strict=True, description="how many passages")
    per_dish: int | None = Field(None, ge=1, strict=True, description="keep at most this many passages per dish")

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


def create_app(retriever: Retriever, *, max_upload_mb: float = 10.0, cors_origins: tuple[str, ...] = ()) -> FastAPI:
    """The FastAPI app over a loaded `retriever`.

    The caller builds the retriever before uvicorn binds the port (`serve`), so a stale index is refused with
    the one line `search` prints (exit 2), not a traceback from a failed lifespan startup.
    """
    max_upload = int(max_upload_mb * 1024 * 1024)
    info = _info(retriever, max_upload_mb)
    app = FastAPI(title="faclip", summary="Persian food passage retrieval by photo or text", version="0.1.0")
    app.state.retriever = retriever

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        status, detail = _validation_detail(exc.errors())
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(FaclipError)
    async def _faclip_error(request: Request, exc: FaclipError):
        return JSONResponse({"detail": _one_line(str(exc))}, status_code=422)

    def run(query, k: int, per_dish: int | None, question: str | None = None) -> SearchResponse:
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
        return {"status": "ok"}

    @app.get("/info")
    def get_info() -> InfoResponse:
        return info

    @app.get("/search")
    def search_get(text: Annotated[str, Query(max_length=MAX_TEXT_CHARS, description="e.g. a dish name")],
                   k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
                   per_dish: Annotated[int | None, Query(ge=1)] = None) -> SearchResponse:
        """Passages for a text query."""
        return run(_checked_text(text), k, per_dish)

    @app.post("/search")
    def search_post(body: SearchRequest) -> SearchResponse:
        """Passages for a text, a base64 photo, or both (a question about the photo)."""
        question = None if body.text is None else _checked_text(body.text)
        if body.image is None:
            return run(question, body.k, body.per_dish)
        return run(_decode_image(body.image, max_upload), body.k, body.per_dish, question)

    @app.post("/search/image")
    def search_image(file: Annotated[UploadFile, File(description="a JPEG/PNG/WebP photo")],
                     text: Annotated[str | None, Form(max_length=MAX_TEXT_CHARS,
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

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Outermost last: the log line sees every response, the 413s of the body cap included.
    app.add_middleware(BodyLimit, max_bytes=body_limit(max_upload), detail=_too_large(max_upload))
    app.add_middleware(SecurityHeaders)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"])
    app.add_middleware(RequestLog)
    return app


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


def _validation_detail(errors) -> tuple[int, str]:
    """One line for pydantic's error list: (status, detail); a body that is not JSON at all is 400."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            return 400, _one_line(f"the request body is not valid JSON ({reason}); {QUERY_HELP}")
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
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
    return 422, _one_line("; ".join(parts) or "invalid request")


def _short(value) -> str:
    text = repr(value)
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
    """nosniff and no-referrer everywhere; a CSP without inline script on everything but the OpenAPI pages."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        docs = scope["path"].startswith(DOCS_PATHS)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if not docs:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class RequestLog:
    """One log line per request: method, path (no query: it holds what users typed), status, latency."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            logger.info("%s %s %d %.1f ms", scope["method"], scope["path"], status,
                        (time.perf_counter() - start) * 1000)


def set_threads(threads: int) -> None:
    """torch intra-op threads for the (serialised) model calls; FAISS one thread per single-query search."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(1)  # one query vector per request: concurrency comes from the requests


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def serve(*, model_dir, vision_dir, index_dir, docstore_path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = 10.0, threads: int | None = None, cors_origins: tuple[str, ...] = ()) -> None:
    """Load the artifacts (a stale index is a FaclipError, before the port is bound), then serve until Ctrl-C."""
    if max_upload_mb <= 0:
        raise FaclipError(f"--max-upload-mb {max_upload_mb:g} is invalid; give a positive size in MB, e.g. 10")
    if "*" in cors_origins:
        raise FaclipError("--cors-origin '*' would let any web page query this server; name the origins instead")
    set_threads(threads or default_threads())
    retriever = Retriever(model_dir, vision_dir, index_dir, docstore_path)
    # Load the vision model now (and check it is the one the text model was tuned against), so the
    # first photo query is not the slow one and a mismatch stops the server here.
    from PIL import Image

    retriever.by_image(Image.new("RGB", (32, 32), (128, 128, 128)), k=1)
    logger.info("serving %d passages (%s, dim %d) on %s; http://%s:%d/", retriever.index.ntotal,
                retriever.manifest["factory"], retriever.index.d, retriever.device, host, port)
    app = create_app(retriever, max_upload_mb=max_upload_mb, cors_origins=tuple(cors_origins))
    # access_log off: RequestLog writes the one line per request; log_config=None keeps faclip's format.
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, server_header=False)
