"""Issue 11 under DVC: a failed run never costs the last good result, `dvc status` stays truthful,
`epochs: 0` works from a clean state, DVC's own `-S` forms mean what they say, and a hostile data
folder (a FIFO DVC would hang on, broken records) gets one-line errors and named skips."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import yaml

from conftest import E2E_EPOCHS, REPO
from test_params_hardening import alias_bomb
from repo_utils import STAGES, dvc, dvc_status, git, private_copy, ran_stages, raw_data_repo, run, tool_env
from test_dvc_workflows import assert_status_clean, tree_digest

pytestmark = pytest.mark.e2e

# What a failed run must leave exactly as it was (every stage's outputs, metrics included, and the gate's own:
# it persists, so a refused edit costs nothing once params.yaml is restored).
KEPT = ["metrics/params.checked", "data/docstore.parquet", "data/training_pairs.csv", "data/prepare_skips.csv",
        "data/image_embeddings", "models/base/text", "models/base/vision", "models/finetuned", "models/index", "metrics/prepare.json",
        "metrics/train.json", "metrics/train", "metrics/eval.json", "metrics/headline.json", "metrics/eval_plots"]


def edit_params(repo: Path, key: str, line: str) -> None:
    """Replace the line `key: ...` of params.yaml (indent included in `key`) by `line`, as a user edits it
    (comments elsewhere kept, whatever the defaults are)."""
    path = repo / "params.yaml"
    text, count = re.subn(rf"(?m)^{key}:.*$", line, path.read_text(encoding="utf-8"), count=1)
    assert count == 1, key
    path.write_text(text, encoding="utf-8")


def kept(repo: Path) -> dict[str, str]:
    return {out: tree_digest(repo / out) for out in KEPT}


def faclip_errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("faclip error")]


@pytest.fixture
def repo(built_repo, tmp_path) -> Path:
    return private_copy(built_repo, tmp_path)


@pytest.mark.retrains
def test_epochs_zero_runs_from_a_clean_state_and_writes_every_declared_output(repo):
    # The documented baseline, from a state with no checkpoints folder (as a fresh clone has none).
    shutil.rmtree(repo / "models/checkpoints")
    edit_params(repo, "epochs", "epochs: 0")
    result = dvc(repo, "repro")
    assert ran_stages(result.stdout) == {"check_params", "train", "index", "evaluate"}, result.stdout
    assert (repo / "models/checkpoints").is_dir()  # declared in dvc.yaml; train saves no checkpoint at epochs 0
    assert not any((repo / "models/checkpoints").iterdir())
    train = json.loads((repo / "metrics/train.json").read_text(encoding="utf-8"))
    assert train["epochs"] == 0 and train["steps"] == 0
    assert dvc_status(repo) == {}


@pytest.mark.parametrize("key, line, named", [
    ("epochs", "epochs: -1", "epochs=-1 is invalid"),
    ("learning_rate", "learning_rate: fast", "learning_rate='fast' is invalid"),
    ("epochs", f"epochs: {E2E_EPOCHS}\nepoch: 5", "unknown key 'epoch' (did you mean 'epochs'?)"),
    ("  test_fraction", "  test_fractoin: 0.2", "unknown key 'data.test_fractoin' (did you mean 'data.test_fraction'?)"),
    # dvc.yaml interpolates ${data.root}: without it DVC itself stops, before running anything.
    ("  root", "  rooot: data/sample", "ERROR: failed to parse 'stages.prepare.deps' in 'dvc.yaml': "
                                       "Could not find 'data.root'"),
], ids=["epochs=-1", "learning_rate=fast", "typo epoch", "typo data.test_fraction", "typo data.rooot"])
def test_bad_params_fail_in_one_line_before_any_output_is_deleted(repo, key, line, named):
    before = kept(repo)
    edit_params(repo, key, line)
    result = dvc(repo, "repro", check=False)
    assert result.returncode != 0
    if named.startswith("ERROR"):
        assert named in result.stderr and ran_stages(result.stdout) == set(), result.stdout + result.stderr
        assert kept(repo) == before
        return
    errors = faclip_errors(result)
    assert len(errors) == 1 and named in errors[0], result.stdout + result.stderr
    assert ran_stages(result.stdout) == {"check_params"}, result.stdout
    assert kept(repo) == before  # models/finetuned, the index and every metric are still the last good ones
    assert "check_params" in dvc_status(repo)  # the gate did not pass: the edit is still pending
    # Restoring params.yaml restores `dvc status` exactly: nothing is out of date, nothing reruns.
    git(repo, "checkout", "params.yaml")
    assert dvc_status(repo) == {} and git(repo, "status", "--porcelain").stdout == ""
    assert ran_stages(dvc(repo, "repro").stdout) == set()
    assert kept(repo) == before


def test_a_good_edit_reruns_only_the_stages_that_read_the_key(repo):
    before = kept(repo)
    edit_params(repo, "  k", "  k: [1, 3]")
    result = dvc(repo, "repro")
    assert ran_stages(result.stdout) == {"check_params", "evaluate"}, result.stdout
    after = kept(repo)
    assert {k for k in before if before[k] != after[k]} == {"metrics/eval.json", "metrics/headline.json",
                                                          "metrics/eval_plots"}
    assert_status_clean(repo)


def test_a_failed_experiment_names_the_one_command_that_puts_everything_back(repo, tmp_path):
    # An experiment on a folder with no valid pair: the gate passes (it is a folder), so DVC deletes prepare's
    # outputs and runs it, and it fails; params.yaml keeps the experiment's data.root. Its error line names the
    # one command that goes back, and that command restores the last commit's params and outputs.
    before = kept(repo)
    (tmp_path / "no_pairs/dish").mkdir(parents=True)
    (tmp_path / "no_pairs/dish/records.json").write_text('[{"title": "کباب"}]', encoding="utf-8")
    result = dvc(repo, "exp", "run", "-S", f"data.root={tmp_path / 'no_pairs'}", check=False)
    errors = faclip_errors(result)
    assert result.returncode != 0 and len(errors) == 1, result.stdout + result.stderr
    assert "no valid (image, passage) pairs" in errors[0], errors
    assert not (repo / "data/docstore.parquet").exists()
    assert "params.yaml" in git(repo, "status", "--porcelain").stdout
    command = re.search(r"to go back to the last commit's params and outputs: `([^`]+)`$", errors[0])[1]
    run(repo, "bash", "-euo", "pipefail", "-c", command)
    assert git(repo, "status", "--porcelain").stdout == "" and dvc_status(repo) == {}
    assert kept(repo) == before


@pytest.mark.quick
def test_a_set_param_typo_is_refused_before_anything_runs(repo):
    # (`-S learning_rate=0.00003`, which DVC writes as `3e-05`, is the README's second experiment: every stage
    # reads it as a number, test_readme.py::test_the_experiments_rerun_only_the_stages_that_read_the_key.)
    # A -S typo is refused by DVC itself (its params are struct): nothing runs.
    typo = dvc(repo, "exp", "run", "-S", "epoch=5", check=False)
    assert typo.returncode != 0 and "epoch" in typo.stderr and ran_stages(typo.stdout) == set()


def test_a_hostile_data_folder_gets_one_line_errors_and_named_skips(repo):
    hostile = repo / "data/hostile"
    shutil.copytree(repo / "data/sample", hostile)
    dish = next(p.parent for p in sorted(hostile.rglob("*.json")))
    image = next(p for p in sorted(dish.rglob("*.jpg"))).relative_to(dish).as_posix()
    os.mkfifo(dish / "stream.json")  # DVC's own hashing of data.root would wait on it forever
    records = [{"title": "\u200c", "response": "متن", "image_path": image},
               {"title": "کباب", "response": " \u200c\u0640\u200b ", "image_path": image},
               {"title": "کب\u0000اب", "response": "متن", "image_path": image}]
    (dish / "hostile.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (dish / "deep.json").write_text("[" * 100_000, encoding="utf-8")
    before = kept(repo)
    edit_params(repo, "  root", "  root: data/hostile")

    # check_params names the FIFO before DVC hashes data.root (which would hang), outputs untouched.
    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=dict(tool_env(), PYTHONPATH=str(repo)),
                            capture_output=True, text=True, timeout=300)
    errors = faclip_errors(result)
    assert result.returncode != 0 and len(errors) == 1, result.stdout + result.stderr
    assert "stream.json (a FIFO (named pipe))" in errors[0] and ".dvcignore" in errors[0]
    assert kept(repo) == before

    # Hidden from DVC by .dvcignore, the FIFO is a named skip in prepare, like every bad record.
    (repo / ".dvcignore").write_text("stream.json\n", encoding="utf-8")
    result = dvc(repo, "repro")
    assert {"check_params", "prepare"} <= ran_stages(result.stdout), result.stdout
    stats = json.loads((repo / "metrics/prepare.json").read_text(encoding="utf-8"))
    assert stats["skipped"] == {"invalid_characters": 1, "json_not_a_file": 1, "json_too_deep": 1,
                                "missing_response": 1, "missing_title": 1}, stats["skipped"]
    assert dvc_status(repo) == {}


def gate_repo(root: Path) -> Path:
    """A small DVC repository: faclip, dvc.yaml's own check_params stage and one stage after it that copies
    the gate's output (as every stage depends on it), reproduced and committed: seconds, not the pipeline's
    minutes."""
    repo, raw = raw_data_repo(root, n_dishes=1, images_per_dish=1)
    shutil.copytree(REPO / "faclip", repo / "faclip", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "stages").mkdir()
    shutil.copy2(REPO / "stages/check_params.py", repo / "stages")
    params = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", raw.name)
    (repo / "params.yaml").write_text(params, encoding="utf-8")
    stages = {"check_params": yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["check_params"],
              "after": {"cmd": "cp metrics/params.checked after.txt", "deps": ["metrics/params.checked"],
                        "outs": ["after.txt"]}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}), encoding="utf-8")
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "gate repo")
    assert dvc_status(repo) == {}
    return repo


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    """gate_repo, built once for this module's tests: take a private_copy to change it."""
    return gate_repo(tmp_path_factory.mktemp("gate"))


def gate_outputs(repo: Path) -> dict[str, bytes]:
    return {name: (repo / name).read_bytes() for name in ("metrics/params.checked", "after.txt")}


def test_a_refused_edit_leaves_dvc_status_as_it_was_once_params_yaml_is_restored(gate, tmp_path):
    # Before: DVC deleted the gate's output before running it, so after any refused edit every stage looked
    # changed until the next `dvc repro`, even with params.yaml restored.
    repo = private_copy(gate, tmp_path)
    before = gate_outputs(repo)
    for edits, named in [([("epochs", "epochs: -1")], "epochs=-1 is invalid"),
                         ([("  root", "  root: /no/such/folder")], "data.root='/no/such/folder' does not exist"),
                         ([("  text", "  text: no-such-org/no-such-model")], "is not in the local Hugging Face cache"),
                         ([("warmup_steps", "warmup_steps: &w 7"), ("seed", "seed: *w")], "a YAML alias (*w)")]:
        for key, line in edits:
            edit_params(repo, key, line)
        result = dvc(repo, "repro", check=False)
        errors = faclip_errors(result)
        assert result.returncode != 0 and len(errors) == 1 and named in errors[0], result.stdout + result.stderr
        assert gate_outputs(repo) == before
        assert set(dvc_status(repo)) == {"check_params"}  # only the gate's params changed
        git(repo, "checkout", "params.yaml")
        assert dvc_status(repo) == {}, named


@pytest.mark.parametrize("key, line, dvc_says", [
    ("  k", "  k: " + "[" * 100_000 + "]" * 100_000, "ERROR: unexpected error - maximum recursion depth exceeded"),
    ("epochs", "epochs: " + "9" * 5000, "ERROR: unexpected error - Exceeds the limit (4300 digits)"),
    ("  k", "  k: " + alias_bomb(), None),  # DVC expands it for minutes, gigabytes: stopped after 15 s
], ids=["nested 100000 deep", "5000 digits", "alias bomb"])
def test_dvc_parses_params_yaml_before_the_gate_and_stopping_on_hostile_yaml_loses_nothing(gate, tmp_path, key, line,
                                                                                          dvc_says):
    # README, "When things go wrong": under `dvc repro` these never reach the gate (which refuses each in one
    # line when run itself: test_params_hardening.py); DVC stops, or is stopped, and nothing is lost.
    repo = private_copy(gate, tmp_path)
    before = gate_outputs(repo)
    edit_params(repo, key, line)
    try:
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, capture_output=True, text=True,
                                env=dict(tool_env(), PYTHONPATH=str(repo)), timeout=15)
        assert dvc_says is not None and result.returncode != 0 and dvc_says in result.stderr, result.stderr
        output = result.stdout
    except subprocess.TimeoutExpired as stopped:
        assert dvc_says is None
        output = (stopped.stdout or b"").decode()
    assert ran_stages(output) == set() and gate_outputs(repo) == before
    git(repo, "checkout", "params.yaml")
    assert dvc_status(repo) == {}
