"""A real `python -m faclip serve` on a free loopback port, over tiny artifacts built in tmp.

conftest.py starts one such server per test session (fixtures `artifacts`, `server`), shared by the API tests
(test_serve.py), the browser tests (test_serve_page.py, test_vqa_page.py) and schemathesis
(test_serve_contract.py): each start costs seconds of CPU, almost all of it importing torch and transformers.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from conftest import DISHES, REPO, draw_dish_image

from faclip.files import sha256_dir, sha256_file
from faclip.text import food_id_for, passage_id_for

# A dish whose title and passage hold markup, as scraped data may: the page must show these characters.
MARKUP_TITLE = "<b>کشک بادمجان</b>"
MARKUP_PASSAGE = ('کشک بادمجان <img src="x" onerror="window.__pwned = 1"> با نعناع داغ '
                  '<script>window.__pwned = 2</script> خورده می‌شود.')

# The shared server's flags: a small upload cap, so the 413 tests send little; one torch thread.
SERVER_MAX_UPLOAD_MB = 1
SERVER_FLAGS = ["--max-upload-mb", str(SERVER_MAX_UPLOAD_MB), "--threads", "1"]


@dataclass(frozen=True)
class Artifacts:
    text_dir: Path
    vision_dir: Path
    index_dir: Path
    docstore_path: Path
    docstore: pd.DataFrame
    photo: Path

    def cli_args(self) -> list[str]:
        return ["--model", str(self.text_dir), "--vision", str(self.vision_dir), "--index", str(self.index_dir),
                "--docstore", str(self.docstore_path)]


def build_artifacts(root: Path, tiny_model_dirs) -> Artifacts:
    """DISHES plus the markup dish as a docstore, a Flat index over it, and one photo."""
    from faclip.index import build_passage_index
    from faclip.lexical import build_lexical_index

    rows = [(passage_id_for(p), food_id_for(title), title, p) for title, passages in DISHES for p in passages]
    rows.append((passage_id_for(MARKUP_PASSAGE), food_id_for(MARKUP_TITLE), MARKUP_TITLE, MARKUP_PASSAGE))
    docstore = pd.DataFrame(sorted(rows), columns=["id", "food_id", "title", "passage_text"])
    docstore.to_parquet(root / "docstore.parquet", index=False)
    text_dir, vision_dir = tiny_model_dirs
    build_passage_index(text_dir, root / "docstore.parquet", root / "index", factory="Flat", device="cpu")
    build_lexical_index(root / "docstore.parquet", root / "lexical")
    photo = root / "photo.jpg"
    draw_dish_image(1, 0, size=96).save(photo, quality=90)
    return Artifacts(text_dir, vision_dir, root / "index", root / "docstore.parquet", docstore, photo)


def artifacts_digest(artifacts: Artifacts) -> str:
    """The sha256 of every artifact folder and file: equal before and after means nothing wrote to them."""
    folders = (artifacts.text_dir, artifacts.vision_dir, artifacts.index_dir)
    return " ".join([*map(sha256_dir, folders), sha256_file(artifacts.docstore_path)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def faclip_env() -> dict:
    # CPU, as the CLI the answers are compared with (GPU encoding runs in bf16); offline.
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="",
                TOKENIZERS_PARALLELISM="false")


class Server:
    """`python -m faclip serve ARGS` in a subprocess; `url`, `log()` (its stderr so far), `stop()`."""

    def __init__(self, args: list[str], log_path: Path, timeout: float = 90.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faclip", "serve", "--port", str(self.port), *args],
            cwd=REPO, env=faclip_env(), stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"faclip serve exited {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:  # 503 while loading
                    if json.load(response) == {"ready": True}:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"faclip serve was not ready (/readyz) in {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
