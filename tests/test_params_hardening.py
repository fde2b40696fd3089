"""Issue 17, item 5: params that pass the gate must not crash a stage after DVC deleted its outputs.

Before the fix `learning_rate: .inf` trained a NaN model reported as success, a seed of 2**64 - 1
crashed `train`, `efSearch: 1000000000` asked for 4.4 GB in `index`, and FAISS factories such as HNSW0
(abort), HNSW1 (segfault), IVF0,Flat and IDMap,Flat (exceptions) passed the gate and killed `index`.
"""

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, make_raw_dataset
from test_hardening import check_params, one_error_line

from faclip.errors import FaclipError
from faclip.params import EF_SEARCH_LIMIT, NPROBE_LIMIT, SEED_MAX, parse_params


@pytest.mark.parametrize("raw, named", [
    ({"learning_rate": float("inf")}, "learning_rate=inf is invalid"),
    ({"learning_rate": float("nan")}, "learning_rate=nan is invalid"),
    ({"weight_decay": float("inf")}, "weight_decay=inf is invalid"),
    ({"data": {"test_fraction": float("nan")}}, "data.test_fraction=nan is invalid"),
    ({"index": {"recall_target": float("nan")}}, "index.recall_target=nan is invalid"),
    ({"seed": 2**64 - 1}, f"seed={2**64 - 1} is invalid"),
    ({"seed": SEED_MAX + 1}, f"seed={SEED_MAX + 1} is invalid"),
    ({"seed": 1e20}, "seed=1e+20 is invalid"),
    ({"index": {"efSearch": 10**9}}, "index.efSearch=1000000000 is invalid"),
    ({"index": {"nprobe": NPROBE_LIMIT + 1}}, f"index.nprobe={NPROBE_LIMIT + 1} is invalid"),
    ({"index": {"max_memory_mb": 10**30}}, "index.max_memory_mb="),
    ({"embed": {"num_workers": 10**6}}, "embed.num_workers=1000000 is invalid"),
    ({"eval": {"k": [1, 10**12]}}, "eval.k=[1, 1000000000000] is invalid"),
])
def test_values_that_would_crash_or_poison_a_stage_are_refused(raw, named):
    with pytest.raises(FaclipError) as err:
        parse_params(raw)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_the_edges_of_the_ranges_pass_and_the_seed_range_works_everywhere():
    params = parse_params({"seed": SEED_MAX, "epochs": 1000, "index": {"efSearch": EF_SEARCH_LIMIT}})
    assert params.train.seed == SEED_MAX
    # What train seeds with (seed + epoch, seed + 1000 * epoch + rank), and what numpy and random take.
    torch.Generator().manual_seed(SEED_MAX + 1000)
    torch.manual_seed(SEED_MAX + 1000 * 1000 + 7)
    np.random.seed(SEED_MAX)
    np.random.default_rng(SEED_MAX)
    random.seed(SEED_MAX)


@pytest.fixture
def raw(tmp_path):
    return make_raw_dataset(tmp_path / "raw", n_dishes=2, images_per_dish=2)


def with_index(params: str, factory: str, knob: str = "") -> str:
    """params.yaml's text with index.factory set (and one knob, `name: value`, when given)."""
    text, count = re.subn(r"(?m)^  factory:.*$", f"  factory: '{factory}'", params)
    assert count == 1
    if knob:
        text, count = re.subn(rf"(?m)^  {knob.split(':')[0]}:.*$", f"  {knob}", text)
        assert count == 1
    return text


@pytest.mark.parametrize("factory, knob, named", [
    ("HNSW0", "", "FAISS killed by SIGABRT"),
    ("HNSW1", "", "FAISS killed by SIGSEGV"),
    ("IVF0,Flat", "", "has 0 inverted lists"),
    ("IDMap,Flat", "", "add does not make sense with IndexIDMap"),
    ("NoSuchIndex", "", "not a FAISS factory string"),
    ("HNSW32", "nprobe: 8", "index.nprobe=8 does not apply to this index"),
])
def test_check_params_builds_a_given_factory_and_refuses_one_that_would_crash_index(raw, tmp_path, factory, knob,
                                                                                      named):
    params = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", str(raw))
    error = one_error_line(check_params(tmp_path, with_index(params, factory, knob), timeout=200))
    assert named in error, error
    assert not (tmp_path / "params.checked").exists()


@pytest.mark.parametrize("factory", ["HNSW32", "IVF64,Flat", "NSG32,Flat"])
def test_check_params_passes_factories_that_build(raw, tmp_path, factory):
    # IVF64 needs more passages than the probe has: that depends on the docstore, so the index stage judges it.
    params = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", str(raw))
    result = check_params(tmp_path, with_index(params, factory), timeout=200)
    assert result.returncode == 0, result.stderr


# --- issue 27, class 1: hostile YAML is one line, in bounded time and memory ----------------------------------------

def alias_bomb(levels: int = 9) -> str:
    """A flow list of YAML anchors, each nine aliases of the one before: 9**levels values once expanded."""
    anchors = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"[{', '.join(anchors)}]"


def with_text(params: str, key: str, text: str) -> str:
    """params.yaml's text with the line `key: ...` (indent included in `key`) replaced by `text`, verbatim."""
    edited, count = re.subn(rf"(?m)^{key}:.*$", lambda _: text, params, count=1)
    assert count == 1, key
    return edited


def nested_block(depth: int) -> str:
    return "".join(f"{'  ' * (i + 1)}a:\n" for i in range(depth)) + f"{'  ' * (depth + 1)}1"


@pytest.mark.parametrize("edit, named", [
    (("  k", "  k: " + "[" * 100_000 + "]" * 100_000), "larger than 65536 bytes"),
    (("  k", "  k: " + "[" * 30_000 + "]" * 30_000), "line 31: values nested more than 8 deep"),
    (("  k", "  k:\n" + nested_block(3000)), "larger than 65536 bytes"),
    (("  k", "  k:\n" + nested_block(100)), "values nested more than 8 deep"),
    (("epochs", "epochs: " + "9" * 5000), "line 2: a value of 5000 characters"),
    (("seed", "seed: " + "9" * 4000), "seed=<an integer of ~4000 digits> is invalid"),
    (("learning_rate", "learning_rate: 0x" + "f" * 4000), "learning_rate=<an integer of ~4816 digits> is invalid"),
    (("  factory", '  factory: "Flat\\0"'), r"index.factory='Flat\x00' is invalid"),
    (("  text", '  text: "tiny\\0"'), r"model.text='tiny\x00' is invalid"),
    (("  root", '  root: "data/sample\\n"'), r"data.root='data/sample\n' is invalid"),
    (("  factory", "  factory: " + "F" * 1_000_000), "larger than 65536 bytes"),
    (("  factory", "  factory: " + "F" * 10_000), "a value of 10000 characters"),
    (("  root", "  root: " + "d" * 5000), "a value of 5000 characters"),
    (("  k", "  k: " + alias_bomb()), "a YAML alias (*a0)"),
    (("seed", "seed: " + alias_bomb()), "a YAML alias (*a0)"),
    (("  text", "  text: &t tiny\n  vision: *t"), "a YAML alias (*t)"),
], ids=["flow 100000 deep", "flow 30000 deep", "block 3000 deep", "block 100 deep", "epochs 5000 digits",
        "seed 4000 digits", "learning_rate 4000 hex digits", "factory NUL", "model.text NUL", "data.root newline",
        "factory 1 MB", "factory 10 KB", "data.root 5 KB", "alias bomb in eval.k", "alias bomb in seed",
        "a benign alias"])
def test_check_params_refuses_hostile_yaml_in_one_short_line_and_bounded_time(raw, tmp_path, edit, named):
    params = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", str(raw))
    if edit[0] == "  text":  # the alias case replaces two lines
        params = params.replace("\n  vision: tiny", "", 1) if "vision: *t" in edit[1] else params
    error = one_error_line(check_params(tmp_path, with_text(params, *edit), timeout=30))
    assert named in error and len(error) < 500, error
    assert not (tmp_path / "params.checked").exists()


def test_a_value_shown_in_an_error_is_capped_however_large_it_is():
    bomb = [1] * 9
    for _ in range(6):
        bomb = [bomb] * 9  # 9**7 values, one shared list per level
    for raw, named in [({"eval": {"k": bomb}}, "eval.k=[[[...], [...], [...], [...], [...], [...], ...], "),
                       ({"learning_rate": 10**400}, "learning_rate=<an integer of ~400 digits> is invalid"),
                       ({"weight_decay": -10**400}, "weight_decay=<an integer of ~400 digits> is invalid"),
                       ({"data": {"root": "d" * 5000}}, "data.root='ddddd"),
                       ({"model": {"vision": ["x"] * 10**6}}, "model.vision=['x', 'x', 'x', 'x', 'x', 'x', ...]"),
                       ({int("f" * 5000, 16): 1}, "unknown key '<an integer of ~6021 digits>'"),
                       ({"eval": "k" * 10**6}, "eval must be a mapping of keys, got 'kkkk")]:
        with pytest.raises(FaclipError) as err:
            parse_params(raw)
        assert named in str(err.value) and len(str(err.value)) < 500 and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("raw, named", [
    ({"learning_rate": 2}, "learning_rate=2 is invalid"),
    ({"learning_rate": 1e300}, "learning_rate=1e+300 is invalid"),
    ({"weight_decay": 1e300}, "weight_decay=1e+300 is invalid"),
])
def test_a_learning_rate_or_weight_decay_that_can_only_diverge_is_refused(raw, named):
    # Before: train ran, the loss became nan, and train stopped after DVC had deleted its outputs.
    with pytest.raises(FaclipError, match=re.escape(named)):
        parse_params(raw)
    parse_params({"learning_rate": 1, "weight_decay": 1})


# --- issue 27, class 2: a model id `base` cannot load is refused by the gate, before DVC deletes base's outputs ------

def fake_model(folder: Path, *files: str, config: str = "{}") -> Path:
    """A folder holding these files (`config` in config.json, `{}` in the others): what the gate reads, not a
    model transformers could load."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        (folder / name).write_text(config if name == "config.json" else "{}", encoding="utf-8")
    return folder


def fake_hub_cache(cache: Path, repo_id: str, *files: str) -> None:
    """`repo_id` in a Hugging Face cache at `cache` (HF_HUB_CACHE) as a download leaves it: refs/main names a
    snapshot folder holding these files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text(commit, encoding="utf-8")
    fake_model(repo / "snapshots" / commit, *files)


@pytest.fixture
def model_params(raw, tmp_path, monkeypatch):
    """params.yaml's text with data.root on `raw`, run against an empty hub cache, offline (as the tests run)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub_cache(tmp_path / "hub", "org/cached", "config.json", "model.safetensors")
    fake_hub_cache(tmp_path / "hub", "org/config-only", "config.json")
    fake_model(tmp_path / "models/ok", "config.json", "pytorch_model.bin")
    fake_model(tmp_path / "models/sharded", "config.json", "model.safetensors.index.json")
    fake_model(tmp_path / "models/no-weights", "config.json", "tokenizer.json")
    fake_model(tmp_path / "models/empty")
    fake_model(tmp_path / "models/vision-768", "config.json", "model.safetensors",
               config='{"model_type": "clip_vision_model", "hidden_size": 768}')
    fake_model(tmp_path / "models/clip-768", "config.json", "model.safetensors",
               config='{"model_type": "clip", "text_config": {"hidden_size": 512}, '
                      '"vision_config": {"hidden_size": 768}}')
    fake_model(tmp_path / "models/text-768", "config.json", "model.safetensors", config='{"hidden_size": 768}')
    fake_model(tmp_path / "models/text-64", "config.json", "model.safetensors",
               config='{"model_type": "roberta", "hidden_size": 128, "max_position_embeddings": 66}')
    fake_model(tmp_path / "models/not-json", "config.json", "model.safetensors", config='{"hidden_size": 7')
    fake_model(tmp_path / "models/a-list", "config.json", "model.safetensors", config="[]")
    return (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", str(raw))


@pytest.mark.parametrize("key, value, named", [
    ("text", "no-such-org/no-such-model", "model.text='no-such-org/no-such-model' is not in the local Hugging Face "
                                          "cache (HF_HUB_OFFLINE=1)"),
    ("vision", "no-such-org/no-such-model", "model.vision='no-such-org/no-such-model' is not in the local Hugging"),
    ("text", "Tiny", "model.text='Tiny' is not in the local Hugging Face cache"),
    ("text", "org/config-only", "model.text='org/config-only': the cached snapshot holds no model weights"),
    ("text", "a/b/c", "model.text='a/b/c' is neither a local folder nor a well-formed Hugging Face hub id"),
    ("vision", "'no such model'", "model.vision='no such model' is neither a local folder nor a well-formed"),
    ("text", "./models/missing", "model.text='./models/missing': there is no folder at that path"),
    ("vision", "/no/such/folder", "model.vision='/no/such/folder': there is no folder at that path"),
    ("text", "models/empty", "model.text='models/empty': the local folder holds no config.json"),
    ("vision", "models/no-weights", "model.vision='models/no-weights': the local folder holds no model weights"),
    ("vision", "models/vision-768", "model.text='tiny' outputs 128-d vectors but model.vision='models/vision-768' "
                                    "outputs 768-d; pick a text/vision pair of one width"),
    ("text", "models/text-768", "model.text='models/text-768' outputs 768-d vectors but model.vision='tiny' outputs"),
    ("text", "models/not-json", "model.text='models/not-json': its config.json cannot be read (not JSON: "),
    ("vision", "models/a-list", "model.vision='models/a-list': its config.json is not a JSON object"),
    ("text", "models/text-64", "max_text_len=128 is too long for model.text='models/text-64'; use at most 64"),
])
def test_check_params_refuses_a_model_base_cannot_load(model_params, tmp_path, key, value, named):
    # Before: the gate passed these; `base` failed on them after DVC had deleted models/base/text and vision.
    error = one_error_line(check_params(tmp_path, with_text(model_params, f"  {key}", f"  {key}: {value}")))
    assert named in error, error


@pytest.mark.parametrize("text, vision", [("org/cached", "tiny"), ("models/ok", "models/sharded"),
                                          ("tiny", "org/cached"), ("models/text-768", "models/vision-768"),
                                          ("models/text-768", "models/clip-768")])
def test_check_params_passes_tiny_a_local_model_folder_and_a_cached_hub_id(model_params, tmp_path, text, vision):
    params = with_text(with_text(model_params, "  text", f"  text: {text}"), "  vision", f"  vision: {vision}")
    result = check_params(tmp_path, params)
    assert result.returncode == 0, result.stderr


def test_check_params_refuses_a_data_root_without_a_json_file(raw, tmp_path):
    # Before: the gate passed a folder of images alone (the images folder, say); `prepare` then found no pair,
    # after DVC had deleted the docstore and the pairs.
    params = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", str(raw / "dish_00/images"))
    error = one_error_line(check_params(tmp_path, params))
    assert "data.root=" in error and "holds no JSON file (*.json, *.jsonl)" in error, error
