"""The CLI answers at once: `--help` and every bad argument are handled before torch, transformers,
FAISS or pandas load (they take seconds and hundreds of MB), and a bad number is one line."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "transformers", "faiss", "pandas", "fastapi", "vl_convert")


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -X importtime -m faclip ARGS`: the result and the top-level modules it imported."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "faclip", *args], cwd=REPO, env=env,
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
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_a_bad_number_is_one_line_before_anything_heavy_loads(args, words):
    # The artifact paths do not exist: had the command gone on, it would have failed on them instead.
    result, imported = run_cli(*args, "--index", "/nonexistent/index")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("faclip error:") and words in errors[0], errors
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))

