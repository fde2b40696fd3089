"""The search command end to end on a tiny fixture: `Retriever` and `python -m faclip search`.

The base tiny text model stands in for models/finetuned (same folder layout); it is untrained, so
the tests check the retrieval machinery (brute-force agreement, own passage first), not quality.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import DISHES, REPO, draw_dish_image

from faclip.encode import CHARS_PER_TOKEN_BOUND, encode_images, encode_texts
from faclip.errors import FaclipError
from faclip.index import build_passage_index
from faclip.lexical import build_lexical_index
from faclip.models import load_text_model, load_vision_model
from faclip.search import Hit, Retriever, format_hits
from faclip.text import food_id_for, passage_id_for


def write_docstore(path) -> pd.DataFrame:
    """The DISHES passages as a docstore (sorted by id, as `prepare` writes it)."""
    rows = [(passage_id_for(p), food_id_for(title), title, p) for title, passages in DISHES for p in passages]
    docstore = pd.DataFrame(sorted(rows), columns=["id", "food_id", "title", "passage_text"])
    docstore.to_parquet(path, index=False)
    return docstore


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dirs):
    """(text_dir, vision_dir, index_dir, docstore_path, docstore, photo path) with a Flat index built."""
    root = tmp_path_factory.mktemp("search")
    text_dir, vision_dir = tiny_model_dirs
    docstore = write_docstore(root / "docstore.parquet")
    build_passage_index(text_dir, root / "docstore.parquet", root / "index", factory="Flat", device="cpu")
    build_lexical_index(root / "docstore.parquet", root / "lexical")
    photo = root / "photo.jpg"
    draw_dish_image(1, 0).save(photo)
    return text_dir, vision_dir, root / "index", root / "docstore.parquet", docstore, photo


@pytest.fixture(scope="module")
def retriever(setup):
    text_dir, vision_dir, index_dir, docstore_path, *_ = setup
    return Retriever(text_dir, vision_dir, index_dir, docstore_path, device="cpu")


def test_text_query_finds_its_own_passage_first(retriever, setup):
    docstore = setup[4]
    for row in docstore.itertuples():
        hits = retriever.by_text(row.passage_text, k=3)
        assert [h.rank for h in hits] == [1, 2, 3]
        assert hits[0].passage_id == row.id and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert (hits[0].food_id, hits[0].title, hits[0].passage_text) == (row.food_id, row.title, row.passage_text)


def test_image_query_matches_brute_force_over_the_docstore(retriever, setup):
    text_dir, vision_dir, _, _, docstore, photo = setup
    text_model, tokenizer = load_text_model(text_dir)
    vision_model, processor = load_vision_model(vision_dir)
    passages = encode_texts(text_model, tokenizer, docstore["passage_text"].tolist(), max_len=512)
    scores = (encode_images(vision_model, processor, [photo]) @ passages.T)[0]  # (N,)
    expected = np.argsort(-scores, kind="stable")[:5]
    hits = retriever.by_image(photo, k=5)
    assert [h.passage_id for h in hits] == docstore["id"].iloc[expected].tolist()
    np.testing.assert_allclose([h.score for h in hits], scores[expected], atol=1e-5)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_image_as_path_bytes_or_pil_gives_the_same_hits(retriever, setup):
    from PIL import Image

    photo = setup[5]
    by_path = retriever.by_image(photo)
    assert retriever.by_image(photo.read_bytes()) == by_path
    assert retriever.by_image(Image.open(photo)) == by_path


def test_k_is_capped_at_the_docstore_size(retriever, setup):
    assert len(retriever.by_text("قورمه", k=100)) == len(setup[4])


@pytest.mark.parametrize("query", ["", "   \u200c "])
def test_empty_text_is_a_one_line_error(retriever, query):
    with pytest.raises(FaclipError, match="text query is empty"):
        retriever.by_text(query)


@pytest.mark.parametrize("pad", [" ", "\u200b", "\u200d", "\u200f", "\u202b", "\u0640", "\u064e"],
                         ids=lambda pad: f"U+{ord(pad):04X}")
def test_a_padded_query_or_question_gives_the_hits_of_its_words(retriever, setup, pad):
    # Padding longer than what the model reads used to fill it: the hits of an empty query.
    padding = pad * (retriever.max_len * CHARS_PER_TOKEN_BOUND + 10)
    as_dicts = lambda hits: [hit.to_dict() for hit in hits]  # noqa: E731
    for words in ["قورمه سبزی", "کباب کوبیده"]:
        assert as_dicts(retriever.by_text(padding + words, k=3)) == as_dicts(retriever.by_text(words, k=3))
        assert as_dicts(retriever.ask(setup[5], padding + words, k=3)) == as_dicts(retriever.ask(setup[5], words, k=3))


def test_unreadable_image_is_a_one_line_error(retriever, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(FaclipError, match="cannot read image"):
        retriever.by_image(bad)
    with pytest.raises(FaclipError, match="cannot read image"):
        retriever.by_image(b"\x00\x01")


def test_stale_index_is_refused(setup, tmp_path):
    text_dir, vision_dir, index_dir, _, docstore, _ = setup
    other = docstore.iloc[1:]  # a passage less: another docstore
    other.to_parquet(tmp_path / "docstore.parquet", index=False)
    with pytest.raises(FaclipError, match="another docstore.*dvc repro index"):
        Retriever(text_dir, vision_dir, index_dir, tmp_path / "docstore.parquet")


def test_vision_model_must_be_the_one_the_text_model_was_tuned_against(setup, tmp_path):
    text_dir, vision_dir, index_dir, docstore_path, *_ = setup
    tuned = tmp_path / "finetuned"  # same weights (the index still matches), tuned against another vision model
    shutil.copytree(text_dir, tuned)
    (tuned / "faclip.json").write_text(json.dumps({"vision_sha256": "0" * 64}))
    retriever = Retriever(tuned, vision_dir, index_dir, docstore_path, device="cpu")
    with pytest.raises(FaclipError, match="another vision model"):
        retriever.by_image(setup[5])


def test_format_hits_text_and_json():
    hits = [Hit(rank=1, score=0.5, passage_id="ab" * 8, food_id="آش رشته", title="آش رشته", passage_text="متن")]
    text = format_hits(hits)
    assert text.splitlines() == ["1. 0.5000  آش رشته  |  آش رشته", "   متن"]
    assert json.loads(format_hits(hits, as_json=True))[0]["food_id"] == "آش رشته"
    assert "آش" in format_hits(hits, as_json=True)  # ensure_ascii=False: readable Persian


# --- the CLI, in a subprocess as users run it ------------------------------------------------------


def cli(setup, *args):
    text_dir, vision_dir, index_dir, docstore_path, *_ = setup
    # CPU, as the in-process retriever it is compared with (GPU encoding runs in bf16).
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-m", "faclip", "search", *args, "--model", str(text_dir), "--vision", str(vision_dir),
         "--index", str(index_dir), "--docstore", str(docstore_path)],
        cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=120,
    )


def test_cli_text_query_as_json(setup, faclip_cli):
    # In this process (the photo test below runs the command as a process).
    text_dir, vision_dir, index_dir, docstore_path, docstore, _ = setup
    hits = json.loads(faclip_cli("search", "--text", docstore["passage_text"][2], "--k", "2", "--json",
                                 "--model", str(text_dir), "--vision", str(vision_dir), "--index", str(index_dir),
                                 "--docstore", str(docstore_path)))
    assert [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["passage_id"] == docstore["id"][2] and hits[0]["passage_text"] == docstore["passage_text"][2]


def test_cli_reads_a_padded_query_as_its_words(setup, faclip_cli):
    paths = ["--model", str(setup[0]), "--vision", str(setup[1]), "--index", str(setup[2]), "--docstore", str(setup[3])]
    padded = faclip_cli("search", "--text", "\u200d" * 40_000 + "کباب کوبیده", "--json", *paths)  # past the 32,768 read
    assert json.loads(padded) == json.loads(faclip_cli("search", "--text", "کباب کوبیده", "--json", *paths))


def test_cli_image_query_prints_ranked_passages(setup, retriever):
    result = cli(setup, "--image", str(setup[5]), "--k", "3")
    assert result.returncode == 0, result.stderr
    expected = format_hits(retriever.by_image(setup[5], k=3))
    assert result.stdout.strip() == expected.strip()
    assert result.stderr == ""  # the hits only: no library's log lines (FAISS's loader logs two at INFO)


def test_cli_errors_are_one_line_exit_2(setup, tmp_path, capsys):
    from faclip.__main__ import main

    text_dir, vision_dir, index_dir, docstore_path, *_ = setup
    paths = ["--model", str(text_dir), "--vision", str(vision_dir), "--index", str(index_dir),
             "--docstore", str(docstore_path)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    cases = ((["--image", str(bad)], "cannot read image"), (["--text", " \u200c"], "text query is empty"),
             (["--text", "آش", "--k", "0"], "--k 0 is invalid"),
             (["--text", "آش", "--index", str(tmp_path), "--lexical", str(index_dir.parent / "lexical")],
              "no index found in"))
    for args, needle in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["search", *paths, *args])
        assert exit_.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("faclip error:") and needle in errors[0], errors
