"""README.md walked top to bottom, as a newcomer does: every command and snippet, in order, in ONE repository
(a copy of a fresh clone + `dvc repro`), each after the previous one.

A fenced block whose language is `bash` or `python` is run; any other fence (```text, ```json, a
bare ```) is output or data, never run. A runnable block that cannot run here is marked on the line
before its fence with `<!-- not run: REASON -->` (say, `needs S3`, `needs a GPU`, `needs the network`):
it is reported as skipped with that reason. A ```text block right after a runnable block shows the first
lines of what it prints, and must match them. The walk stands in for what it cannot reach:
- the server: blocks that call it (`127.0.0.1:8000`) run against a `faclip serve` started in the repo on a
  free port (substituted), as the README says to start one in a second terminal;
- the shared disk and the git URL (`/mnt/shared/faclip-store`, `https://example.com/you/faclip.git`): a
  temp folder and the walked repo itself;
- another machine: blocks that start with `git clone` or `cd faclip` run in a folder of their own.
"""

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import build_once
from repo_utils import REPO, dvc, dvc_status, git, private_copy, ran_stages, run, tool_env
from serve_fixtures import free_port
from test_dvc_workflows import assert_status_clean, digests, exp_show_columns

from faclip.params import VqaParams

FENCE = re.compile(r"^(?:<!--\s*not run:\s*(?P<reason>.+?)\s*-->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)^```\n?"
                   r"(?:\s*^```text\n(?P<shown>.*?)^```$)?", re.S | re.M)
RUNNABLE = ("bash", "python")
SERVER = "127.0.0.1:8000"
STORE, GIT_URL = "/mnt/shared/faclip-store", "https://example.com/you/faclip.git"
ELSEWHERE = ("git clone ", "cd faclip")  # blocks run on "another machine"
LINE_MARK = "@@readme-walk-line@@"
EXP_SHOW = "dvc exp show --only-changed --drop"  # the README's `dvc exp show`, in "Working with DVC"


def readme_blocks(text: str) -> list[tuple[str, str, str, str | None, str | None]]:
    """(id, language, body, not-run reason, the output shown right after it) of every runnable fenced block, in
    order; the id names the section and the block's number in it."""
    blocks, counts = [], {}
    for match in FENCE.finditer(text):
        if match["lang"] not in RUNNABLE:
            continue
        heading = ([line.lstrip("#").strip() for line in text[:match.start()].splitlines() if line.startswith("#")]
                   or ["top"])[-1]
        counts[heading] = counts.get(heading, 0) + 1
        blocks.append((f"{heading} #{counts[heading]}", match["lang"], match["body"], match["reason"], match["shown"]))
    return blocks


README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = readme_blocks(README)


def block_id(line: str) -> str:
    """The id of the README's one runnable block with a line that starts with `line`."""
    ids = [bid for bid, _, body, _, _ in BLOCKS if any(row.startswith(line) for row in body.splitlines())]
    assert len(ids) == 1, f"README has {len(ids)} blocks with a line starting {line!r}"
    return ids[0]


def test_the_marker_convention_is_parsed():
    text = ("# A\n```bash\necho 1\n```\n\n```text\n1\n```\n<!-- not run: needs S3 -->\n```bash\naws s3 ls\n```\n"
            "```json\n{}\n```\n## B\n```python\nprint(2)\n```\ntext\n```text\nnot shown\n```\n")
    assert readme_blocks(text) == [("A #1", "bash", "echo 1\n", None, "1\n"),
                                   ("A #2", "bash", "aws s3 ls\n", "needs S3", None),
                                   ("B #1", "python", "print(2)\n", None, None)]
    assert len(BLOCKS) >= 10  # the README's own blocks are found


def test_every_link_inside_the_readme_and_docs_leads_somewhere():
    def slug(heading: str) -> str:  # GitHub's anchor for a heading
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target} names no file"
            if anchor and linked.suffix == ".md":
                headings = [slug(line.lstrip("#")) for line in linked.read_text(encoding="utf-8").splitlines()
                            if line.startswith("#")]
                assert anchor in headings, f"{page.name}: {target} names no heading of {linked.name}"


def run_block(cwd: Path, lang: str, body: str, repo: Path) -> list[dict]:
    """Run one block as copied; a bash block in one shell, line by line (a `\\` joins the next line): for each
    line, what it printed on stdout and stderr. Raises with the output when a line fails."""
    env = dict(tool_env(), PYTHONPATH=str(repo))
    if lang == "python":
        lines, command = [body], [sys.executable, "-c", body]
    else:
        lines = [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]
        script = "".join(f"echo {LINE_MARK}; echo {LINE_MARK} >&2\n{line}\n" for line in lines)
        command = ["bash", "-euo", "pipefail", "-c", script]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8",
                            timeout=600)
    outs, errs = (result.stdout, result.stderr) if lang == "python" else (
        result.stdout.split(f"{LINE_MARK}\n")[1:], result.stderr.split(f"{LINE_MARK}\n")[1:])
    if lang == "python":
        outs, errs = [outs], [errs]
    if result.returncode != 0:
        raise AssertionError(f"exited {result.returncode} at {lines[len(outs) - 1]!r}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return [{"line": line.split(" #")[0].strip(), "out": out, "err": err} for line, out, err in zip(lines, outs, errs)]


def start_server(repo: Path) -> tuple[subprocess.Popen, str]:
    """`faclip serve` on a free port in `repo` (the README's second terminal), once it is ready."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "faclip", "serve", "--port", str(port), "--threads", "1"],
                               cwd=repo, env=dict(tool_env(), PYTHONPATH=str(repo)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read()  # 503 until loaded
            return process, f"127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise AssertionError(f"faclip serve did not start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def readme_walk(fresh_repro, tmp_path_factory) -> dict:
    """Every block of README.md in order, in one copy of the fresh clone + `dvc repro`, once per test run:
    {"repo", "blocks": {id: {"skipped": reason} | {"printed": [{"line", "out", "err"}], "shown", "git_status",
    and where a test reads them, "dvc_status", "digests", "params", "clone": {...}, "snapshot"}},
    "failed": None | "<block id>: <why>"}. The walk stops at the first block that fails."""
    snapshot_after = {block_id("dvc exp run -n epochs-5")}  # the repo as it is then, for tests that change a copy
    status_after = {block_id("git checkout -- params.yaml"), block_id("dvc remote add -d store"),
                    block_id("dvc exp apply epochs")}

    def build(folder: Path) -> dict:
        repo = private_copy(fresh_repro[0], folder)
        elsewhere = folder / "elsewhere"
        elsewhere.mkdir()
        substitutes = {STORE: str(folder / "store"), GIT_URL: str(repo)}
        walked, server, failed = {}, None, None
        try:
            for bid, lang, body, reason, shown in BLOCKS:
                if reason:
                    walked[bid] = {"skipped": reason}
                    continue
                for placeholder, value in substitutes.items():
                    body = body.replace(placeholder, value)
                if SERVER in body:
                    if server is None:
                        server = start_server(repo)
                    body = body.replace(SERVER, server[1])
                cwd = elsewhere if body.startswith(ELSEWHERE) else repo
                start = time.monotonic()
                try:
                    printed = run_block(cwd, lang, body, repo)
                except AssertionError as err:
                    failed = f"{bid}: {err}"
                    break
                step = walked[bid] = {"printed": printed, "shown": shown, "seconds": round(time.monotonic() - start, 1),
                                      "git_status": git(repo, "status", "--porcelain").stdout}
                if bid in status_after:
                    step.update(dvc_status=dvc_status(repo), digests=digests(repo),
                                params=(repo / "params.yaml").read_text(encoding="utf-8"))
                if cwd == elsewhere:
                    clone = elsewhere / "faclip"
                    step["clone"] = {"dvc_status": dvc_status(clone), "digests": digests(clone),
                                     "params": (clone / "params.yaml").read_text(encoding="utf-8")}
                if bid in snapshot_after:
                    step["snapshot"] = str(private_copy(repo, folder / "snapshots" / str(len(walked))))
        finally:
            if server is not None:
                server[0].terminate()
                server[0].wait(timeout=30)
        return {"repo": str(repo), "blocks": walked, "failed": failed}

    return build_once(tmp_path_factory, "readme_walk", build)


def walked(readme_walk: dict, line: str) -> dict:
    """What the walk recorded for the README block with a line that starts with `line` (it must have run)."""
    assert readme_walk["failed"] is None, readme_walk["failed"]
    return readme_walk["blocks"][block_id(line)]


def printed(step: dict, line: str) -> dict:
    """What one line of a walked block printed ({"line", "out", "err"}): the line itself, else the one it starts."""
    found = ([row for row in step["printed"] if row["line"] == line]
             or [row for row in step["printed"] if row["line"].startswith(line)])
    assert len(found) == 1, (line, [row["line"] for row in step["printed"]])
    return found[0]


def on_the_walk(test):
    """An end-to-end test of the walk; one worker runs them all (the walk is built once)."""
    return pytest.mark.e2e(pytest.mark.xdist_group("readme")(test))


@on_the_walk
@pytest.mark.parametrize("bid", [block[0] for block in BLOCKS])
def test_readme_block_runs_in_order(bid, readme_walk):
    assert readme_walk["failed"] is None, f"the README walk stopped at {readme_walk['failed']}"
    step = readme_walk["blocks"][bid]
    if "skipped" in step:
        pytest.skip(f"README block {bid!r} is marked not run: {step['skipped']}")
    body = next(body for other, _, body, _, _ in BLOCKS if other == bid)
    if SERVER in body:  # curl prints the server's answer: hits for a search, never an error
        out = "".join(row["out"] for row in step["printed"])
        assert out.strip() and '"detail"' not in out, out[-3000:]
        if "/search" in body:
            assert '"hits"' in out, out[-3000:]


@on_the_walk
@pytest.mark.parametrize("bid", [block[0] for block in BLOCKS if block[4] is not None])
def test_the_output_the_readme_shows_is_what_the_command_prints(bid, readme_walk):
    assert readme_walk["failed"] is None, f"the README walk stopped at {readme_walk['failed']}"
    step = readme_walk["blocks"][bid]
    assert len(step["printed"]) == 1, "a block whose output the README shows holds one command"
    shown, out = step["shown"].splitlines(), step["printed"][0]["out"].splitlines()
    assert shown and out[:len(shown)] == shown, (
        f"README block {bid!r} shows\n" + "\n".join(shown) + "\nbut the command printed\n" + "\n".join(out[:len(shown)]))


@on_the_walk
def test_the_experiments_rerun_only_the_stages_that_read_the_key(readme_walk, tmp_path):
    step = walked(readme_walk, "dvc exp run -n epochs-5")
    ran = {row["line"]: ran_stages(row["out"]) for row in step["printed"]
           if row["line"].startswith(("dvc repro", "dvc exp run"))}
    assert list(ran) == ["dvc repro", "dvc exp run -n epochs-5 -S epochs=5",
                         "dvc exp run -n lr-3e-5 -S learning_rate=0.00003"]
    assert ran.pop("dvc repro") == set()  # nothing changed since the last run
    for line, stages in ran.items():  # top-level training keys: train and what reads its model
        assert stages == {"check_params", "train", "index", "evaluate"}, (line, stages)
    # DVC writes 0.00003 as `3e-05`, which YAML 1.2 reads as a number: every stage did (the last ran on it).
    shared = Path(step["snapshot"])
    assert "learning_rate: 3e-05" in (shared / "params.yaml").read_text(encoding="utf-8")
    train = json.loads((shared / "metrics/train.json").read_text(encoding="utf-8"))
    assert train["epochs"] == 5 and train["steps"] > 0, train  # it ran on top of epochs-5, as the README says
    assert_status_clean(private_copy(shared, tmp_path))


@on_the_walk
def test_exp_show_fits_a_120_column_terminal_with_the_headline_in_reading_order(readme_walk, tmp_path):
    step = walked(readme_walk, "dvc exp run -n epochs-5")
    table = [row.rstrip() for row in printed(step, EXP_SHOW)["out"].splitlines() if row.strip()]
    assert table and max(map(len, table)) <= 120, "\n".join(table)
    header = [row.split() for row in table if row.split()[:1] == ["Experiment"]]
    assert header == [["Experiment", "recall@1", "recall@5", "recall@10", "mrr", "ask_recall@1", "ask_mrr", "epochs",
                       "learning_rate"]], table
    assert len(table) == 3 + 4 + 1, table  # rules and header; workspace, main, the two experiments; a rule
    # The block's other lines: the headline diff against HEAD, and the offline plots page.
    assert "recall@1" in printed(step, "dvc metrics diff")["out"], step["printed"]
    shared = Path(step["snapshot"])
    assert "<svg" in (shared / "plots/index.html").read_text(encoding="utf-8")
    repo = private_copy(shared, tmp_path)
    columns = exp_show_columns(repo, "--only-changed")
    assert len(columns) <= 30, columns
    first = columns.index("recall@1")
    assert first < 10 and columns[first:first + 4] == ["recall@1", "recall@5", "recall@10", "mrr"], columns
    assert {"epochs", "learning_rate", "zero_shot@1", "ceiling_share@1"} <= set(columns), columns
    # Without --only-changed too, the headline comes before any param, and no data count is a column.
    everything = exp_show_columns(repo)
    assert everything.index("recall@1") < 10 and everything.index("recall@10") < everything.index("epochs"), everything
    assert not [name for name in everything if name.endswith(("pairs", "images", "dishes", "passages"))], everything


@on_the_walk
def test_exp_run_set_param_then_metrics_diff(readme_walk, tmp_path):
    repo = private_copy(Path(walked(readme_walk, "dvc exp run -n epochs-5")["snapshot"]), tmp_path)
    result = dvc(repo, "exp", "run", "-S", "index.factory=HNSW32", "-n", "hnsw")
    assert ran_stages(result.stdout) == {"check_params", "index", "evaluate"}, result.stdout
    assert_status_clean(repo)
    shown = json.dumps(json.loads(dvc(repo, "exp", "show", "--json").stdout))
    assert "epochs-5" in shown and "lr-3e-5" in shown and "hnsw" in shown and "HNSW32" in shown
    dvc(repo, "exp", "apply", "epochs-5")
    # `dvc metrics diff` leads with the headline; the full figures are one --targets away.
    headline = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
    assert list(headline) == ["metrics/headline.json"] and "recall@5" in headline["metrics/headline.json"], headline
    diff = json.loads(dvc(repo, "metrics", "diff", "--json", "--targets", "metrics/train.json").stdout)
    assert "metrics/train.json" in diff and "epochs" in diff["metrics/train.json"], diff
    assert diff["metrics/train.json"]["epochs"]["new"] == 5
    plots = dvc(repo, "plots", "diff", "--json")
    assert plots.returncode == 0


@on_the_walk
def test_going_back_is_one_step_to_the_last_commit(readme_walk, fresh_repro):
    step = walked(readme_walk, "git checkout -- params.yaml")
    # params.yaml (the defaults, the sample), dvc.lock, metrics and every output: as committed.
    assert step["git_status"] == "" and step["dvc_status"] == {}, step
    assert step["params"] == (fresh_repro[0] / "params.yaml").read_text(encoding="utf-8")
    assert step["digests"] == digests(fresh_repro[0])


@on_the_walk
def test_a_queued_sweep_runs_each_value_from_the_workspace(readme_walk):
    step = walked(readme_walk, "dvc exp run --queue")
    queued = printed(step, "dvc exp run --queue")
    assert (queued["out"] + queued["err"]).count("Queued experiment") == 2, step["printed"]
    table = printed(step, "dvc exp show")["out"]
    header = next(row.split() for row in table.splitlines() if row.split()[:1] == ["Experiment"])
    assert header == ["Experiment", "ask_recall@1", "ask_mrr", "vqa.photo_weight"], table
    weights = [row.split()[-1] for row in table.splitlines() if re.search(r"\[[\w-]+\]", row)]
    # both values ran (sorted best first), next to the experiments run before going back
    default = str(VqaParams.photo_weight)  # what the experiments run before going back kept
    assert sorted(weights) == sorted(["0.7", "0.9", default, default]), table
    assert step["git_status"] == "", step["git_status"]  # queued runs leave the workspace alone


@on_the_walk
def test_push_and_pull_as_the_readme_says(readme_walk):
    share, kept = walked(readme_walk, "dvc remote add -d store"), walked(readme_walk, "dvc exp apply epochs")
    for pushed, pulled in ((share, walked(readme_walk, "git clone ")), (kept, walked(readme_walk, "cd faclip"))):
        # The remote is committed (a clone has it); after the experiment, the experiment is the commit.
        assert pushed["git_status"] == "", pushed["git_status"]
        # A clone's pull brings back every output byte for byte; no "Everything is up to date." + ERROR.
        assert "ERROR" not in "".join(row["out"] + row["err"] for row in pulled["printed"]), pulled["printed"]
        assert pulled["clone"]["digests"] == pushed["digests"]
        assert pulled["clone"]["dvc_status"] == {}
        assert pulled["clone"]["params"] == pushed["params"]
    assert "epochs: 5" in kept["params"] and "epochs: 20" in share["params"]


@on_the_walk
def test_old_index_pulled_next_to_a_new_model_is_refused(readme_walk, tmp_path):
    # The shared remote holds two commits: the pipeline, then the experiment (other epochs: another model,
    # another index). A fresh clone of the experiment that pulls the pipeline's index next to its model.
    walked(readme_walk, "cd faclip")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", readme_walk["repo"], str(clone))
    dvc(clone, "pull")
    git(clone, "checkout", "HEAD~1", "--", "dvc.lock")
    dvc(clone, "pull", "index")
    git(clone, "checkout", "HEAD", "--", "dvc.lock")
    import yaml

    evaluate = run(clone, sys.executable, "stages/evaluate.py", *yaml.safe_load(
        (clone / "dvc.yaml").read_text())["stages"]["evaluate"]["cmd"].split()[2:], check=False)
    search = run(clone, sys.executable, "-m", "faclip", "search", "--text", "کباب", check=False)
    for result in (evaluate, search):
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("faclip error")]
        assert len(errors) == 1 and "dvc repro index" in errors[0], result.stderr
