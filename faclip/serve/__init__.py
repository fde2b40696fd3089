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
(`Retriever.start_batching`); beyond what it can answer in time the server refuses at once (503, Retry-After),
and liveness never waits. Endpoints only read: nothing the server does changes an artifact.

One concern a file:
    contract.py    the request / response models and the one-line error bodies (/openapi.json)
    app.py         create_app: the routes, answering a query, readiness
    admission.py   which queries are taken (those answerable within --max-queue-wait) and which refused at once
    middleware.py  body cap, security headers, HEAD as GET, the request log
    metrics.py     the Prometheus metrics
    run.py         serve(): process set-up, the background load, uvicorn
"""

from faclip.serve.app import body_limit, create_app, set_retriever
from faclip.serve.contract import MAX_DETAIL_CHARS
from faclip.serve.middleware import PAGE_CSP, log_safe
from faclip.serve.run import serve

__all__ = ["MAX_DETAIL_CHARS", "PAGE_CSP", "body_limit", "create_app", "log_safe", "serve", "set_retriever"]
