"""Load on `python -m faclip serve`: a bounded burst of mixed text / photo requests on loopback.

    python benchmarks/serve_load.py --root .            # after `dvc repro`: serve models/ and data/ of this repo
    python benchmarks/serve_load.py                     # no index here: build the pipeline on data/sample in tmp (~2 min)
    python benchmarks/serve_load.py --requests 400 --concurrency 8 --threads 2

It starts the real server (`python -m faclip serve` on a free 127.0.0.1 port), waits for /healthz, then
`--concurrency` client threads send `--requests` requests in all: `GET /search?text=` with a dish title,
or `POST /search/image` with one of the sample's photos (`--photo-share` of them), each asking k=5. It
stops by itself after the last request or after `--max-seconds`. Every answer must be a 200 with k hits;
anything else is counted as an error and the script exits 1. It prints client-side latency p50/p95/p99
per kind and overall, requests per second, and the server's own `took_ms` median.

`open_loop()` (used by serve_batching.py) is the overload run: queries on a fixed schedule, whatever the answers.

The client threads run on the same CPUs as the server: on a 2-core machine they take a share of them.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import load_average, machine_line  # noqa: E402

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, port: int, threads: int, log_path: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python -m faclip serve` over root's models/ and data/docstore.parquet; returns once /readyz answers 200."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = ["--model", root / "models/finetuned", "--vision", root / "models/base/vision",
            "--index", root / "models/index", "--docstore", root / "data/docstore.parquet"]
    log = open(log_path, "w", encoding="utf-8")
    server = subprocess.Popen([sys.executable, "-m", "faclip", "serve", "--port", str(port),
                               "--threads", str(threads), *map(str, args), *extra],
                              cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited {server.returncode}:\n{log_path.read_text(encoding='utf-8')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return server  # 200: loaded (503 while loading raises HTTPError, an OSError)
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit(f"the server was not ready (/readyz) in 180 s; see {log_path}")


def sample_photos(data_root: Path, limit: int = 64) -> list[bytes]:
    paths = sorted(p for p in data_root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise SystemExit(f"no photos under {data_root}")
    return [p.read_bytes() for p in paths[:limit]]


def run_load(url: str, titles: list[str], photos: list[bytes], *, requests: int, concurrency: int,
             photo_share: float, k: int, max_seconds: float, seed: int = 0) -> dict:
    """Send the requests from `concurrency` threads; per request (kind, ok, latency ms, server took_ms)."""
    rng = random.Random(seed)
    plan = [("photo", rng.choice(photos)) if rng.random() < photo_share else ("text", rng.choice(titles))
            for _ in range(requests)]
    deadline = time.monotonic() + max_seconds
    local = threading.local()
    errors: list[str] = []

    def one(item):
        if time.monotonic() > deadline:
            return None
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=60)
        kind, value = item
        start = time.perf_counter()
        try:
            if kind == "text":
                response = local.client.get("/search", params={"text": value, "k": k})
            else:
                response = local.client.post("/search/image", params={"k": k},
                                             files={"file": ("photo.jpg", value, "image/jpeg")})
            latency = (time.perf_counter() - start) * 1000
            body = response.json()
            ok = response.status_code == 200 and len(body.get("hits", [])) == k
            if not ok:
                errors.append(f"{kind}: {response.status_code} {str(body)[:160]}")
            return kind, ok, latency, body.get("took_ms", float("nan"))
        except (httpx.HTTPError, ValueError) as err:
            errors.append(f"{kind}: {type(err).__name__}: {err}")
            return kind, False, (time.perf_counter() - start) * 1000, float("nan")

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        rows = [row for row in pool.map(one, plan) if row is not None]
    wall = time.perf_counter() - start
    return {"rows": rows, "wall_s": wall, "errors": errors, "planned": requests}


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MiB (VmRSS, VmHWM)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def open_loop(url: str, pid: int, texts: list[str], *, rate: float, seconds: float, k: int = 5,
              clients: int = 256) -> dict:
    """Overload, open loop: `GET /search?text=` sent at `rate` per second for `seconds`, on a fixed schedule
    whatever the answers (up to `clients` in flight), while a probe thread times `GET /healthz` every 0.25 s.

    Returns the answered (200) and shed (503) latencies in ms, any other status, the /healthz latencies, and
    the server's memory (current, peak MiB) before and after."""
    memory_before = rss_mib(pid)
    local, lock = threading.local(), threading.Lock()
    answered, shed, other, retry_after = [], [], [], []

    def one(text: str) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        start = time.perf_counter()
        try:
            response = local.client.get("/search", params={"text": text, "k": k})
            status = response.status_code
        except httpx.HTTPError as err:
            status = type(err).__name__
        ms = (time.perf_counter() - start) * 1000
        with lock:
            if status == 200:
                answered.append(ms)
            elif status == 503:
                shed.append(ms)
                retry_after.append(int(response.headers.get("retry-after", "0")))
            else:
                other.append(status)

    healthz: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.wait(0.25):
                start = time.perf_counter()
                client.get("/healthz")
                healthz.append((time.perf_counter() - start) * 1000)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    count = int(rate * seconds)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, texts[i % len(texts)])
        sent_s = time.perf_counter() - start
    done.set()
    prober.join()
    return {"sent": count, "sent_s": sent_s, "wall_s": time.perf_counter() - start, "answered": answered,
            "shed": shed, "other": other, "retry_after": retry_after, "healthz": healthz,
            "memory_before": memory_before, "memory_after": rss_mib(pid)}


def percentiles(ms) -> str:
    ms = np.asarray(ms)
    if not len(ms):
        return "no requests"
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   p99 {p99:7.1f} ms   max {ms.max():7.1f} ms"


def report(result: dict, concurrency: int) -> None:
    rows = result["rows"]
    print(f"{len(rows)} of {result['planned']} requests in {result['wall_s']:.1f} s at concurrency {concurrency}: "
          f"{len(rows) / result['wall_s']:.1f} requests/s, {len(result['errors'])} errors")
    for kind in ("text", "photo"):
        mine = [r for r in rows if r[0] == kind]
        if mine:
            took = np.nanmedian([r[3] for r in mine])
            print(f"  {kind:<6} {len(mine):4d} requests   {percentiles([r[2] for r in mine])}   "
                  f"(server took_ms p50 {took:.1f})")
    print(f"  all    {len(rows):4d} requests   {percentiles([r[2] for r in rows])}")
    for error in result["errors"][:10]:
        print(f"  error: {error}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="a folder with models/ and data/docstore.parquet (default: this repo if it has an "
                             "index, else a pipeline built on data/sample in a temp folder)")
    parser.add_argument("--data-root", type=Path, default=REPO / "data/sample", help="where the photos come from")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--photo-share", type=float, default=0.5, help="share of photo requests (default 0.5)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="the server's --threads (torch threads; default: all cores)")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop sending after this long")
    args = parser.parse_args(argv)

    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="faclip-serve-load-") as tmp:
        root = args.root
        if root is None:
            root = REPO if (REPO / "models/index/manifest.json").is_file() else Path(tmp) / "pipeline"
        if not (root / "models/index/manifest.json").is_file():
            from search_latency import build_pipeline

            print(f"building the pipeline on {args.data_root} in {root} (1 epoch)", flush=True)
            build_pipeline(root, args.data_root, epochs=1)
        titles = sorted(set(pd.read_parquet(root / "data/docstore.parquet")["title"]))
        photos = sample_photos(args.data_root)
        port = free_port()
        log_path = Path(tmp) / "server.log"
        server = start_server(root, port, args.threads, log_path)
        try:
            url = f"http://127.0.0.1:{port}"
            run_load(url, titles, photos, requests=16, concurrency=2, photo_share=0.5, k=args.k,
                     max_seconds=60, seed=1)  # warm-up, not counted
            print(f"server --threads {args.threads}; {len(titles)} titles, {len(photos)} photos; "
                  f"load average before: {load_average()}", flush=True)
            result = run_load(url, titles, photos, requests=args.requests, concurrency=args.concurrency,
                              photo_share=args.photo_share, k=args.k, max_seconds=args.max_seconds)
            report(result, args.concurrency)
            log = log_path.read_text(encoding="utf-8")
            served = sum(1 for line in log.splitlines() if " /search" in line)
            print(f"server log: {served} search lines, {log.count('Traceback')} tracebacks")
        finally:
            server.terminate()
            server.wait(timeout=30)
    sys.exit(1 if result["errors"] or len(result["rows"]) < result["planned"] else 0)


if __name__ == "__main__":
    main()
