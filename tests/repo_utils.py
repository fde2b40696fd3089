"""Temp copies of this repository for end-to-end tests that run the real `dvc` commands."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ["check_params", "prepare", "base", "embed", "train", "index", "lexical", "evaluate"]
GIT_ENV = {"GIT_AUTHOR_NAME": "faclip-tests", "GIT_AUTHOR_EMAIL": "tests@faclip.invalid",
           "GIT_COMMITTER_NAME": "faclip-tests", "GIT_COMMITTER_EMAIL": "tests@faclip.invalid"}


def tool_env() -> dict:
    """Environment for dvc/git subprocesses: this interpreter's bin first (dvc.yaml says `python`), offline."""
    env = dict(os.environ, **GIT_ENV, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run(cwd: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in cwd; on failure with check, raise with its output.

    In a repo copy, the copy's own faclip is imported (not the editable install's), so the code that
    runs is the code its dvc.lock hashes.
    """
    env = tool_env()
    if (Path(cwd) / "faclip" / "__init__.py").is_file():
        env["PYTHONPATH"] = str(cwd)
    result = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(cwd, sys.executable, "-m", "dvc", *args, check=check)


def dvc_status(repo: Path, *targets: str) -> dict:
    """What `dvc status --json [TARGETS]` prints, from the `Repo.status` DVC's command calls, in this process
    (a `dvc` process costs a second of imports): {} when every stage is up to date."""
    from dvc.repo import Repo

    before = os.getcwd()
    os.chdir(repo)  # DVC names stages, and reads targets, relative to the working directory, as its CLI does
    try:
        with Repo() as dvc_repo:
            return dvc_repo.status(targets=list(targets) or None)
    finally:
        os.chdir(before)


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(cwd, "git", *args, check=check)


def copy_repo(dest: Path) -> Path:
    """Copy the files git would see (tracked + untracked, not ignored) into a fresh git repo at dest."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "copy")
    return dest


def raw_data_repo(root: Path, **dataset) -> tuple[Path, Path]:
    """(repo, raw): a new git + DVC repository at root/repo whose raw/ holds conftest's small raw dataset
    (make_raw_dataset's keyword arguments in `dataset`)."""
    from conftest import make_raw_dataset

    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    return repo, make_raw_dataset(repo / "raw", **dataset)


def private_copy(repo: Path, tmp_path: Path) -> Path:
    """A copy of a built repo (git history, DVC cache and outputs) that one test may change freely."""
    dest = tmp_path / "repo"
    shutil.copytree(repo, dest, symlinks=True)
    return dest


def ran_stages(output: str) -> set[str]:
    """Stages `dvc repro` ran (not skipped), from its log lines."""
    return {s for s in STAGES if f"Running stage '{s}'" in output}
