"""Image embeddings: the on-disk format, one encode per distinct image, and the incremental cache."""

import importlib.util
import logging
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, draw_dish_image, make_raw_dataset

import faclip.embed as embeddings
from faclip.embed import ImageEmbeddings, embed_images, load_image_embeddings, save_image_embeddings
from faclip.encode import DECODE, encode_images
from faclip.errors import FaclipError
from faclip.files import sha256_dir, sha256_file
from faclip.models import load_vision_model


def _pairs(root) -> pd.DataFrame:
    """training_pairs-like rows: two passages per image, paths relative to root."""
    rows = []
    for path in sorted(root.rglob("*.jpg")):
        for passage in ("a", "b"):
            rows.append({"image_path": path.relative_to(root).as_posix(), "image_sha256": sha256_file(path),
                         "passage_id": passage * 16, "food_id": path.parent.parent.name, "split": "train"})
    return pd.DataFrame(rows)


@pytest.fixture
def raw(tmp_path):
    root = make_raw_dataset(tmp_path / "raw", n_dishes=3, images_per_dish=3)
    shutil.copy(root / "dish_00" / "images" / "00.jpg", root / "dish_01" / "images" / "copy.jpg")  # a duplicate
    return root


@pytest.fixture
def encode_calls(monkeypatch):
    """Spy on the encoder embed_images calls: one list of image paths per call."""
    calls = []

    def spy(model, processor, sources, **kwargs):
        calls.append(list(sources))
        return encode_images(model, processor, sources, **kwargs)
    monkeypatch.setattr(embeddings, "encode_images", spy)
    return calls


def _random_embeddings(n=5, dim=8) -> ImageEmbeddings:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ImageEmbeddings([f"{i:064x}" for i in range(n)], vectors, "f" * 64)


def test_save_load_round_trip(tmp_path):
    emb = _random_embeddings()
    save_image_embeddings(tmp_path / "a", emb)
    save_image_embeddings(tmp_path / "b", emb)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["embeddings.npy", "image_sha256.txt",
                                                                  "manifest.json"]
    assert sha256_dir(tmp_path / "a") == sha256_dir(tmp_path / "b")
    start = time.perf_counter()
    loaded = load_image_embeddings(tmp_path / "a")
    assert time.perf_counter() - start < 0.5
    assert loaded.image_sha256 == emb.image_sha256 and loaded.vision_sha256 == emb.vision_sha256
    assert loaded.vectors.dtype == np.float32 and np.array_equal(loaded.vectors, emb.vectors)
    wanted = [emb.image_sha256[3], emb.image_sha256[0], emb.image_sha256[3]]
    assert np.array_equal(loaded.lookup(wanted), emb.vectors[[3, 0, 3]])
    with pytest.raises(FaclipError, match="dvc repro embed"):
        loaded.lookup(["0" * 63 + "9"])
    with pytest.raises(FaclipError, match="dvc repro embed"):
        load_image_embeddings(tmp_path / "missing")


def test_each_distinct_image_encoded_once_equal_to_direct_call(raw, tmp_path, tiny_model_dirs, encode_calls):
    pairs = _pairs(raw)
    emb, encoded = embed_images(pairs, raw, tiny_model_dirs[1], tmp_path / "cache")
    distinct = sorted(set(pairs["image_sha256"]))
    assert len(distinct) == 9 and len(pairs) == 20  # 10 files, one a duplicate; two passages each
    assert encoded == 9 and [len(call) for call in encode_calls] == [9]
    assert emb.image_sha256 == distinct and emb.vision_sha256 == sha256_dir(tiny_model_dirs[1])
    first_path = pairs.drop_duplicates("image_sha256").set_index("image_sha256")["image_path"]
    direct = encode_images(*load_vision_model(tiny_model_dirs[1]), [raw / first_path[s] for s in distinct])
    assert np.array_equal(emb.vectors, direct)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)


def test_rerun_encodes_only_new_images(raw, tmp_path, tiny_model_dirs, encode_calls):
    vision_dir, cache = tiny_model_dirs[1], tmp_path / "cache"
    embed_images(_pairs(raw), raw, vision_dir, cache)
    assert [len(call) for call in encode_calls] == [9]

    _, encoded = embed_images(_pairs(raw), raw, vision_dir, cache)
    assert encoded == 0 and len(encode_calls) == 1  # nothing new: the encoder is not even loaded

    new_image = raw / "dish_02" / "images" / "new.jpg"
    draw_dish_image(2, 99).save(new_image, quality=90)
    incremental, encoded = embed_images(_pairs(raw), raw, vision_dir, cache)
    assert encoded == 1 and encode_calls[-1] == [new_image]

    # Vectors from the cache are exactly the ones a fresh run computes.
    fresh, _ = embed_images(_pairs(raw), raw, vision_dir, tmp_path / "empty_cache")
    save_image_embeddings(tmp_path / "incremental", incremental)
    save_image_embeddings(tmp_path / "fresh", fresh)
    assert sha256_dir(tmp_path / "incremental") == sha256_dir(tmp_path / "fresh")

    # Images dropped from the pairs leave the output (the cache keeps them for later).
    fewer = _pairs(raw).query("food_id != 'dish_02'")
    subset, encoded = embed_images(fewer, raw, vision_dir, cache)
    assert encoded == 0 and subset.image_sha256 == sorted(set(fewer["image_sha256"]))
    assert len(load_image_embeddings(cache / f"{sha256_dir(vision_dir)}-{DECODE}").image_sha256) == 10


def test_another_vision_model_has_its_own_cache(raw, tmp_path, tiny_model_dirs, encode_calls):
    other = tmp_path / "other_vision"
    shutil.copytree(tiny_model_dirs[1], other)
    (other / "faclip.json").write_text('{"dim": 128, "kind": "vision", "source": "elsewhere"}\n')
    embed_images(_pairs(raw), raw, tiny_model_dirs[1], tmp_path / "cache")
    _, encoded = embed_images(_pairs(raw), raw, other, tmp_path / "cache")
    assert encoded == 9 and len(encode_calls) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [f"{sha256_dir(tiny_model_dirs[1])}-{DECODE}", f"{sha256_dir(other)}-{DECODE}"])


def test_missing_image_is_one_line_error(raw, tmp_path, tiny_model_dirs):
    pairs = _pairs(raw)
    (raw / pairs["image_path"][0]).unlink()
    with pytest.raises(FaclipError, match="missing") as err:
        embed_images(pairs, raw, tiny_model_dirs[1], tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_pairs_naming_an_image_outside_the_root_are_refused(raw, tmp_path, tiny_model_dirs):
    pairs = _pairs(raw)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((raw / pairs["image_path"][0]).read_bytes())
    pairs.loc[0, "image_path"] = "../outside.jpg"
    with pytest.raises(FaclipError, match="outside data.root"):
        embed_images(pairs, raw, tiny_model_dirs[1], tmp_path / "cache")


def test_missing_vision_model_is_an_error(raw, tmp_path):
    with pytest.raises(FaclipError, match="dvc repro base"):
        embed_images(_pairs(raw), raw, tmp_path / "no_model", tmp_path / "cache")


def test_embed_stage(raw, tmp_path, tiny_model_dirs, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"root": "raw"}}))
    _pairs(raw).to_csv(tmp_path / "pairs.csv", index=False)
    spec = importlib.util.spec_from_file_location("stage_embed", REPO / "stages" / "embed.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    argv = ["--pairs", "pairs.csv", "--vision", str(tiny_model_dirs[1]), "--cache", "cache", "--out", "emb"]
    with caplog.at_level(logging.INFO):
        stage.main(argv)
        first = sha256_dir(tmp_path / "emb")
        stage.main(argv)
    assert "9 encoded, 0 reused" in caplog.text and "0 encoded, 9 reused" in caplog.text
    assert sha256_dir(tmp_path / "emb") == first
    emb = load_image_embeddings(tmp_path / "emb")
    assert emb.vectors.shape == (9, 128) and emb.vision_sha256 == sha256_dir(tiny_model_dirs[1])


def test_two_processes_write_the_bytes_one_process_writes(raw, tmp_path, tiny_model_dirs, monkeypatch, caplog):
    import os
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    # batch 2: 9 new images are 5 batches, 3 for process 0 and 2 for process 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"root": "raw"},
                                                          "embed": {"batch_size": 2, "num_workers": 0}}))
    _pairs(raw).to_csv(tmp_path / "pairs.csv", index=False)

    def argv(name):
        return ["--pairs", "pairs.csv", "--vision", str(tiny_model_dirs[1]), "--cache", f"cache_{name}",
                "--out", f"emb_{name}"]
    spec = importlib.util.spec_from_file_location("stage_embed", REPO / "stages" / "embed.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with caplog.at_level(logging.INFO):
        stage.main(argv("one"))
    assert "on 1 process(es), batch 2" in caplog.text

    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "stages/embed.py"), *argv("two")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es), batch 2" in proc.stderr and "9 encoded, 0 reused" in proc.stderr
    assert sha256_dir(tmp_path / "emb_two") == sha256_dir(tmp_path / "emb_one")
    assert sha256_dir(tmp_path / "cache_two") == sha256_dir(tmp_path / "cache_one")
