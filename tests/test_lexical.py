"""The lexical index (`faclip.lexical`): its terms, BM25 as the textbook defines it, a byte-identical artifact
bound to its docstore, damage refused in one line, and the hybrid rule (`faclip.vqa.fuse`) both query kinds use.
"""

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import DISHES

from faclip.errors import FaclipError
from faclip.files import sha256_file
from faclip.lexical import BM25_FILES, K1, B, LexicalIndex, build_lexical_index, terms, top_k, word_terms
from faclip.tables import passage_ids_sha256
from faclip.text import food_id_for, passage_id_for, query_text
from faclip.vqa import fuse, min_max, together_scores

PASSAGES = [p for _, passages in DISHES for p in passages]
MAX_CHARS = 10_000


def write_docstore(path, passages=PASSAGES):
    rows = [(passage_id_for(p), food_id_for(f"dish {i}"), f"dish {i}", p) for i, p in enumerate(passages)]
    pd.DataFrame(sorted(rows), columns=["id", "food_id", "title", "passage_text"]).to_parquet(path, index=False)
    return pd.read_parquet(path)


def load(lexical_dir, docstore_path):
    ids = pd.read_parquet(docstore_path)["id"].tolist()
    return LexicalIndex(lexical_dir, docstore_sha256=sha256_file(docstore_path), passage_ids_sha256=passage_ids_sha256(ids))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("lexical")
    docstore = write_docstore(root / "docstore.parquet")
    manifest = build_lexical_index(root / "docstore.parquet", root / "lexical")
    return root, docstore, manifest, load(root / "lexical", root / "docstore.parquet")


# --- terms ------------------------------------------------------------------------------------------


def test_terms_are_the_character_ngrams_of_each_word_of_the_identity_form():
    assert word_terms("آش") == [" آش", "آش ", " آش "]  # a 2-letter word: its 3- and 4-gram
    assert word_terms("کباب") == [" کب", "کبا", "باب", "اب ", " کبا", "کباب", "باب ", " کباب", "کباب "]
    assert terms("کباب‌ها!") == word_terms("کباب") + word_terms("ها")  # ZWNJ splits words, punctuation is no term
    # spellings scrapes carry (Arabic yeh and kaf, diacritics, tatweel, ZWNJ for a space) are the same terms
    assert terms("ليمو عماني طعم مي‌دهد") == terms("لیمو عمانی طعمِ می دهد") == terms("لیمـو عمانی طعم می‌دهد")
    assert terms("؟! ...") == [] and terms("") == []


# --- BM25 -------------------------------------------------------------------------------------------


def textbook_bm25(passages: list[str], query: str) -> np.ndarray:
    """Lucene's BM25 computed densely from the definition: sum over the query's terms of
    ln(1 + (N − df + 0.5) / (df + 0.5)) · tf / (tf + k1 · (1 − b + b · |d| / avgdl))."""
    docs = [Counter(terms(p)) for p in passages]
    lengths = np.array([sum(doc.values()) for doc in docs], dtype=np.float64)
    scores = np.zeros(len(docs))
    for term in terms(query):
        df = sum(term in doc for doc in docs)
        if not df:
            continue
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        tf = np.array([doc[term] for doc in docs], dtype=np.float64)
        scores += idf * tf / (tf + K1 * (1 - B + B * lengths / lengths.mean()))
    return scores


def test_scores_are_textbook_bm25_of_the_terms(built):
    _, docstore, _, lexical = built
    texts = docstore["passage_text"].tolist()
    for question in ("لیمو عمانی چه طعمی می‌دهد؟", "با چه نانی می‌خورند؟", "روی آش چه می‌ریزند", "کباب کباب"):
        np.testing.assert_allclose(lexical.scores(question), textbook_bm25(texts, question), rtol=1e-5)
    asked = lexical.scores("لیمو عمانی چه طعمی می‌دهد؟")
    assert texts[int(asked.argmax())] == "لیمو عمانی به قورمه سبزی طعم ترش می‌دهد."
    np.testing.assert_array_equal(lexical.scores("ليمو عماني چه طعمي مي دهد؟"), asked)  # scrape spelling
    assert not lexical.scores("xyz qqq").any() and not lexical.scores("؟!").any()


def test_a_query_is_normalised_first_and_cut_second(built):
    _, _, _, lexical = built
    def read(text, max_chars):  # what BM25 scores of a query: what the Retriever reads of it
        return lexical.scores(query_text(text, max_chars))

    padded = "\u200b" * 20_000 + "لیمو عمانی"  # invisible characters past any cut, then the words
    np.testing.assert_array_equal(read(padded, 40), read("لیمو عمانی", 40))
    long = "لیمو عمانی چه طعمی می‌دهد؟ " + "کباب کوبیده " * 1_000
    np.testing.assert_array_equal(read(long, 40), read(long[:40], 40))
    assert (read(long, MAX_CHARS) != read(long[:40], MAX_CHARS)).any()  # the cut is no no-op


def test_top_k_keeps_the_best_matches_in_score_then_row_order():
    scores = np.array([0.0, 2.0, 5.0, 2.0, 0.5, 0.0], dtype=np.float32)
    assert top_k(scores, 3)[1].tolist() == [2, 1, 3]  # a tie in row order
    assert top_k(scores, 10)[1].tolist() == [2, 1, 3, 4]  # 0 is no match
    assert top_k(np.zeros(4, np.float32), 2)[1].tolist() == []


# --- the artifact -----------------------------------------------------------------------------------


def test_the_build_is_byte_identical_and_bound_to_its_docstore(built, tmp_path):
    root, docstore, manifest, _ = built
    again = build_lexical_index(root / "docstore.parquet", tmp_path / "lexical")
    assert again == manifest
    for name in (*BM25_FILES, "manifest.json"):
        assert (tmp_path / "lexical" / name).read_bytes() == (root / "lexical" / name).read_bytes(), name
    assert manifest["count"] == len(docstore)
    assert manifest["docstore_sha256"] == sha256_file(root / "docstore.parquet")
    assert manifest["passage_ids_sha256"] == passage_ids_sha256(docstore["id"].tolist())
    assert manifest["files_sha256"] == {name: sha256_file(root / "lexical" / name) for name in BM25_FILES}


def test_the_build_does_not_depend_on_how_passages_are_chunked(built, tmp_path, monkeypatch):
    import faclip.lexical

    root, _, _, _ = built
    monkeypatch.setattr(faclip.lexical, "CHUNK", 2)  # a chunk boundary every second passage
    build_lexical_index(root / "docstore.parquet", tmp_path / "lexical")
    for name in BM25_FILES:
        assert (tmp_path / "lexical" / name).read_bytes() == (root / "lexical" / name).read_bytes(), name


def test_postings_are_laid_out_exactly_as_bm25s_lays_them_out(monkeypatch):
    import faclip.lexical
    from bm25s.scoring import _np_csc_python

    rng = np.random.default_rng(0)
    keys = rng.permutation(rng.choice(500 * 300, 20_000, replace=False))  # distinct (row, col), as postings are
    keys = keys[np.argsort(keys // 300, kind="stable")]  # in row order, columns in any order within a row
    rows, cols = (keys // 300).astype(np.int32), (keys % 300).astype(np.int32)
    data = rng.random(len(rows)).astype(np.float32)
    monkeypatch.setattr(faclip.lexical, "POSTINGS_STEP", 777)  # many steps, none aligned with a column
    ours, theirs = faclip.lexical.postings_by_term(data, rows, cols, (500, 300)), _np_csc_python(data, rows, cols, (500, 300))
    for mine, library in zip(ours, theirs):
        np.testing.assert_array_equal(mine, library)
        assert mine.dtype == library.dtype


def test_the_index_is_memory_mapped(built):
    _, _, _, lexical = built
    for name in ("data", "indices", "indptr"):
        assert isinstance(lexical.bm25.scores[name], np.memmap), name


def damage(lexical_dir, how):
    if how == "edited postings":
        path = lexical_dir / "data.csc.index.npy"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "edited vocabulary":
        path = lexical_dir / "vocab.index.json"
        path.write_text(path.read_text(encoding="utf-8").replace('"', "'", 2), encoding="utf-8")
    elif how == "missing manifest":
        (lexical_dir / "manifest.json").unlink()
    elif how == "manifest not JSON":
        (lexical_dir / "manifest.json").write_text("{", encoding="utf-8")
    elif how == "manifest a list":
        (lexical_dir / "manifest.json").write_text("[]", encoding="utf-8")
    elif how == "other terms":
        manifest = json.loads((lexical_dir / "manifest.json").read_text(encoding="utf-8"))
        (lexical_dir / "manifest.json").write_text(json.dumps({**manifest, "terms": "words"}), encoding="utf-8")
    elif how == "missing file":
        (lexical_dir / "indptr.csc.index.npy").unlink()


@pytest.mark.parametrize("how, words", [
    ("edited postings", "data.csc.index.npy does not match"),
    ("edited vocabulary", "vocab.index.json does not match"),
    ("missing file", "indptr.csc.index.npy"),
    ("missing manifest", "no lexical index found in"),
    ("manifest not JSON", "is damaged (not JSON"),
    ("manifest a list", "is damaged or from another faclip"),
    ("other terms", "holds 'words' terms"),
])
def test_a_damaged_lexical_index_is_refused_in_one_line(built, tmp_path, how, words):
    root, _, _, _ = built
    build_lexical_index(root / "docstore.parquet", tmp_path / "lexical")
    damage(tmp_path / "lexical", how)
    with pytest.raises(FaclipError) as error:
        load(tmp_path / "lexical", root / "docstore.parquet")
    message = str(error.value)
    assert words in message and "dvc repro" in message and "\n" not in message, message


def test_a_lexical_index_of_another_docstore_is_refused(built, tmp_path):
    root, _, _, _ = built
    write_docstore(tmp_path / "other.parquet", PASSAGES[:-1])  # one passage fewer
    build_lexical_index(tmp_path / "other.parquet", tmp_path / "lexical")
    with pytest.raises(FaclipError, match=r"built from another docstore than the passage index; run `dvc repro`"):
        load(tmp_path / "lexical", root / "docstore.parquet")


# --- the hybrid rule --------------------------------------------------------------------------------


def test_min_max_maps_each_list_onto_0_to_1():
    np.testing.assert_allclose(min_max(np.array([3.0, 1.0, 2.0])), [1.0, 0.0, 0.5])
    assert min_max(np.array([0.7, 0.7])).tolist() == [1.0, 1.0]  # equal matches: all the best
    assert min_max(np.array([0.0, 0.0])).tolist() == [0.0, 0.0]  # no match at all: nothing
    assert min_max(np.array([])).tolist() == []


def test_fuse_ranks_the_union_by_the_weighted_normalised_scores():
    dense_scores, dense_rows = np.array([0.9, 0.5, 0.1, 0.0]), np.array([4, 1, 2, -1])  # -1: no result
    lexical_scores, lexical_rows = np.array([30.0, 10.0, 0.0]), np.array([2, 7, 4])  # raw BM25: unbounded
    scores, rows = fuse(dense_scores, dense_rows, lexical_scores, lexical_rows, 0.5)
    # dense normalised: 4 → 1, 1 → 0.5, 2 → 0; lexical normalised: 2 → 1, 7 → 1/3, 4 → 0; 7 has no dense score
    expected = {4: 0.5, 1: 0.25, 2: 0.5, 7: 1 / 6}
    assert rows.tolist() == [4, 2, 1, 7]  # the tie (4 and 2) keeps the dense list's order
    np.testing.assert_allclose(scores, [expected[r] for r in rows.tolist()])
    assert fuse(dense_scores, dense_rows, lexical_scores, lexical_rows, 1.0)[1].tolist()[:3] == [4, 1, 2]
    assert fuse(dense_scores, dense_rows, lexical_scores, lexical_rows, 0.0)[1].tolist()[:2] == [2, 7]
    # scaling BM25 (a longer question, a bigger corpus) changes nothing: the rule holds for unbounded scores
    scaled = fuse(dense_scores, dense_rows, 1000 * lexical_scores, lexical_rows, 0.5)
    np.testing.assert_allclose(scaled[0], scores)
    assert scaled[1].tolist() == rows.tolist()


def test_together_scores_fuse_the_photos_candidates_with_the_questions_bm25():
    photo_scores, candidates = np.array([0.9, 0.8, 0.7, 0.0], np.float32), np.array([2, 0, 1, -1])
    question = np.array([5.0, 0.0, 1.0, 9.0])  # BM25 of passages 0..3; 3 is not a candidate: never returned
    scores, rows = together_scores(photo_scores, candidates, question, 0.5)
    # photo: 2 → 1, 0 → 0.5, 1 → 0; question over the candidates: 0 → 1, 2 → 0.2, 1 → 0
    assert rows.tolist() == [0, 2, 1]
    np.testing.assert_allclose(scores, [0.75, 0.6, 0.0])
    assert together_scores(photo_scores, candidates, question, 1.0)[1].tolist() == [2, 0, 1]  # the photo alone
    assert together_scores(photo_scores, candidates, question, 0.0)[1].tolist()[:2] == [0, 2]  # the question alone
