"""The DVC workflows users run, on temp copies of this repo: repro, selective reruns, experiments,
metrics diff, push/pull (local folder and S3 via moto), and content-hash checks across commits."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from repo_utils import REPO, STAGES, dvc, dvc_status, git, private_copy, ran_stages, run, tool_env
from serve_fixtures import free_port

pytestmark = pytest.mark.e2e

# Outputs a remote must restore byte for byte (persisted ones included).
OUTPUTS = ["data/docstore.parquet", "data/training_pairs.csv", "data/prepare_skips.csv", "data/image_embeddings",
           "data/embed_cache", "models/base/text", "models/base/vision", "models/finetuned", "models/checkpoints",
           "models/index", "models/lexical"]


def set_params(repo: Path, **changes) -> None:
    """Edit params.yaml like a user would (nested keys with dots)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode() + file.read_bytes())
    return digest.hexdigest()


def digests(repo: Path) -> dict[str, str]:
    return {out: tree_digest(repo / out) for out in OUTPUTS}


def assert_status_clean(repo: Path) -> None:
    status = dvc_status(repo)
    assert status == {}, status


def test_fresh_clone_repro_reproduces_every_committed_output_bit_for_bit(fresh_repro):
    _, git_status, dvc_status = fresh_repro
    # dvc.lock hashes every output, and metrics/plots are committed: an empty git status means each
    # docstore, model, embedding, index and metric came back byte-identical to what the repo holds.
    assert git_status == "", f"dvc repro changed committed files:\n{git_status}"
    assert json.loads(dvc_status or "{}") == {}, dvc_status


@pytest.fixture
def repo(built_repo, tmp_path) -> Path:
    """A private copy of the built repo to change freely."""
    return private_copy(built_repo, tmp_path)


def test_repro_writes_everything_and_status_is_clean(repo):
    for out in OUTPUTS:
        assert (repo / out).exists(), out
    eval_metrics = json.loads((repo / "metrics/eval.json").read_text(encoding="utf-8"))
    assert "recall@1" in eval_metrics["finetuned"]["image_to_text"]
    assert_status_clean(repo)


@pytest.mark.quick
def test_nothing_changed_runs_nothing_even_after_touching_raw_files(repo):
    for image in list((repo / "data/sample").rglob("*.jpg"))[:5]:
        os.utime(image, (time.time() + 100, time.time() + 100))
    result = dvc(repo, "repro")
    assert ran_stages(result.stdout) == set(), result.stdout


@pytest.mark.quick
@pytest.mark.parametrize("module", ["faclip/text.py", "faclip/files.py", "faclip/testset.py", "faclip/loss.py"])
def test_editing_a_module_marks_exactly_the_stages_that_execute_it(repo, module):
    from faclip.code import import_closure

    with open(repo / module, "a", encoding="utf-8") as f:
        f.write("\n# an edit\n")
    changed = set(dvc_status(repo))
    expected = {stage for stage in STAGES if (REPO / module).resolve() in import_closure(REPO / f"stages/{stage}.py")}
    assert expected and changed == expected


def make_other_vision_model(repo: Path, dest: Path) -> Path:
    """A second vision model folder: the base one with perturbed weights (a stand-in for another checkpoint)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModel

    source = repo / "models/base/vision"
    model = CLIPVisionModel.from_pretrained(source)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=noise))
    model.save_pretrained(dest)
    CLIPImageProcessor.from_pretrained(source).save_pretrained(dest)
    return dest


@pytest.mark.parametrize("edit, expected", [
    ({"vqa.photo_weight": 0.5}, {"evaluate"}),
    pytest.param({"model.vision": "OTHER_VISION"}, {"base", "embed", "train", "index", "evaluate"},
                 marks=pytest.mark.retrains),
    pytest.param({"data.test_fraction": 0.3}, {"prepare", "embed", "train", "index", "evaluate"},
                 marks=pytest.mark.retrains),
    ({"embed.batch_size": 7, "embed.num_workers": 0}, {"embed"}),  # same vectors (cached): nothing downstream
], ids=["vqa", "model.vision", "data.test_fraction", "embed"])
def test_param_edit_reruns_only_affected_stages(repo, tmp_path, edit, expected):
    # epochs, learning_rate, positives and index.factory are set by the experiments below (`dvc exp run -S`,
    # the same rerun rule), each checked for the stages it reruns: an edit of its own here would train again.
    # eval.k: test_hardening_dvc.py::test_a_good_edit_reruns_only_the_stages_that_read_the_key.
    if edit.get("model.vision") == "OTHER_VISION":
        edit = {"model.vision": str(make_other_vision_model(repo, tmp_path / "vision2"))}
    set_params(repo, **edit)
    result = dvc(repo, "repro")
    # Any edit first reruns the check_params gate (it reads all of params.yaml); its output is unchanged.
    assert ran_stages(result.stdout) == {"check_params"} | expected, result.stdout
    assert_status_clean(repo)


def exp_show_columns(repo: Path, *options: str) -> list[str]:
    """The column names `dvc exp show` prints (its CSV header: the table's columns, plus rev and typ)."""
    header = dvc(repo, "exp", "show", "--csv", *options).stdout.splitlines()[0]
    return [name for name in header.split(",") if name not in ("rev", "typ")]


@pytest.mark.retrains
def test_exp_run_positives_image_then_metrics_diff_shows_what_the_original_objective_costs(repo):
    result = dvc(repo, "exp", "run", "-S", "positives=image", "-n", "by-image")
    assert ran_stages(result.stdout) == {"check_params", "train", "index", "evaluate"}, result.stdout
    assert_status_clean(repo)
    shown = json.dumps(json.loads(dvc(repo, "exp", "show", "--json").stdout))
    assert "by-image" in shown and '"positives": "image"' in shown
    diffs = json.loads(dvc(repo, "metrics", "diff", "--json", "--targets", "metrics/train.json",
                           "metrics/eval.json").stdout)
    assert "loss" in diffs["metrics/train.json"], diffs  # another objective: another model
    diff = diffs["metrics/eval.json"]
    assert [key for key in diff if key.startswith(("finetuned.", "zero_shot.finetuned."))], diff
    # The ceiling and the base model do not depend on the objective: they must not move.
    assert not [key for key in diff if key.startswith(("ceiling.image_to_text", "base.", "zero_shot.base"))], diff
    eval_metrics = json.loads((repo / "metrics/eval.json").read_text(encoding="utf-8"))
    assert 0 < eval_metrics["ceiling"]["image_to_text"]["recall@1"] <= 1
    assert eval_metrics["index"]["recall_vs_exact@10"] == 1.0


def push_then_pull_into_a_clone(repo: Path, tmp_path: Path) -> None:
    """`dvc push`, then `git clone` + `dvc pull` with an empty cache must restore every output byte for byte."""
    dvc(repo, "push")
    expected = digests(repo)
    git(repo, "commit", "-qam", "remote")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull")
    assert digests(clone) == expected
    assert_status_clean(clone)


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A moto S3 server on loopback with a bucket `faclip`; dummy credentials in the environment."""
    boto3 = pytest.importorskip("boto3")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                boto3.client("s3", endpoint_url=url).create_bucket(Bucket="faclip")
                break
            except Exception:  # the server is still starting; bounded by the deadline
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_push_pull_s3_remote(repo, tmp_path, s3_endpoint):
    dvc(repo, "remote", "add", "-d", "s3store", "s3://faclip/cache")
    dvc(repo, "remote", "modify", "s3store", "endpointurl", s3_endpoint)
    push_then_pull_into_a_clone(repo, tmp_path)


@pytest.mark.quick
def test_unreachable_remote_is_a_clear_error_and_leaves_nothing_half_written(repo, tmp_path):
    dvc(repo, "remote", "add", "-d", "gone", "s3://faclip/cache")
    dvc(repo, "remote", "modify", "gone", "endpointurl", f"http://127.0.0.1:{free_port()}")
    git(repo, "commit", "-qam", "dead remote")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    # One attempt per request: the refusal is immediate; botocore's default retries only add backoff.
    env_creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_MAX_ATTEMPTS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", "pull"], cwd=clone, capture_output=True, text=True,
                            env={**tool_env(), **env_creds}, timeout=300)
    assert result.returncode != 0
    assert "failed to connect to s3" in result.stderr + result.stdout, result.stderr
    for out in OUTPUTS:
        assert not (clone / out).exists(), f"{out} exists after a failed pull"


def test_a_passage_edit_reruns_exactly_the_stages_that_read_the_docstore(repo):
    path = repo / "data/sample/kebabs/mashhad/joojeh/joojeh.json"
    text = path.read_text(encoding="utf-8-sig")
    passage = json.loads(text.splitlines()[0])["response"]
    path.write_text(text.replace(passage, passage + " (ویرایش شده)"), encoding="utf-8")  # every record of it
    result = dvc(repo, "repro", "lexical")  # the BM25 index follows the docstore, and nothing else reruns
    assert ran_stages(result.stdout) == {"prepare", "lexical"}, result.stdout
    # what reads the docstore or the pairs (the passage's id changed with its text) is due, and only that
    assert set(dvc_status(repo)) == {"base", "embed", "train", "index", "evaluate"}


def test_adding_a_photo_reruns_prepare_and_embeds_only_that_photo(repo):
    folder = repo / "data/sample/kebabs/mashhad/joojeh"
    record = json.loads((folder / "joojeh.json").read_text(encoding="utf-8-sig").splitlines()[0])
    source = folder / record["image_path"]
    image = Image.open(source).transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # a new photo of the same dish
    image.save(source.with_name("new_photo.jpg"), quality=85)
    new_record = {**record, "image_path": str(Path(record["image_path"]).with_name("new_photo.jpg"))}
    (folder / "new_photo.json").write_text(json.dumps(new_record, ensure_ascii=False), encoding="utf-8")
    result = dvc(repo, "repro", "embed")  # and what it depends on; train and after would rerun as for any new pair
    assert ran_stages(result.stdout) == {"prepare", "embed"}, result.stdout
    assert "193 distinct images: 1 encoded, 192 reused" in result.stderr, result.stderr
    assert json.loads((repo / "metrics/prepare.json").read_text(encoding="utf-8"))["images"] == 193
