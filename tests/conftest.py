"""Shared fixtures: a tiny raw dataset in the seed's layout, built in tmp_path (fast, no fonts)."""

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Workers share the cores with each other's torch processes: OpenMP threads that wait passively leave them
# to the others (no result depends on it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]

# (title, passages): short Persian dishes; colours/shapes below make images of one dish alike.
DISHES = [
    ("قورمه سبزی", ["قورمه سبزی خورشی با سبزی سرخ‌شده، لوبیا قرمز و گوشت است.",
                    "لیمو عمانی به قورمه سبزی طعم ترش می‌دهد."]),
    ("کباب کوبیده", ["کباب کوبیده از گوشت چرخ‌کرده و پیاز روی سیخ درست می‌شود.",
                     "کباب کوبیده را با نان و گوجه کبابی می‌خورند."]),
    ("زرشک پلو", ["زرشک پلو با مرغ غذای مجلسی ایرانی است.",
                  "زرشک و زعفران به این پلو رنگ و طعم می‌دهند."]),
    ("آش رشته", ["آش رشته با رشته، حبوبات و سبزی پخته می‌شود.",
                 "روی آش رشته کشک و نعناع داغ می‌ریزند."]),
]
COLOURS = [(200, 40, 40), (40, 160, 60), (50, 70, 200), (220, 180, 30), (150, 60, 170), (30, 170, 170)]


def draw_dish_image(dish: int, variant: int, size: int = 64) -> Image.Image:
    """A small picture whose colour and shape identify the dish; position and shade vary."""
    rng = random.Random(dish * 1000 + variant)
    image = Image.new("RGB", (size, size), (235, 230, 220))
    draw = ImageDraw.Draw(image)
    r, g, b = COLOURS[dish % len(COLOURS)]
    shade = rng.randint(-20, 20)
    colour = tuple(max(0, min(255, c + shade)) for c in (r, g, b))
    x, y = rng.randint(4, 16), rng.randint(4, 16)
    box = (x, y, x + size // 2 + rng.randint(0, 8), y + size // 2 + rng.randint(0, 8))
    (draw.ellipse if dish % 2 == 0 else draw.rectangle)(box, fill=colour)
    return image


def make_raw_dataset(root: Path, n_dishes: int = 4, images_per_dish: int = 4) -> Path:
    """Write a raw dataset: one folder per dish, a JSON list of records, one JPEG per image."""
    for d in range(n_dishes):
        title, passages = DISHES[d % len(DISHES)]
        if d >= len(DISHES):
            title = f"{title} {d}"
            passages = [f"{p} ({d})" for p in passages]
        folder = root / f"dish_{d:02d}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        records = []
        for v in range(images_per_dish):
            name = f"images/{v:02d}.jpg"
            draw_dish_image(d, v).save(folder / name, quality=90)
            records += [{"title": title, "response": p, "image_path": name} for p in passages]
        (folder / "records.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture
def raw_root(tmp_path) -> Path:
    """A small valid raw dataset: 4 dishes x 4 images x 2 passages."""
    return make_raw_dataset(tmp_path / "raw")


def dishes_corpus() -> list[str]:
    """Titles and passages of DISHES: the tokenizer corpus of the tiny test models."""
    return [title for title, _ in DISHES] + [p for _, passages in DISHES for p in passages]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(text_dir, vision_dir): saved tiny base models (width 128), built once per test session."""
    from faclip.models import materialise_base

    root = tmp_path_factory.mktemp("tiny_models")
    materialise_base("tiny", "tiny", dishes_corpus, root / "text", root / "vision")
    return root / "text", root / "vision"


@pytest.hookimpl(trylast=True)  # after pytest-xdist's hook, which appends "@group" to a grouped test's id
def pytest_collection_modifyitems(config, items):
    """The order tests are handed to pytest-xdist's workers in (`--dist loadgroup --no-loadscope-reorder`
    keeps it): first one test that needs the e2e repo, so one worker builds it (minutes) while the others
    run every test that needs none; then the e2e tests, longest first: the groups that share a repo copy
    (the README's walk, the server tests), then the tests that retrain, then the others,
    then the quick ones (no stage runs), so the run does not end with one worker busy on a long test and the
    others idle (pytest-xdist gives a worker up to three tests ahead)."""
    first = next((item for item in items if "built_repo" in item.fixturenames), None)

    def rank(item) -> int:
        if item is first:
            return 0
        if not item.get_closest_marker("e2e"):
            return 1
        if item.get_closest_marker("xdist_group"):
            return 2
        if item.get_closest_marker("retrains"):
            return 3
        return 5 if item.get_closest_marker("quick") else 4

    items.sort(key=rank)
    if config.getoption("loadgroup", False):  # in a pytest-xdist worker under --dist loadgroup
        split = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if split:
            raise pytest.UsageError(f"pytest-xdist did not group {split[0]} (and {len(split) - 1} more): its "
                                    "xdist_group needs pytest 8 (requirements-dev.txt pins it)")


@pytest.fixture
def faclip_cli(capsys, monkeypatch):
    """`faclip ARGS` in this process, on CPU as the tests' `python -m faclip` processes run it (a new process
    would cost seconds of imports): call it with the arguments, get what it printed on stdout."""
    import torch

    import faclip.search
    from faclip.__main__ import main

    monkeypatch.setattr(faclip.search, "pick_device", lambda: torch.device("cpu"))  # GPU encoding is bf16

    def run(*args: str) -> str:
        capsys.readouterr()
        main(list(args))  # a FaclipError would exit 2 here
        return capsys.readouterr().out

    return run


# --- the end-to-end repo, built once per test run ---------------------------------------------------
# `dvc repro` of the whole pipeline takes minutes on 2 cores: it runs once per test run (once in all,
# under pytest-xdist too: the first worker builds it under a lock, the others wait and reuse it), and
# each test changes a private copy of it (repo_utils.private_copy).

EVALUATE_OUTPUTS = ["metrics/eval.json", "metrics/headline.json", "metrics/eval_plots"]  # in git, not the cache
E2E_EPOCHS = 2  # the e2e tests' repo trains this many epochs, not params.yaml's: every rerun of train is short


def _shared_dir(tmp_path_factory) -> Path:
    """A folder every xdist worker of this run sees (the session's own base temp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "e2e"


def build_once(tmp_path_factory, name: str, build) -> dict:
    """Run `build(folder) -> dict` once per test run under a file lock; every caller gets its result."""
    from filelock import FileLock  # a DVC dependency

    shared = _shared_dir(tmp_path_factory)
    shared.mkdir(parents=True, exist_ok=True)
    done = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            done.write_text(json.dumps(build(folder)), encoding="utf-8")
    return json.loads(done.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def fresh_repro(tmp_path_factory) -> tuple[Path, str, str]:
    """What a user gets from a fresh clone + `dvc repro` with the committed params:
    (repo, `git status --porcelain`, `dvc status --json`). Read it; copy it to change it."""
    from repo_utils import STAGES, copy_repo, dvc, git, ran_stages

    def build(folder: Path) -> dict:
        repo = copy_repo(folder / "repo")
        # Every stage with an output in the DVC cache runs; check_params and evaluate keep all their outputs
        # in git (cache: false), so with the same inputs DVC would skip them. Without evaluate's committed
        # outputs it runs too, and the committed metrics are checked against a real run.
        for out in map(repo.joinpath, EVALUATE_OUTPUTS):
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
        result = dvc(repo, "repro")
        assert set(STAGES) - {"check_params"} <= ran_stages(result.stdout), result.stdout
        return {"repo": str(repo), "git_status": git(repo, "status", "--porcelain").stdout,
                "dvc_status": dvc(repo, "status", "--json").stdout}

    built = build_once(tmp_path_factory, "fresh", build)
    return Path(built["repo"]), built["git_status"], built["dvc_status"]


@pytest.fixture(scope="session")
def built_repo(fresh_repro, tmp_path_factory) -> Path:
    """The fresh repro, retrained at E2E_EPOCHS epochs and committed (the DVC cache holds every output of
    both runs). Tests must not change it: take a private copy."""
    from repo_utils import dvc, git, private_copy

    def build(folder: Path) -> dict:
        repo = private_copy(fresh_repro[0], folder)
        path = repo / "params.yaml"
        text, count = re.subn(r"(?m)^epochs:.*$", f"epochs: {E2E_EPOCHS}", path.read_text(encoding="utf-8"))
        assert count == 1, "params.yaml has no top-level `epochs:` line"
        path.write_text(text, encoding="utf-8")
        dvc(repo, "repro")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", f"pipeline run, {E2E_EPOCHS} epochs", "--allow-empty")
        return {"repo": str(repo)}

    return Path(build_once(tmp_path_factory, "built", build)["repo"])


# --- serve fixtures (shared) ------------------------------------------------------------------------------
# One tiny artifact set and one `python -m faclip serve` over it per test session (per xdist worker): the API
# tests, the page tests and schemathesis all query it. A start costs seconds of CPU (torch + transformers);
# a test that needs other flags or changes what the server reads starts its own.


@pytest.fixture(scope="session")
def _built_artifacts(tmp_path_factory, tiny_model_dirs):
    from serve_fixtures import artifacts_digest, build_artifacts

    built = build_artifacts(tmp_path_factory.mktemp("serve"), tiny_model_dirs)
    return built, artifacts_digest(built)  # the digest is taken before any test reads or serves them


@pytest.fixture(scope="session")
def artifacts(_built_artifacts):
    """serve_fixtures.Artifacts: the DISHES (and a markup dish) docstore, a Flat index, the tiny models, a photo.
    Shared: read them, never change them (test_serve.py checks their digest)."""
    return _built_artifacts[0]


@pytest.fixture(scope="session")
def artifact_digest(_built_artifacts) -> str:
    """serve_fixtures.artifacts_digest of `artifacts`, taken right after they were built."""
    return _built_artifacts[1]


@pytest.fixture(scope="session")
def server(artifacts, tmp_path_factory):
    """`python -m faclip serve` over `artifacts` with serve_fixtures.SERVER_FLAGS (read it; do not stop it)."""
    from serve_fixtures import SERVER_FLAGS, Server

    running = Server([*artifacts.cli_args(), *SERVER_FLAGS], tmp_path_factory.mktemp("serve_log") / "server.log")
    yield running
    running.stop()
