"""The CLI answers at once: `--help` and every bad argument are handled before torch, transformers,
FAISS or pandas load (they take seconds and hundreds of MB), and a bad number is one line."""

import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "transformers", "faiss", "pandas", "fastapi", "vl_convert")


def run_cli(*args: str, cwd=REPO) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -X importtime -m faclip ARGS` (in the repo, or `cwd`): the result and the top-level modules it imported."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "faclip", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, encoding="utf-8", timeout=120)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    return result, imported


@pytest.mark.parametrize("args", [["--help"], ["search", "--help"], ["serve", "--help"], ["plots", "--help"]],
                         ids=["faclip", "search", "serve", "plots"])
def test_help_loads_nothing_heavy(args):
    result, imported = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: faclip" in result.stdout
    assert "faclip" in imported  # the parse really ran through -X importtime
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.parametrize("args, words", [
    (["search", "--text", "آش", "--k", "0"], "--k 0 is invalid"),
    (["search", "--text", "آش", "--k", "-3"], "--k -3 is invalid"),
    (["search", "--image", "missing.jpg", "--per-dish", "0"], "--per-dish 0 is invalid"),
    (["serve", "--max-upload-mb", "nan"], "--max-upload-mb nan is invalid"),
    (["serve", "--max-upload-mb", "inf"], "--max-upload-mb inf is invalid"),
    (["serve", "--max-upload-mb", "-1"], "--max-upload-mb -1 is invalid"),
    (["serve", "--max-upload-mb", "0"], "--max-upload-mb 0 is invalid"),
    (["serve", "--threads", "-1"], "--threads -1 is invalid"),
    (["serve", "--threads", "0"], "--threads 0 is invalid"),
    (["serve", "--port", "70000"], "--port 70000 is invalid"),
    (["serve", "--port", "0"], "--port 0 is invalid"),
    (["serve", "--port", "-1"], "--port -1 is invalid"),
    (["search", "--image", "x.jpg", "--text", "آش", "--photo-weight", "2"], "--photo-weight 2 is invalid"),
    (["search", "--image", "x.jpg", "--text", "آش", "--photo-weight", "-0.1"], "--photo-weight -0.1 is invalid"),
    (["search", "--image", "x.jpg", "--text", "آش", "--photo-weight", "nan"], "--photo-weight nan is invalid"),
    (["serve", "--max-batch", "0"], "--max-batch 0 is invalid"),
    (["serve", "--max-batch", "-5"], "--max-batch -5 is invalid"),
    (["serve", "--max-wait-ms", "nan"], "--max-wait-ms nan is invalid"),
    (["serve", "--max-wait-ms", "-1"], "--max-wait-ms -1 is invalid"),
    (["serve", "--max-wait-ms", "1e9"], "--max-wait-ms 1e+09 is invalid"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_a_bad_number_is_one_line_before_anything_heavy_loads(args, words):
    # The artifact paths do not exist: had the command gone on, it would have failed on them instead.
    result, imported = run_cli(*args, "--index", "/nonexistent/index")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("faclip error:") and words in errors[0], errors
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))



def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The command's only stderr line (besides -X importtime's), which must be a faclip error; exit 2."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("faclip error:"), result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["search"], "give --image PHOTO, --text"),
    (["search", "--image", "missing.jpg"], "cannot read image missing.jpg"),
    (["search", "--image", "missing.jpg", "--text", "آش"], "cannot read image missing.jpg"),
    (["search", "--image", "/dev/null"], "cannot read image /dev/null"),
    (["search", "--text", "آش", "--photo-weight", "0.5"], "--photo-weight weighs a photo against a question"),
    (["search", "--image", "x.jpg", "--photo-weight", "0.5"], "--photo-weight weighs a photo against a question"),
    (["search", "--text", " \u200c\u200d\u0640 "], "the text query is empty"),
    (["search", "--text", "\u200b" * 9000], "the text query is empty"),
    (["serve", "--cors-origin", "*"], "name the origins instead"),
    (["plots", "--rev=--help"], "--rev '--help' is not a revision"),
    (["plots", "--rev=--open"], "--rev '--open' is not a revision"),
    (["plots", "--rev=-o", "--rev=DIR"], "--rev '-o' is not a revision"),
    (["plots", "--rev", "HEAD", "--rev=-f"], "--rev '-f' is not a revision"),
    (["plots", "--rev=--targets=x"], "--rev '--targets=x' is not a revision"),
    (["plots", "--rev", "HEAD\nmain"], "--rev 'HEAD\\nmain' is not a revision"),
    (["plots", "--rev", "HEAD main"], "--rev 'HEAD main' is not a revision"),
    (["plots", "--rev", ""], "--rev '' is not a revision"),
    (["plots", "--out", "docs"], "--out docs is a directory"),  # the other --out cases: test_plots (in tmp_path)
], ids=lambda value: " ".join(value)[:60] if isinstance(value, list) else None)
def test_a_usage_error_is_one_line_before_anything_heavy_loads(args, words):
    result, imported = run_cli(*args)
    assert words in one_error_line(result)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.parametrize("args, words", [
    ([], "the following arguments are required: command; see `faclip --help`"),
    (["find"], "argument command: invalid choice: 'find'"),
    (["search", "--k", "five"], "argument --k: invalid int value: 'five'; see `faclip search --help`"),
    (["serve", "--max-wait-ms", "soon"], "argument --max-wait-ms: invalid float value: 'soon'"),
    (["search", "--text", "آش", "--bogus"], "unrecognized arguments: --bogus"),
    (["search", "--text", "آش", "extra\nline"], "unrecognized arguments: extra\\nline"),
    (["plots", "--rev"], "argument --rev: expected one argument; see `faclip plots --help`"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_an_argument_error_is_one_line(args, words):
    result, imported = run_cli(*args)
    assert words in one_error_line(result)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


ARTIFACTS = ["models/finetuned", "models/base/vision", "models/index", "models/lexical", "data/docstore.parquet"]


@pytest.mark.parametrize("command", [["search", "--text", "آش"], ["search", "--image", "photo.jpg"], ["serve"]])
def test_missing_artifacts_are_one_line_naming_the_whole_fix(tmp_path, command):
    # A fresh clone: no pipeline output. The fix is `dvc repro` (all of them), or `dvc pull` once a remote is
    # configured, never one stage at a time; `serve` says so before uvicorn starts (no server lines).
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "photo.jpg")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    autostage = true\n", encoding="utf-8")
    result, imported = run_cli(*command, cwd=tmp_path)
    line = one_error_line(result)
    assert all(path in line for path in ARTIFACTS) and line.endswith("run `dvc repro` (the whole pipeline)"), line
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    (tmp_path / "models" / "finetuned").mkdir(parents=True)  # one stage's output there: the others still named
    (tmp_path / ".dvc" / "config.local").write_text("['remote \"storage\"']\n    url = /somewhere\n", encoding="utf-8")
    line = one_error_line(run_cli(*command, cwd=tmp_path)[0])
    assert "models/finetuned" not in line and all(path in line for path in ARTIFACTS[1:]), line
    assert "run `dvc pull` (a DVC remote is configured), or `dvc repro`" in line, line


def test_serve_refuses_an_address_it_cannot_listen_on_before_uvicorn_starts(tmp_path):
    for path in ARTIFACTS:  # present (the address is checked after them)
        (tmp_path / path).mkdir(parents=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, imported = run_cli("serve", "--port", str(port), cwd=tmp_path)
        assert f"cannot listen on '127.0.0.1' port {port}" in one_error_line(result)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    result, _ = run_cli("serve", "--host", "192.0.2.1", cwd=tmp_path)  # TEST-NET: no interface of this machine has it
    assert "cannot listen on '192.0.2.1' port 8000" in one_error_line(result)
