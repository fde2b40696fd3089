"""The serving layer in process (FastAPI's TestClient over tiny artifacts): batching, readiness, metrics,
the OpenAPI contract (schemathesis), /docs offline, bounded error bodies and decode memory, escaped logs."""

import base64
import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from faclip.batching import Batcher, PixelBudget
from faclip.search import Query, Retriever
from faclip.serve import MAX_DETAIL_CHARS, PAGE_CSP, create_app, log_safe, set_retriever
from faclip.serve.contract import BASE64, VISIBLE

pytestmark = pytest.mark.xdist_group("serve")  # one worker runs them: they share conftest's one server


def _retriever(artifacts, **kwargs) -> Retriever:
    return Retriever(artifacts.text_dir, artifacts.vision_dir, artifacts.index_dir, artifacts.docstore_path,
                     device="cpu", **kwargs)


@pytest.fixture(scope="module")
def retriever(artifacts):
    return _retriever(artifacts)


@pytest.fixture(scope="module")
def app(artifacts):
    batched = _retriever(artifacts)
    batched.start_batching(max_batch=32, max_wait_ms=5)
    return create_app(batched, max_upload_mb=1)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def _photos(count: int) -> list[bytes]:
    from conftest import draw_dish_image
    import io

    photos = []
    for i in range(count):
        buffer = io.BytesIO()
        draw_dish_image(i % 5, i, size=96).save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def _same(batched, alone) -> None:
    assert [(h.passage_id, h.rank) for h in batched] == [(h.passage_id, h.rank) for h in alone]
    # a text's score is fused (min-max normalised over its lists), which magnifies the last float32 digits a
    # batch's padding changes in the vector: the same ranking, the same scores to 3 decimals
    assert [h.score for h in batched] == pytest.approx([h.score for h in alone], abs=1e-3)


# --- batching --------------------------------------------------------------------------------------------


def test_a_query_gets_the_same_hits_alone_and_in_a_batch_of_32(retriever, artifacts):
    # Texts of very different lengths, so the short ones are padded in the batch (attention masks must hide it).
    texts = [row.passage_text for row in artifacts.docstore.itertuples()] + ["آش", "کباب کوبیده با نان و گوجه"]
    texts = (texts * 4)[:32]
    photos = [retriever.image_pixels(photo) for photo in _photos(32)]
    for batch in ([Query(text=t, k=5) for t in texts], [Query(pixels=p, k=5, per_dish=1) for p in photos]):
        together = retriever.search_batch(batch)
        for query, hits in zip(batch, together):
            _same(hits, retriever.search_batch([query])[0])
    assert len({len(text) for text in texts}) > 5  # padding really happened


def test_a_photo_and_a_question_get_the_same_hits_alone_and_batched_with_photos(retriever, artifacts):
    # `ask` goes through the photo batcher: its photo shares a forward pass with plain photo queries, and its
    # question re-ranks its own candidates only.
    photos = _photos(12)
    questions = [row.passage_text[:25] for row in artifacts.docstore.itertuples()]
    alone = [retriever.ask(photo, questions[i % len(questions)], k=4) for i, photo in enumerate(photos)]
    batched = _retriever(artifacts)
    sizes = []
    batched.on_batch = lambda kind, size, seconds: sizes.append((kind, size))
    batched.start_batching(max_batch=32, max_wait_ms=50)

    def query(i):
        if i % 2:  # every other call is a plain photo query, in the same batches
            return batched.by_image(photos[i], k=4)
        return batched.ask(photos[i], questions[i % len(questions)], k=4)

    with ThreadPoolExecutor(max_workers=len(photos)) as pool:
        got = list(pool.map(query, range(len(photos))))
    for i, hits in enumerate(got):
        _same(hits, alone[i] if i % 2 == 0 else retriever.by_image(photos[i], k=4))
    assert max(size for kind, size in sizes if kind == "image") > 1  # asks and photos shared a forward pass
    assert [h.passage_id for h in alone[0]] != [h.passage_id for h in retriever.by_image(photos[0], k=4)] or \
        [h.score for h in alone[0]] != [h.score for h in retriever.by_image(photos[0], k=4)]  # the question counted


def test_concurrent_callers_share_forward_passes_and_get_their_own_answers(artifacts, retriever):
    batched = _retriever(artifacts)
    sizes = []
    batched.on_batch = lambda kind, size, seconds: sizes.append((kind, size))
    batched.start_batching(max_batch=8, max_wait_ms=50)
    texts = [row.passage_text for row in artifacts.docstore.itertuples()] * 3
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        got = list(pool.map(lambda t: batched.by_text(t, k=3, per_dish=1), texts))
    for text, hits in zip(texts, got):
        _same(hits, retriever.by_text(text, k=3, per_dish=1))  # per_dish widening per query, in a batch too
    assert sum(size for _, size in sizes) == len(texts) and max(size for _, size in sizes) <= 8
    assert len(sizes) < len(texts)  # some queries shared a forward pass


def test_the_cli_and_python_api_start_no_thread(artifacts):
    before = threading.active_count()
    plain = _retriever(artifacts)
    plain.by_text("آش رشته", k=2)
    assert threading.active_count() == before and plain._batchers == {}


def test_batcher_caps_batches_and_hands_each_caller_its_result_or_the_error():
    calls = []

    def run(items):
        calls.append(list(items))
        time.sleep(0.02)
        if "boom" in items:
            raise ValueError("boom in the batch")
        return [item * 2 for item in items]

    batcher = Batcher(run, max_batch=4, max_wait_ms=20)
    with ThreadPoolExecutor(max_workers=10) as pool:
        assert list(pool.map(batcher.submit, range(10))) == [i * 2 for i in range(10)]
    assert max(len(c) for c in calls) <= 4 and len(calls) < 10
    with pytest.raises(ValueError, match="boom"):
        batcher.submit("boom")
    assert batcher.submit(21) == 42  # the worker survived the error


def _submit_in_order(batcher, items) -> list[threading.Thread]:
    """Submit each item from its own thread, one after the other: each is waiting before the next is sent."""
    threads, results = [], {}
    for item in items:
        before = batcher.waiting
        thread = threading.Thread(target=lambda item=item: results.setdefault(item, batcher.submit(item)))
        thread.start()
        _until(lambda: batcher.waiting > before)
        threads.append(thread)
    return threads


def _until(condition, timeout: float = 60.0) -> None:
    """Wait until `condition()` holds (an event the code under test does not signal); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def test_batches_take_the_oldest_then_similar_sizes_within_the_padded_budget():
    # The worker is held in a first batch while 7 items of different sizes queue; then it forms, from what is
    # waiting: the oldest item plus those nearest its size while len x largest <= budget; an item larger than
    # the budget runs alone, and nothing waits for a timer.
    release, calls = threading.Event(), []

    def run(items):
        calls.append(list(items))
        if items == ["hold"]:
            release.wait(60)
        return items

    batcher = Batcher(run, max_batch=8, budget=100, size=lambda item: 1 if item == "hold" else item)
    holder = threading.Thread(target=batcher.submit, args=("hold",))
    holder.start()
    _until(lambda: calls == [["hold"]])
    threads = _submit_in_order(batcher, [10, 50, 12, 11, 48, 90, 200])
    release.set()
    for thread in [holder, *threads]:
        thread.join(60)
    assert calls == [["hold"], [10, 11, 12], [50, 48], [90], [200]]


def test_texts_are_batched_by_their_padded_tokens(artifacts):
    # A batch of texts is bounded by tokens (padded length x count), not only by count.
    batched = _retriever(artifacts)
    batched.start_batching(max_batch=32, max_batch_tokens=64)
    text_batcher = batched._batchers["text"]
    assert text_batcher.budget == 64 and text_batcher.max_wait == 0  # no timer by default
    long_text = artifacts.docstore.passage_text.iloc[0]
    tokens = batched._batch_size(Query(text=long_text))
    assert 4 < tokens < 64 and batched._batch_size(Query(text="آش")) < tokens


# --- decode memory --------------------------------------------------------------------------------------


def test_pixel_budget_makes_a_second_large_decode_wait():
    budget = PixelBudget(100)
    order = []
    first_in = threading.Event()

    def hold(name, pixels, seconds):
        with budget.hold(pixels):
            order.append(f"{name} in")
            first_in.set()
            time.sleep(seconds)
            order.append(f"{name} out")

    a = threading.Thread(target=hold, args=("a", 80, 0.2))
    a.start()
    first_in.wait()
    hold("b", 50, 0)  # 80 + 50 > 100: waits for a
    a.join()
    assert order == ["a in", "a out", "b in", "b out"] and budget.waits == 1 and budget.peak == 80
    with budget.hold(500):  # larger than the budget: runs alone, never refused
        assert budget.in_use == 500


def test_pixel_budget_is_first_come_first_served_so_a_large_photo_is_not_overtaken():
    # a holds 60 of 100; big (100) must wait for the budget to empty; small (30) arrives after big and would
    # fit beside a at once, but it queues behind big: big waits only for what came before it.
    budget = PixelBudget(100)
    order, release_a = [], threading.Event()

    def hold(name, pixels, until=None):
        with budget.hold(pixels):
            order.append(name)
            if until is not None:
                until.wait(60)

    a = threading.Thread(target=hold, args=("a", 60, release_a))
    a.start()
    _until(lambda: order == ["a"])
    big = threading.Thread(target=hold, args=("big", 100))
    big.start()
    _until(lambda: budget.waits == 1)
    small = threading.Thread(target=hold, args=("small", 30))
    small.start()
    _until(lambda: budget.waits == 2 or "small" in order)  # small waits, or (unfairly) went in
    release_a.set()
    for thread in (a, big, small):
        thread.join(60)
    assert order == ["a", "big", "small"] and budget.in_use == 0


def test_concurrent_photo_decodes_stay_under_the_pixel_budget(artifacts):
    big = io.BytesIO()
    Image.new("RGB", (1200, 900), (150, 80, 40)).save(big, "PNG")  # a PNG: decoded at full size
    budget_px = 1200 * 900 * 2
    limited = _retriever(artifacts, decode_budget=budget_px)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: limited.by_image(big.getvalue(), k=2), range(12)))
    assert all(len(hits) == 2 for hits in results)
    assert limited.decode_budget.peak <= budget_px and limited.decode_budget.in_use == 0
    assert limited.decode_budget.waits > 0  # 6 threads, room for 2: the others waited


def test_a_large_png_is_shrunk_right_after_decoding():
    from faclip.images import load_rgb

    def png(width, height) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (width, height), (90, 120, 30)).save(out, "PNG")
        return out.getvalue()

    # The one decoder (embed, search and serve): reduce(6) keeps the shorter side >= 448, as a JPEG's draft would.
    assert load_rgb(png(4000, 3000), 448).size == (667, 500)
    assert load_rgb(png(600, 500), 448).size == (600, 500)
    assert load_rgb(png(4000, 3000)).size == (4000, 3000)  # no model input size given: full size


# --- overload: admission, liveness, clients that leave ------------------------------------------------------


class _HeldEncoder:
    """Replaces `retriever.search_batch`: each call records its queries' texts, says so, and the calls listed
    in `hold` wait for `release` (the encoder is busy) before answering as the real one does."""

    def __init__(self, retriever, hold=lambda texts: True):
        self.real, self.hold = retriever.search_batch, hold
        self.calls, self.release, self.entered = [], threading.Event(), threading.Semaphore(0)
        retriever.search_batch = self

    def __call__(self, queries):
        texts = [q.text for q in queries]
        self.calls.append(texts)
        self.entered.release()
        if self.hold(texts):
            assert self.release.wait(60), "never released"
        return self.real(queries)


def _within(call, timeout: float = 60.0):
    """`call()`'s result, or a failure if it has not returned within `timeout` (it is waiting for something)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert result, f"no answer within {timeout:.0f} s"
    return result[0]


def test_a_query_beyond_the_queue_bound_is_refused_at_once_with_retry_after(artifacts):
    batched = _retriever(artifacts)
    batched.start_batching(max_batch=32)
    encoder = _HeldEncoder(batched)
    app = create_app(batched, max_queue_wait_s=1.0)
    app.state.admission.observe("text", 1, 10.0)  # measured: 10 s a text query, so one admitted fills the bound
    with TestClient(app) as client:
        first = threading.Thread(target=client.get, args=("/search",), kwargs={"params": {"text": "آش رشته"}})
        first.start()
        assert encoder.entered.acquire(timeout=60)  # the first query is being encoded, and held there
        try:
            refused = _within(lambda: client.get("/search", params={"text": "کباب کوبیده"}))
            refused_post = _within(lambda: client.post("/search", json={"text": "کباب کوبیده"}))
            metrics = _within(lambda: client.get("/metrics")).text
        finally:
            encoder.release.set()
            first.join(60)
        for response in (refused, refused_post):
            assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
            detail = response.json()["detail"]
            assert set(response.json()) == {"detail"} and "\n" not in detail and "at capacity" in detail, detail
        assert 'faclip_queries_shed_total{kind="text"} 2.0' in metrics
        assert encoder.calls == [["آش رشته"]]  # the refused queries never reached the encoder
        assert client.get("/search", params={"text": "کباب کوبیده"}).status_code == 200  # drained: admitted again


def test_liveness_answers_while_every_search_worker_is_blocked(artifacts):
    # Two worker threads in all, both held in the encoder by searches: /healthz, /readyz and /metrics answer.
    plain = _retriever(artifacts)
    encoder = _HeldEncoder(plain)
    with TestClient(create_app(plain)) as client:
        client.portal.call(_set_worker_threads, 2)
        searches = [threading.Thread(target=client.get, args=("/search",), kwargs={"params": {"text": text}})
                    for text in ("آش رشته", "کباب کوبیده")]
        for search in searches:
            search.start()
        try:
            for _ in searches:
                assert encoder.entered.acquire(timeout=60)
            answers = [_within(lambda path=path: client.get(path)) for path in ("/healthz", "/readyz", "/metrics")]
        finally:
            encoder.release.set()
            for search in searches:
                search.join(60)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == {"status": "ok"} and answers[1].json() == {"ready": True}


def _set_worker_threads(count: int) -> None:
    import anyio

    anyio.to_thread.current_default_thread_limiter().total_tokens = count


def test_a_query_whose_client_disconnected_before_its_batch_is_not_encoded(artifacts):
    import asyncio

    batched = _retriever(artifacts)
    batched.start_batching(max_batch=32)
    encoder = _HeldEncoder(batched, hold=lambda texts: texts == ["first"])
    app = create_app(batched)
    first = threading.Thread(target=batched.by_text, args=("first",))
    first.start()
    assert encoder.entered.acquire(timeout=60)  # the encoder is busy with "first"
    sent = []

    async def client_that_leaves():
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/search", "raw_path": b"/search", "root_path": "",
                 "query_string": "text=second&k=2".encode(), "headers": [(b"host", b"testserver")],
                 "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
        request = asyncio.ensure_future(app(scope, receive, send))
        while batched._batchers["text"].waiting == 0:  # "second" is queued behind "first"
            assert not request.done(), sent
            await asyncio.sleep(0.005)
        gone.set()  # the client disconnects
        await asyncio.wait_for(request, 60)

    try:
        asyncio.run(client_that_leaves())
    finally:
        encoder.release.set()
        first.join(60)
    assert batched.by_text("third", k=1)  # the worker went on past the dropped query
    assert encoder.calls == [["first"], ["third"]]
    assert sent[0]["status"] == 499  # logged as the client's doing; nobody reads it


# --- photo_weight over HTTP --------------------------------------------------------------------------------


def test_photo_weight_over_http_weighs_the_photo_as_the_python_api_does(client, retriever, artifacts):
    photo = artifacts.photo.read_bytes()
    question = artifacts.docstore.passage_text.iloc[0][:25]
    encoded = base64.b64encode(photo).decode()
    for weight in (0, 0.2, 1):
        expected = retriever.ask(photo, question, k=4, photo_weight=weight)
        by_json = client.post("/search", json={"image": encoded, "text": question, "k": 4, "photo_weight": weight})
        by_form = client.post("/search/image", params={"k": 4}, data={"text": question, "photo_weight": str(weight)},
                              files={"file": ("p.jpg", photo, "image/jpeg")})
        for response in (by_json, by_form):
            assert response.status_code == 200, response.text
            _same([SimpleNamespace(**h) for h in response.json()["hits"]], expected)
    alone = [h.passage_id for h in retriever.ask(photo, question, k=4, photo_weight=1)]
    assert alone != [h.passage_id for h in retriever.ask(photo, question, k=4, photo_weight=0)]  # it mattered


@pytest.mark.parametrize("where, weight", [("json", 2), ("json", -0.1), ("json", "0.5"), ("json", True),
                                           ("form", "2"), ("form", "nan"), ("form", "half")])
def test_a_bad_photo_weight_is_the_clis_one_line_422(client, artifacts, where, weight):
    photo = artifacts.photo.read_bytes()
    if where == "json":
        response = client.post("/search", json={"image": base64.b64encode(photo).decode(), "text": "آش",
                                                "photo_weight": weight})
    else:
        response = client.post("/search/image", data={"text": "آش", "photo_weight": weight},
                               files={"file": ("p.jpg", photo, "image/jpeg")})
    detail = response.json()["detail"]
    assert response.status_code == 422 and "\n" not in detail, detail
    assert "photo_weight=" in detail and "from 0 (the question alone) to 1 (the photo alone)" in detail, detail


def test_photo_weight_needs_a_photo_and_a_question(client, artifacts):
    photo = artifacts.photo.read_bytes()
    for response in (client.post("/search", json={"text": "آش", "photo_weight": 0.5}),
                     client.post("/search", json={"image": base64.b64encode(photo).decode(), "photo_weight": 0.5}),
                     client.post("/search/image", data={"photo_weight": "0.5"},
                                 files={"file": ("p.jpg", photo, "image/jpeg")})):
        assert response.status_code == 422 and "give both a photo and text" in response.json()["detail"]


# --- errors and logs -----------------------------------------------------------------------------------------


def test_a_body_with_many_unknown_keys_is_one_short_error(client):
    body = {f"field{i}": i for i in range(50_000)}  # ~1 MB, under the body cap of this app
    response = client.post("/search", json=body)
    detail = response.json()["detail"]
    assert response.status_code == 422 and len(detail) <= MAX_DETAIL_CHARS
    assert "field0" in detail and "49999 more" in detail and "\n" not in detail


def test_many_field_errors_name_the_first_and_count_the_rest(client):
    response = client.get("/search", params={"text": "", "k": "x", "per_dish": "y"})
    detail = response.json()["detail"]
    assert response.status_code == 422 and len(detail) <= MAX_DETAIL_CHARS and "text" in detail


def test_request_paths_are_logged_escaped_on_one_line(client, caplog):
    with caplog.at_level(logging.INFO, logger="faclip.serve"):
        client.get("/x%0AINFO faclip.serve: GET /admin 200%1b[31m%e2%80%aeevil\\")
    lines = [r.getMessage() for r in caplog.records if r.name == "faclip.serve"]
    assert len(lines) == 1 and "\n" not in lines[0] and "\x1b" not in lines[0] and "\u202e" not in lines[0]
    assert "/x\\x0aINFO faclip.serve: GET /admin 200\\x1b[31m\\u202eevil\\\\ 404 " in lines[0]
    assert log_safe("قورمه سبزی") == "قورمه سبزی" and log_safe("a" * 300).endswith("a...")


# --- readiness, metrics, methods -------------------------------------------------------------------------


def test_not_ready_until_the_models_are_loaded(retriever):
    app = create_app(None)
    client = TestClient(app)
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in ("/readyz", "/search?text=آش", "/info"):
        response = client.get(path)
        assert response.status_code == 503 and "loading" in response.json()["detail"], path
    set_retriever(app, retriever)
    assert client.get("/readyz").json() == {"ready": True}
    assert client.get("/search", params={"text": "آش", "k": 1}).status_code == 200


def test_metrics_count_requests_by_route_and_measure_batches(client):
    client.get("/search", params={"text": "آش رشته", "k": 2})
    client.get("/search", params={"k": 2})
    client.get("/no/such/path/123")
    text = client.get("/metrics").text
    assert 'faclip_http_requests_total{method="GET",route="/search",status="200"}' in text
    assert 'faclip_http_requests_total{method="GET",route="/search",status="422"}' in text
    assert 'route="unmatched",status="404"' in text and "/no/such" not in text
    assert 'faclip_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/search"}' in text
    assert 'faclip_batch_size_count{kind="text"}' in text and 'faclip_encode_seconds_sum{kind="text"}' in text
    assert "faclip_ready 1.0" in text


def test_head_wherever_get_and_405_names_every_method(client):
    for path in ("/", "/healthz", "/info", "/static/app.js", "/docs", "/openapi.json"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == 200 == got.status_code and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    response = client.options("/search")
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD, POST"
    assert client.delete("/").headers["allow"] == "GET, HEAD"
    assert client.put("/static/app.js").headers["allow"] == "GET, HEAD"


# --- the OpenAPI contract ----------------------------------------------------------------------------------


def test_openapi_declares_the_one_line_errors_and_the_query_rule(app):
    spec = app.openapi()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, method, statuses in (("/search", "get", {"413", "422", "503"}), ("/search", "post", {"400", "413", "422", "503"}),
                                   ("/search/image", "post", {"400", "413", "422", "503"})):
        responses = spec["paths"][path][method]["responses"]
        assert statuses <= set(responses), (path, method)
        for status in statuses:
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    request = spec["components"]["schemas"]["SearchRequest"]
    assert request["anyOf"] == [{"required": ["text"]}, {"required": ["image"]}]  # text, image, or both
    assert request["properties"]["text"]["minLength"] == 1 and request["additionalProperties"] is False


def test_openapi_states_every_rule_a_schema_can_state(app):
    # What a generated client can know before it sends: a visible character in every text, base64 of at
    # least one quantum for a photo, a non-empty upload, photo_weight in 0..1 and only with a photo and text.
    spec = app.openapi()
    request = spec["components"]["schemas"]["SearchRequest"]
    form_ref = spec["paths"]["/search/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = spec["components"]["schemas"][form_ref.rsplit("/", 1)[1]]
    get_text = next(p["schema"] for p in spec["paths"]["/search"]["get"]["parameters"] if p["name"] == "text")
    form_text = next(s for s in form["properties"]["text"]["anyOf"] if s.get("type") == "string")
    assert request["properties"]["text"]["pattern"] == get_text["pattern"] == form_text["pattern"] == VISIBLE
    image = request["properties"]["image"]
    assert image["pattern"] == BASE64 and image["minLength"] == 4
    assert form["properties"]["file"]["minLength"] == 1 and form["required"] == ["file"]
    for weight in (request["properties"]["photo_weight"], form["properties"]["photo_weight"]):  # never null
        assert (weight["type"], weight["minimum"], weight["maximum"]) == ("number", 0, 1)
    assert {key: set(value) for key, value in request["dependentRequired"].items()} == {"photo_weight": {"image", "text"}}
    assert form["dependentRequired"] == {"photo_weight": ["text"]}


def test_the_text_pattern_holds_exactly_the_texts_normalisation_keeps():
    # Every character: the schema's "visible" is what `check_text_query` (normalize_text) does not blank.
    from faclip.text import normalize_text

    visible = re.compile(VISIBLE)
    code_points = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF] + list(range(0xE0000, 0xE0080))
    disagree = [f"U+{c:04X}" for c in code_points if bool(visible.search(chr(c))) != bool(normalize_text(chr(c)))]
    assert disagree == []
    base64_rule = re.compile(BASE64)
    for good in ("AAAA", "AA==", "AAA=", "data:image/jpeg;base64,AAAA", "AAAA\nAA==\n", " AA AA "):
        assert base64_rule.search(good), good
    for bad in ("A", "AAAAA", "=AAA", "AA=A", "AAAA*", "data:AAAA"):
        assert not base64_rule.search(bad), bad


def test_schemathesis_with_every_check_finds_no_failure(server, tmp_path):
    """`schemathesis run --checks all` against a real server (conftest.py's, shared with the API tests):
    examples, coverage (every method, every bad value, 405s) and fuzzing phases, 20 examples an operation,
    deterministic; a few seconds. Its positive-data check runs too: every request the schema calls valid is
    answered, except a photo that does not decode (a 422 that schemathesis_hooks.py checks is that and only that:
    JSON Schema cannot say "a decodable JPEG"; everything else it can say, /openapi.json says)."""
    import shutil

    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    assert schemathesis, "pip install -r requirements-dev.txt"
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "422"]\n', encoding="utf-8")
    hooks = Path(__file__).with_name("schemathesis_hooks.py")
    result = subprocess.run([schemathesis, "--config-file", str(config), "run", f"{server.url}/openapi.json",
                             "--checks", "all", "--max-examples", "20", "--generation-deterministic"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": str(hooks)},
                            cwd=tmp_path)  # its .schemathesis/ cache lands there, not in the repository
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert re.search(r"(\d+) generated, \1 passed", result.stdout), result.stdout[-3000:]  # all passed
    log = server.log()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]


# --- /docs offline ---------------------------------------------------------------------------------------


def test_docs_page_is_served_from_here_under_the_strict_csp(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-security-policy"] == PAGE_CSP
    assert "unsafe-inline" not in PAGE_CSP and "<script>" not in page.text and "cdn" not in page.text.lower()
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/static/docs.js"):
        assert f'"{asset}"' in page.text
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 100, asset
    assert np.isfinite(len(client.get("/openapi.json").json()["paths"]))
