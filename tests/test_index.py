"""The passage index: FAISS factories on synthetic vectors, the manifest check, and the index stage."""

import json

import faiss
import numpy as np
import pandas as pd
import pytest

from faclip.errors import FaclipError
from faclip.files import sha256_file
from faclip.index import INDEX_FILE, build_index, check_manifest, load_index, save_index, search
from faclip.models import weights_sha256
from faclip.tables import load_docstore


def unit_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_returns_what_brute_force_returns():
    passages, queries = unit_vectors(300), unit_vectors(20, seed=1)
    scores, ids = search(build_index(passages, "Flat"), queries, k=10)
    brute = queries @ passages.T  # (Q, N)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    assert (ids == expected).all()
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF8,Flat", "IVF8_HNSW16,Flat", "SQ8"])
def test_each_vector_finds_itself_first(factory):
    passages = unit_vectors(500)
    index = build_index(passages, factory)
    assert index.ntotal == 500 and index.d == 32
    _, ids = search(index, passages[::7], k=3)
    assert (ids[:, 0] == np.arange(0, 500, 7)).all()


def test_k_larger_than_the_index_is_capped():
    scores, ids = search(build_index(unit_vectors(4), "Flat"), unit_vectors(2, seed=3), k=10)
    assert ids.shape == (2, 4) and sorted(ids[0]) == [0, 1, 2, 3]


@pytest.mark.parametrize("factory, needed", [("IVF64,Flat", 64), ("PQ8", 256), ("IVF4,PQ8", 256)])
def test_too_few_passages_to_train_is_a_one_line_error(factory, needed):
    with pytest.raises(FaclipError) as err:
        build_index(unit_vectors(50), factory)
    message = str(err.value)
    assert f"needs at least {needed} passages" in message and "has 50" in message and "Flat" in message
    assert "\n" not in message


def test_bad_factory_is_a_one_line_error():
    with pytest.raises(FaclipError, match="not a FAISS factory string") as err:
        build_index(unit_vectors(10), "NoSuchIndex")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("factory", ["IVF8,PQ4x4", "HNSW16"])
def test_build_is_deterministic(factory):
    passages = unit_vectors(1000)
    first = faiss.serialize_index(build_index(passages, factory))
    assert (first == faiss.serialize_index(build_index(passages, factory))).all()


def test_search_defaults_are_stored_in_the_index(tmp_path):
    index = build_index(unit_vectors(400), "IVF16,Flat")
    faiss.write_index(index, str(tmp_path / "x.faiss"))
    assert faiss.extract_index_ivf(faiss.read_index(str(tmp_path / "x.faiss"))).nprobe == 16


# --- manifest ------------------------------------------------------------------------------------


@pytest.fixture
def built(tmp_path):
    """A docstore, a stand-in model folder (just weights) and an index saved from them."""
    docstore = pd.DataFrame({"id": [f"{i:016x}" for i in range(5)], "food_id": list("aabbc"),
                             "title": list("AABBC"), "passage_text": [f"متن {i}" for i in range(5)]})
    docstore_path = tmp_path / "docstore.parquet"
    docstore.to_parquet(docstore_path, index=False)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights v1")
    index_dir = tmp_path / "index"
    save_index(build_index(unit_vectors(5), "Flat"), index_dir, factory="Flat", passage_ids=docstore["id"].tolist(),
               docstore_sha256=sha256_file(docstore_path), model_sha256=weights_sha256(model_dir))
    return index_dir, model_dir, docstore_path


def test_manifest_records_what_the_index_was_built_from(built):
    index_dir, model_dir, docstore_path = built
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["factory"] == "Flat" and manifest["dim"] == 32 and manifest["count"] == 5
    assert manifest["passage_ids"] == load_docstore(docstore_path)["id"].tolist()
    assert manifest["docstore_sha256"] == sha256_file(docstore_path)
    assert manifest["model_sha256"] == sha256_file(model_dir / "model.safetensors")
    assert manifest["index_sha256"] == sha256_file(index_dir / INDEX_FILE)
    index, loaded = load_index(index_dir, model_dir, docstore_path)
    assert index.ntotal == 5 and loaded == manifest


def test_manifest_detects_another_model(built):
    index_dir, model_dir, docstore_path = built
    (model_dir / "model.safetensors").write_bytes(b"weights v2")
    with pytest.raises(FaclipError, match="another model.*dvc repro index"):
        check_manifest(index_dir, model_dir, docstore_path)


def test_manifest_detects_another_docstore(built):
    index_dir, model_dir, docstore_path = built
    docstore = pd.read_parquet(docstore_path)
    docstore.loc[0, "passage_text"] = "متن دیگر"
    docstore.to_parquet(docstore_path, index=False)
    with pytest.raises(FaclipError, match="another docstore.*dvc repro index"):
        check_manifest(index_dir, model_dir, docstore_path)


def test_manifest_detects_a_changed_index_file(built):
    index_dir, model_dir, docstore_path = built
    faiss.write_index(build_index(unit_vectors(5, seed=9), "Flat"), str(index_dir / INDEX_FILE))
    with pytest.raises(FaclipError, match="does not match its manifest"):
        check_manifest(index_dir, model_dir, docstore_path)


def test_missing_index_says_how_to_build_it(tmp_path, built):
    _, model_dir, docstore_path = built
    with pytest.raises(FaclipError, match="no index found.*run `dvc repro` \\(the whole pipeline\\)"):
        check_manifest(tmp_path / "nowhere", model_dir, docstore_path)


# --- the index stage, with the tiny text model standing in for models/finetuned --------------------


def run_index_stage(argv):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("index_stage", REPO / "stages" / "index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def test_index_stage_embeds_every_passage_and_rebuilds_byte_identical(tmp_path, tiny_model_dirs, monkeypatch):
    from test_search import write_docstore

    from faclip.encode import encode_texts
    from faclip.models import load_text_model

    text_dir, _ = tiny_model_dirs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("index:\n  factory: HNSW16\n  efSearch: 8\n")
    docstore = write_docstore(tmp_path / "docstore.parquet")
    args = ["--model", str(text_dir), "--docstore", "docstore.parquet", "--out", "index"]
    run_index_stage(args)
    first = {name: sha256_file(tmp_path / "index" / name) for name in (INDEX_FILE, "manifest.json")}
    run_index_stage(args)
    assert {name: sha256_file(tmp_path / "index" / name) for name in first} == first

    index, manifest = load_index(tmp_path / "index", text_dir, tmp_path / "docstore.parquet")
    assert manifest["factory"] == "HNSW16" and manifest["count"] == len(docstore) == index.ntotal
    assert manifest["factory_requested"] == "HNSW16" and manifest["search_params"] == {"efSearch": 8}
    assert faiss.downcast_index(index).hnsw.efSearch == 8
    assert manifest["passage_ids"] == docstore["id"].tolist()
    model, tokenizer = load_text_model(text_dir)
    vectors = encode_texts(model, tokenizer, docstore["passage_text"].tolist(), max_len=512)
    _, ids = search(index, vectors, k=1)  # each passage's own vector comes back first
    assert ids[:, 0].tolist() == list(range(len(docstore)))


def test_max_len_comes_from_training_params_else_the_model(tmp_path, tiny_model_dirs):
    from faclip.models import load_text_model, text_max_len

    text_dir, _ = tiny_model_dirs
    model, tokenizer = load_text_model(text_dir)
    assert text_max_len(text_dir, tokenizer, model) == 512  # tiny: tokenizer limit, position table 514 - 2
    (tmp_path / "faclip.json").write_text(json.dumps({"logit_scale": 3.0, "params": {"max_text_len": 96}}))
    assert text_max_len(tmp_path, tokenizer, model) == 96


def test_index_stage_too_few_passages_is_one_line_on_stderr(tmp_path, tiny_model_dirs, monkeypatch, capsys):
    import runpy
    import sys

    from conftest import REPO
    from test_search import write_docstore

    text_dir, _ = tiny_model_dirs
    (tmp_path / "params.yaml").write_text("index:\n  factory: IVF64,Flat\n")
    write_docstore(tmp_path / "docstore.parquet")
    monkeypatch.chdir(tmp_path)
    script = REPO / "stages" / "index.py"
    # `python stages/index.py ...` in this process (the script's own __main__ block; torch is loaded already).
    monkeypatch.setattr(sys, "argv", [str(script), "--model", str(text_dir), "--docstore", "docstore.parquet",
                                      "--out", "index"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("faclip error")]
    assert len(errors) == 1 and "needs at least 64 passages" in errors[0] and "has 8" in errors[0], stderr
    assert not (tmp_path / "index").exists()


# --- recall against exact search ----------------------------------------------------------------


def test_recall_vs_exact_is_one_for_flat_and_measures_what_ivf_misses():
    from faclip.index import recall_vs_exact

    passages, queries = unit_vectors(2000), unit_vectors(50, seed=5)
    assert recall_vs_exact(build_index(passages, "Flat"), passages, queries, k=10) == 1.0
    ivf = build_index(passages, "IVF64,Flat")
    faiss.extract_index_ivf(ivf).nprobe = 1
    low = recall_vs_exact(ivf, passages, queries, k=10)
    faiss.extract_index_ivf(ivf).nprobe = 64  # every list: exact again
    assert low < 0.6 and recall_vs_exact(ivf, passages, queries, k=10) == 1.0


# --- index.factory: auto ------------------------------------------------------------------------


@pytest.mark.parametrize("count, dim, budget_mb, expected", [
    (55, 128, 4096, "Flat"),                  # the sample
    (300_000, 128, 4096, "Flat"),             # 3.8e7 <= 5e7: exact search still ~10 ms a query
    (100_000, 768, 4096, "HNSW32"),           # 7.7e7 > 5e7: too slow for Flat
    (100_000, 768, 300, "IVF1265,Flat"),      # the graph (~330 MiB) does not fit, the vectors (~293 MiB) do
    (2_000_000, 128, 4096, "IVF5657,Flat"),   # beyond HNSW's one-thread build
    (1_000_000, 768, 1024, "IVF4000,PQ384"),  # 2.9 GiB of vectors in 1 GiB: PQ codes
    (1_000_000, 768, 100, "IVF4000,PQ64"),    # smaller budget, shorter codes
])
def test_auto_chooses_the_factory_from_count_dim_and_budget(count, dim, budget_mb, expected):
    from faclip.index import choose_factory

    factory, reason = choose_factory(count, dim, budget_mb)
    assert factory == expected, reason


def test_auto_with_a_budget_too_small_for_any_index_is_a_one_line_error():
    from faclip.index import choose_factory

    with pytest.raises(FaclipError, match=r"index.max_memory_mb=1 is too small.*raise it") as err:
        choose_factory(1_000_000, 768, 1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("factory, knob", [("IVF64,Flat", "nprobe"), ("HNSW16", "efSearch")])
def test_auto_tunes_the_smallest_knob_that_reaches_the_recall_target(factory, knob):
    from faclip.index import recall_vs_exact, set_search_params, tune_index

    passages, queries = unit_vectors(3000), unit_vectors(200, seed=2)
    index = build_index(passages, factory)
    facts = tune_index(index, passages, queries, recall_target=0.9)
    value = facts["search_params"][knob]
    assert facts["recall_vs_exact@10"] >= 0.9 and facts["recall_target"] == 0.9
    assert facts["recall_vs_exact@10"] == round(recall_vs_exact(index, passages, queries), 4)  # left set
    set_search_params(index, {knob: value - 1})
    assert recall_vs_exact(index, passages, queries) < 0.9  # the smallest value that reaches it


def test_a_given_knob_is_used_and_one_for_another_index_is_an_error():
    from faclip.index import tune_index

    passages = unit_vectors(1000)
    facts = tune_index(build_index(passages, "IVF16,Flat"), passages, None, recall_target=0.99, nprobe=3)
    assert facts["search_params"] == {"nprobe": 3} and "recall_target" not in facts
    assert facts["recall_queries"] == "1000 indexed passages"
    assert tune_index(build_index(passages, "Flat"), passages, None, recall_target=None)["recall_vs_exact@10"] == 1.0
    with pytest.raises(FaclipError, match=r"index.efSearch=64 does not apply.*set index.efSearch to null"):
        tune_index(build_index(passages, "IVF16,Flat"), passages, None, recall_target=None, efSearch=64)


def test_load_index_applies_the_manifests_search_params(built, tmp_path):
    from faclip.index import tune_index

    index_dir, model_dir, _ = built
    ids = [f"{i:016x}" for i in range(400)]  # IVF16 trains on 400 rows: a docstore of 400 passages
    docstore_path = tmp_path / "docstore400.parquet"
    pd.DataFrame({"id": ids, "food_id": "a", "title": "A", "passage_text": [f"متن {i}" for i in range(400)]}).to_parquet(
        docstore_path, index=False)
    passages = unit_vectors(400)
    index = build_index(passages, "IVF16,Flat")
    facts = tune_index(index, passages, None, recall_target=None, nprobe=5)
    faiss.extract_index_ivf(index).nprobe = 1  # the manifest, not the file, is what readers get
    save_index(index, index_dir, factory="IVF16,Flat", passage_ids=ids, docstore_sha256=sha256_file(docstore_path),
               model_sha256=weights_sha256(model_dir), search_facts=facts)
    loaded, manifest = load_index(index_dir, model_dir, docstore_path)
    assert manifest["search_params"] == {"nprobe": 5} and faiss.extract_index_ivf(loaded).nprobe == 5
