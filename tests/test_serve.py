"""`python -m faclip serve` through a real uvicorn server on a free loopback port (tiny artifacts in tmp).

One server per test session (conftest.py's `server`, shared with the page and contract tests): every endpoint,
every kind of bad input (a 4xx with a one-line detail, never a 500, and the server keeps serving), the upload
cap (413 before the body is read), answers equal to `faclip search --json`, concurrent clients, the log line
per request.
"""

import base64
import json
import socket
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import REPO
from serve_fixtures import SERVER_MAX_UPLOAD_MB as MAX_UPLOAD_MB
from serve_fixtures import MARKUP_PASSAGE, artifacts_digest, faclip_env, free_port

from faclip.serve import body_limit

pytestmark = pytest.mark.xdist_group("serve")  # one worker runs them: they share conftest's one server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def cli_json(faclip_cli, artifacts, *args) -> list[dict]:
    """The hits `faclip search ARGS --json` prints over the artifacts (in this process, on CPU as the server
    runs; test_search.py runs the command as a process)."""
    return json.loads(faclip_cli("search", *args, "--json", *artifacts.cli_args()))


def assert_same_hits(served: list[dict], expected: list[dict]) -> None:
    """Same passages in the same order with the same fields; scores equal up to float summation order."""
    assert [{k: v for k, v in h.items() if k != "score"} for h in served] == \
        [{k: v for k, v in h.items() if k != "score"} for h in expected]
    assert [h["score"] for h in served] == pytest.approx([h["score"] for h in expected], abs=1e-5)


def assert_ranked(hits: list[dict], k: int) -> None:
    assert [h["rank"] for h in hits] == list(range(1, k + 1))
    assert [set(h) for h in hits] == [{"rank", "score", "passage_id", "food_id", "title", "passage_text"}] * k
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))


# --- endpoints ----------------------------------------------------------------------------------------------


def test_healthz_and_info(client, artifacts, artifact_digest):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/info").json()
    manifest = json.loads((artifacts.index_dir / "manifest.json").read_text(encoding="utf-8"))
    assert info["passages"] == len(artifacts.docstore) == manifest["count"]
    assert info["dishes"] == artifacts.docstore["food_id"].nunique()
    assert (info["dim"], info["factory"]) == (manifest["dim"], "Flat")
    for key in ("docstore_sha256", "model_sha256", "index_sha256"):
        assert info[key] == manifest[key]
    assert info["vision_source"] == "tiny" and info["text_source"] == "tiny"  # the base models' faclip.json
    assert (info["max_k"], info["max_upload_mb"]) == (100, MAX_UPLOAD_MB)


def test_get_search_finds_the_passage_itself_first(client, artifacts):
    row = artifacts.docstore.iloc[3]
    response = client.get("/search", params={"text": row.passage_text, "k": 4})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"hits", "took_ms"} and body["took_ms"] >= 0
    assert_ranked(body["hits"], 4)
    first = body["hits"][0]
    assert (first["passage_id"], first["food_id"], first["title"]) == (row.id, row.food_id, row.title)
    assert first["score"] == pytest.approx(1.0, abs=1e-4)


def test_text_by_get_and_by_post_agree(client):
    query = "کباب کوبیده با نان"
    by_get = client.get("/search", params={"text": query, "k": 5}).json()["hits"]
    assert_ranked(by_get, 5)
    assert client.post("/search", json={"text": query, "k": 5}).json()["hits"] == by_get


def test_photo_hits_equal_the_cli_as_upload_and_as_base64(client, artifacts, faclip_cli):
    expected = cli_json(faclip_cli, artifacts, "--image", str(artifacts.photo), "--k", "5")
    photo = artifacts.photo.read_bytes()
    upload = client.post("/search/image", params={"k": 5}, files={"file": ("photo.jpg", photo, "image/jpeg")})
    assert upload.status_code == 200, upload.text
    assert_same_hits(upload.json()["hits"], expected)
    encoded = base64.b64encode(photo).decode()
    as_json = client.post("/search", json={"image": encoded, "k": 5})
    assert_same_hits(as_json.json()["hits"], expected)
    as_data_url = client.post("/search", json={"image": "data:image/jpeg;base64," + encoded, "k": 5})
    assert_same_hits(as_data_url.json()["hits"], expected)


def test_per_dish_keeps_the_best_passages_of_each_dish(client, artifacts, faclip_cli):
    everything = client.get("/search", params={"text": "قورمه سبزی", "k": 100}).json()["hits"]
    assert len(everything) == len(artifacts.docstore)  # k is capped at the index size
    seen, expected = set(), []
    for hit in everything:  # the full ranking, first passage of each dish kept
        if hit["food_id"] not in seen:
            seen.add(hit["food_id"])
            expected.append({**hit, "rank": len(expected) + 1})
    served = client.get("/search", params={"text": "قورمه سبزی", "k": 4, "per_dish": 1}).json()["hits"]
    assert served == expected[:4]
    assert len({h["food_id"] for h in served}) == 4
    # The CLI's --per-dish gives the server's answer (the text-query twin of the photo test above).
    by_cli = cli_json(faclip_cli, artifacts, "--text", "قورمه سبزی", "--k", "4", "--per-dish", "1")
    assert_same_hits(served, by_cli)
    one_each = client.post("/search", json={"text": "قورمه سبزی", "k": 100, "per_dish": 1}).json()["hits"]
    assert one_each == expected  # fewer than k when there are fewer dishes


def test_markup_in_passages_comes_back_as_plain_json_text(client):
    hits = client.get("/search", params={"text": MARKUP_PASSAGE, "k": 1}).json()["hits"]
    assert hits[0]["passage_text"] == MARKUP_PASSAGE


def test_page_and_static_files_with_a_csp_that_forbids_inline_script(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'dir="rtl"' in page.text and "/static/app.js" in page.text and "<script>" not in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    for name, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        static = client.get(f"/static/{name}")
        assert static.status_code == 200 and kind in static.headers["content-type"]
    assert "innerHTML" not in client.get("/static/app.js").text  # data goes in as text only
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/search", "/search/image", "/info", "/healthz"}


def test_no_cors_header_by_default(client):
    response = client.get("/info", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options("/search", headers={"Origin": "https://elsewhere.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


# --- bad input: a 4xx with one line, never a 500 ---------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (a decompression bomb's header) with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_requests(photo: bytes):
    text = "آش رشته"
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    upload = lambda data, name="photo.jpg": {"files": {"file": (name, data, "image/jpeg")}}  # noqa: E731
    return [
        # (id, method, path, request kwargs, status, words in the detail)
        ("get-no-text", "GET", "/search", {}, 422, "text: Field required"),
        ("get-blank-text", "GET", "/search", {"params": {"text": " \u200c "}}, 422, "text is empty"),
        ("get-k-0", "GET", "/search", {"params": {"text": text, "k": 0}}, 422, "k: Input should be greater"),
        ("get-k-word", "GET", "/search", {"params": {"text": text, "k": "five"}}, 422, "k: Input should be a valid integer"),
        ("get-k-fraction", "GET", "/search", {"params": {"text": text, "k": "2.5"}}, 422, "k: Input should be a valid integer"),
        ("get-k-huge", "GET", "/search", {"params": {"text": text, "k": 10**6}}, 422, "less than or equal to 100"),
        ("get-per-dish-0", "GET", "/search", {"params": {"text": text, "per_dish": 0}}, 422, "per_dish"),
        ("get-long-text", "GET", "/search", {"params": {"text": "آش " * 1000}}, 422, "at most 2000 characters"),
        ("post-broken-json", "POST", "/search", {"content": b'{"text": "\xd8\xa2\xd8\xb4", "k": ',
                                                 "headers": {"content-type": "application/json"}},
         400, "not valid JSON"),
        ("post-empty-body", "POST", "/search", {"headers": {"content-type": "application/json"}}, 422, "body is empty"),
        ("post-json-list", "POST", "/search", {"json": [text]}, 422, "valid dictionary"),
        ("post-neither", "POST", "/search", {"json": {"k": 3}}, 422, "give text, image, or both"),
        ("post-blank-text", "POST", "/search", {"json": {"text": "   "}}, 422, "text is empty"),
        ("post-text-not-str", "POST", "/search", {"json": {"text": 42}}, 422, "text: Input should be a valid string"),
        ("post-k-0", "POST", "/search", {"json": {"text": text, "k": 0}}, 422, "k: Input should be greater"),
        ("post-k-string", "POST", "/search", {"json": {"text": text, "k": "5"}}, 422, "k: Input should be a valid integer"),
        ("post-k-float", "POST", "/search", {"json": {"text": text, "k": 2.5}}, 422, "k: Input should be a valid integer"),
        ("post-k-bool", "POST", "/search", {"json": {"text": text, "k": True}}, 422, "k: Input should be a valid integer"),
        ("post-k-huge", "POST", "/search", {"json": {"text": text, "k": 101}}, 422, "less than or equal to 100"),
        ("post-unknown-field", "POST", "/search", {"json": {"txt": text}}, 422, "unknown field 'txt'"),
        ("post-bad-base64", "POST", "/search", {"json": {"image": "not*base64!"}}, 422, "not valid base64"),
        ("post-empty-image", "POST", "/search", {"json": {"image": ""}}, 422, "image: String should have at least 4"),
        ("post-null-text", "POST", "/search", {"json": {"text": None, "image": "aGk="}}, 422, "text: Input should be a valid string"),
        ("post-base64-not-image", "POST", "/search", {"json": {"image": b64(b"just some text")}}, 422,
         "cannot read image"),
        ("upload-none", "POST", "/search/image", {"data": {"k": "3"}}, 422, "no file uploaded"),
        ("upload-empty", "POST", "/search/image", upload(b""), 422, "the uploaded file is empty"),
        ("upload-not-image", "POST", "/search/image", upload(b"%PDF-1.4 not a photo", "doc.pdf"), 422,
         "cannot read image"),
        ("upload-truncated", "POST", "/search/image", upload(photo[: len(photo) // 2]), 422, "cannot read image"),
        ("upload-bomb", "POST", "/search/image", upload(_png_header_only(30000, 30000), "bomb.png"), 422,
         "cannot read image"),
        ("upload-k-0", "POST", "/search/image", {"params": {"k": 0}, **upload(photo)}, 422, "k: Input should be greater"),
    ]


@pytest.mark.parametrize("case", [case[0] for case in _bad_requests(b"")])
def test_bad_input_is_a_4xx_with_a_one_line_detail(client, artifacts, case):
    cases = {c[0]: c[1:] for c in _bad_requests(artifacts.photo.read_bytes())}
    method, path, kwargs, status, words = cases[case]
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail, detail


def test_the_server_keeps_serving_after_bad_input_and_never_logged_a_500(client, server):
    for _ in range(3):
        client.post("/search/image", files={"file": ("x.jpg", b"\xff\xd8\xff\xe0garbage", "image/jpeg")})
        client.post("/search", content=b"{", headers={"content-type": "application/json"})
    assert client.get("/healthz").json() == {"status": "ok"}
    assert len(client.get("/search", params={"text": "آش رشته", "k": 2}).json()["hits"]) == 2
    log = server.log()
    assert "Traceback" not in log and " 500 " not in log, log


# --- the upload cap ---------------------------------------------------------------------------------------


def _raw_exchange(port: int, head: bytes, body_parts=()) -> bytes:
    """Send a request head (and body parts) on a socket, then read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _status_and_detail(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["detail"]


MULTIPART_HEAD = (b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
                  b"Content-Type: image/jpeg\r\n\r\n")


def test_declared_oversize_upload_is_refused_before_any_body_is_sent(server):
    # The head announces 50 MB and not one body byte follows: an answer proves the body was never awaited.
    head = (f"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {50 * 1024 * 1024}\r\n"
            "Content-Type: multipart/form-data; boundary=bnd\r\n\r\n").encode()
    status, detail = _status_and_detail(_raw_exchange(server.port, head))
    assert status == 413 and f"limit of {MAX_UPLOAD_MB} MB" in detail and "--max-upload-mb" in detail


def test_streamed_upload_is_cut_off_once_past_the_cap(server):
    # Chunked, no length: the server must answer once the body passes the cap, though the body's end
    # (the last chunk) is never sent. The bytes sent end exactly one past the cap, so the server has read
    # all of them when it answers and closes (unread bytes would make the close a reset).
    head = (b"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=bnd\r\n\r\n")
    left = body_limit(MAX_UPLOAD_MB * 1024 * 1024) + 1 - len(MULTIPART_HEAD)
    pieces = [MULTIPART_HEAD] + [b"\0" * min(65536, left - start) for start in range(0, left, 65536)]
    status, detail = _status_and_detail(_raw_exchange(server.port, head, [b"%x\r\n%s\r\n" % (len(p), p)
                                                                          for p in pieces]))
    assert status == 413 and "limit" in detail


@pytest.mark.parametrize("as_base64", [False, True])
def test_photo_over_the_cap_but_inside_the_body_allowance_is_413(client, as_base64):
    big = b"\xff\xd8" + b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 10_000)
    if as_base64:
        response = client.post("/search", json={"image": base64.b64encode(big).decode()})
    else:
        response = client.post("/search/image", files={"file": ("big.jpg", big, "image/jpeg")})
    assert response.status_code == 413 and "limit" in response.json()["detail"]


# --- concurrency, logs, no writes -------------------------------------------------------------------------


def test_concurrent_mixed_clients_get_the_sequential_answers(client, artifacts):
    photo = artifacts.photo.read_bytes()
    queries = [("text", row.passage_text) for row in artifacts.docstore.itertuples()] + [("photo", photo)] * 6

    def ask(query):
        kind, value = query
        if kind == "text":
            return client.get("/search", params={"text": value, "k": 3}).json()["hits"]
        return client.post("/search/image", params={"k": 3}, files={"file": ("p.jpg", value, "image/jpeg")}).json()["hits"]

    sequential = [ask(q) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(ask, queries * 2))
    for got, want in zip(concurrent, sequential * 2):
        assert [h["passage_id"] for h in got] == [h["passage_id"] for h in want]
        # a text's score is fused (min-max normalised over its lists), which magnifies the last float32 digits a
        # batch's padding changes in the vector: the same ranking, the same scores to 3 decimals
        assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-3)


def test_one_log_line_per_request_without_the_query(client, server):
    secret = "سوپ جو محرمانه"
    client.get("/search", params={"text": secret, "k": 1})
    client.get("/info")
    lines = server.log().splitlines()
    search_lines = [line for line in lines if "GET /search 200 " in line]
    assert search_lines and all(line.rstrip().endswith(" ms") for line in search_lines)
    assert any("GET /info 200 " in line for line in lines)
    assert secret not in server.log() and "text=" not in server.log()


def test_no_endpoint_changed_an_artifact(client, artifacts, artifact_digest):
    assert artifacts_digest(artifacts) == artifact_digest


# --- the command ------------------------------------------------------------------------------------------


def test_serve_refuses_a_stale_index_with_one_line(artifacts, tmp_path):
    artifacts.docstore.iloc[1:].to_parquet(tmp_path / "docstore.parquet", index=False)  # another docstore
    args = artifacts.cli_args()
    args[args.index("--docstore") + 1] = str(tmp_path / "docstore.parquet")
    result = subprocess.run([sys.executable, "-m", "faclip", "serve", "--port", str(free_port()), *args], cwd=REPO,
                            env=faclip_env(), capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("INFO")]
    assert len(errors) == 1 and "another docstore" in errors[0] and "dvc repro index" in errors[0], result.stderr


@pytest.mark.parametrize("args, words", [(["--max-upload-mb", "0"], "--max-upload-mb 0 is invalid"),
                                         (["--cors-origin", "*"], "name the origins instead"),
                                         (["--max-batch", "0"], "--max-batch 0 is invalid"),
                                         (["--max-wait-ms", "-1"], "--max-wait-ms -1 is invalid"),
                                         (["--max-wait-ms", "nan"], "--max-wait-ms nan is invalid"),
                                         (["--max-batch-tokens", "0"], "--max-batch-tokens 0 is invalid"),
                                         (["--max-queue-wait", "0"], "--max-queue-wait 0 is invalid"),
                                         (["--max-queue-wait", "inf"], "--max-queue-wait inf is invalid")])
def test_serve_option_errors_are_one_line(args, words, capsys):
    from faclip.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", *args, "--index", "/nonexistent"])
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err


def test_serve_binds_loopback_by_default():
    from faclip.__main__ import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 8000, 10.0)
