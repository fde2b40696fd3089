"""Every command and snippet of README.md runs as copied, after Quick start (in a built copy of the repo).

A fenced block whose language is `bash` or `python` is run; any other fence (```text, ```json, a
bare ```) is output or data, never run. A runnable block that cannot run here is marked on the line
before its fence with `<!-- not run: REASON -->` (say, `needs S3`, `needs a GPU`, `needs the network`):
it is reported as skipped with that reason. Blocks that call the server (`127.0.0.1:8000`) run against a
`faclip serve` this module starts on a free port (the port substituted in the block).
"""

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from repo_utils import REPO, private_copy, tool_env
from serve_fixtures import free_port

FENCE = re.compile(r"^(?:<!--\s*not run:\s*(?P<reason>.+?)\s*-->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$",
                   re.S | re.M)
RUNNABLE = ("bash", "python")
SERVER = "127.0.0.1:8000"


def readme_blocks(text: str) -> list[tuple[str, str, str, str | None]]:
    """(id, language, body, not-run reason) of every runnable fenced block, in order; the id names the
    section and the block's first line."""
    blocks, counts = [], {}
    for match in FENCE.finditer(text):
        if match["lang"] not in RUNNABLE:
            continue
        heading = ([line.lstrip("#").strip() for line in text[:match.start()].splitlines() if line.startswith("#")]
                   or ["top"])[-1]
        counts[heading] = counts.get(heading, 0) + 1
        blocks.append((f"{heading} #{counts[heading]}", match["lang"], match["body"], match["reason"]))
    return blocks


BLOCKS = readme_blocks((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_marker_convention_is_parsed():
    text = ("# A\n```bash\necho 1\n```\n<!-- not run: needs S3 -->\n```bash\naws s3 ls\n```\n"
            "```json\n{}\n```\n## B\n```python\nprint(2)\n```\n")
    assert readme_blocks(text) == [("A #1", "bash", "echo 1\n", None), ("A #2", "bash", "aws s3 ls\n", "needs S3"),
                                   ("B #1", "python", "print(2)\n", None)]
    assert len(BLOCKS) >= 10  # the README's own blocks are found


@pytest.fixture(scope="module")
def readme_repo(built_repo, tmp_path_factory) -> Path:
    """A private copy of the built repo, as a user has it after Quick start."""
    return private_copy(built_repo, tmp_path_factory.mktemp("readme"))


@pytest.fixture(scope="module")
def server(readme_repo):
    """`faclip serve` on a free port in the README's repo copy: the address curl blocks are pointed at."""
    port = free_port()
    env = dict(tool_env(), PYTHONPATH=str(readme_repo))
    process = subprocess.Popen([sys.executable, "-m", "faclip", "serve", "--port", str(port), "--threads", "1"],
                               cwd=readme_repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read()  # 503 until loaded
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"faclip serve did not start: {process.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.e2e
@pytest.mark.xdist_group("readme")  # one worker runs them all, in one repo copy with one server
@pytest.mark.parametrize("block_id, lang, body, reason", BLOCKS, ids=[block[0] for block in BLOCKS])
def test_readme_block_runs_as_copied(block_id, lang, body, reason, readme_repo, request):
    if reason:
        pytest.skip(f"README block {block_id!r} is marked not run: {reason}")
    calls_server = SERVER in body
    if calls_server:
        body = body.replace(SERVER, request.getfixturevalue("server"))
    env = dict(tool_env(), PYTHONPATH=str(readme_repo))
    command = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
    result = subprocess.run(command, cwd=readme_repo, env=env, capture_output=True, text=True, encoding="utf-8",
                            timeout=600)
    assert result.returncode == 0, f"README block {block_id!r} failed:\n{body}\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    if calls_server:  # curl prints the server's answer: hits for a search, never an error
        assert result.stdout.strip() and '"detail"' not in result.stdout, result.stdout[-3000:]
        if "/search" in body:
            assert '"hits"' in result.stdout, result.stdout[-3000:]
