"""A photo and a question together: the optional `question` field, the questions table, `Retriever.ask`
(the same hits through Python, the CLI and HTTP), its bad input, and evaluate's `vqa` metrics.
"""

import base64
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import DISHES, REPO, draw_dish_image, make_raw_dataset
from test_evaluate import fake_embeddings, fake_pairs, load_stage, unit
from test_search import write_docstore

from faclip.embed import save_image_embeddings
from faclip.encode import CHARS_PER_TOKEN_BOUND, decode_min_side, encode_images, encode_texts, load_rgb
from faclip.errors import FaclipError
from faclip.evaluate import VqaQueries, evaluate_text, evaluate_vqa, exact_passage_metrics
from faclip.index import build_index, build_passage_index, search
from faclip.lexical import LexicalIndex, build_lexical_index
from faclip.models import load_vision_model
from faclip.params import parse_params
from faclip.prepare import MAX_QUESTION_CHARS, prepare_dataset
from faclip.search import Retriever
from faclip.tables import QUESTIONS_COLUMNS, load_questions
from faclip.text import passage_id_for, query_text
from faclip.vqa import DEFAULT_PHOTO_WEIGHT, DEFAULT_TEXT_WEIGHT, check_photo_weight, check_text_weight, min_max

QUESTION = "این غذا را با چه چیزی سرو می‌کنند؟"


# --- data: the optional question field --------------------------------------------------------------


def add_questions(root, questions_by_record):
    """Give record i of dish_00's records.json the question questions_by_record[i] (a key absent when missing)."""
    path = root / "dish_00/records.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    for record, question in zip(records, questions_by_record):
        if question is not _MISSING:
            record["question"] = question
    path.write_text(json.dumps(records), encoding="utf-8")  # \u escapes: a lone surrogate survives as in a scrape
    return records


_MISSING = object()


def test_records_with_and_without_a_question_both_make_pairs(tmp_path):
    root = make_raw_dataset(tmp_path / "raw", n_dishes=2, images_per_dish=3)
    before = prepare_dataset(root, 0.2, workers=1)
    assert before.questions.empty and list(before.questions.columns) == QUESTIONS_COLUMNS
    assert before.stats["questions"] == 0

    records = add_questions(root, [QUESTION, _MISSING, "  لیمو عمانی چه طعمی می‌دهد؟ ", None])
    after = prepare_dataset(root, 0.2, workers=1)
    pd.testing.assert_frame_equal(after.pairs, before.pairs)  # the questions change no pair
    pd.testing.assert_frame_equal(after.docstore, before.docstore)
    questions = after.questions
    assert list(questions.columns) == QUESTIONS_COLUMNS
    assert sorted(questions["question"]) == sorted([QUESTION, "لیمو عمانی چه طعمی می‌دهد؟"])  # as written, stripped
    asked = questions.set_index("question").loc[QUESTION]
    assert asked["passage_id"] == passage_id_for(records[0]["response"])
    pair = after.pairs[(after.pairs["image_path"] == asked["image_path"])
                       & (after.pairs["passage_id"] == asked["passage_id"])].iloc[0]
    assert (asked["image_sha256"], asked["food_id"], asked["split"]) == (pair["image_sha256"], pair["food_id"],
                                                                        pair["split"])
    assert after.stats["questions"] == 2 and after.stats["skipped_total"] == 0  # null is no question, not a skip
    assert after.stats["train_questions"] + after.stats["test_questions"] == 2


@pytest.mark.parametrize("bad, reason", [
    (42, "question_not_text"),
    (["چرا؟"], "question_not_text"),
    (" \u200c\u0640\u064e\u200b ", "question_blank"),
    ("", "question_blank"),
    ("چرا\x00؟", "question_invalid_characters"),
    ("چرا\ud800؟", "question_invalid_characters"),
    pytest.param("چ" * MAX_QUESTION_CHARS + "؟", "question_too_long", id="a page pasted as the question"),
])
def test_a_bad_question_is_a_named_skip_of_the_question_only(tmp_path, bad, reason):
    root = make_raw_dataset(tmp_path / "raw", n_dishes=2, images_per_dish=3)
    before = prepare_dataset(root, 0.2, workers=1)
    add_questions(root, [bad, QUESTION])
    after = prepare_dataset(root, 0.2, workers=1)
    pd.testing.assert_frame_equal(after.pairs, before.pairs)  # the pair stays
    assert after.questions["question"].tolist() == [QUESTION]
    assert after.stats["skipped"] == {reason: 1} and after.stats["skipped_total"] == 1
    skip = after.skips.to_frame().iloc[0]
    assert (skip["reason"], skip["source"], skip["position"]) == (reason, "dish_00/records.json", "item 0")
    assert "the pair is kept" in skip["detail"]


def test_a_question_at_the_bound_is_kept_and_the_bound_is_what_serve_accepts(tmp_path):
    from faclip.serve.contract import MAX_TEXT_CHARS
    assert MAX_QUESTION_CHARS == MAX_TEXT_CHARS  # every stored question can be asked of the server as written
    root = make_raw_dataset(tmp_path / "raw", n_dishes=2, images_per_dish=3)
    longest = "چ" * (MAX_QUESTION_CHARS - 1) + "؟"
    add_questions(root, [f"  {longest} "])
    after = prepare_dataset(root, 0.2, workers=1)
    assert after.questions["question"].tolist() == [longest] and after.stats["skipped_total"] == 0


def test_a_question_asked_twice_of_one_photo_and_passage_is_kept_once(tmp_path):
    root = make_raw_dataset(tmp_path / "raw", n_dishes=2, images_per_dish=3)
    path = root / "dish_00/records.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    records[0]["question"] = QUESTION
    respelled = QUESTION.replace("ی", "ي").replace("\u200c", " ")  # the same question after normalisation
    records.append({**records[0], "question": respelled})
    records.append({**records[0], "question": "و با چه نوشیدنی‌ای؟"})  # another question: a row of its own
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    questions = prepare_dataset(root, 0.2, workers=1).questions
    assert sorted(questions["question"]) == sorted([QUESTION, "و با چه نوشیدنی‌ای؟"])


def test_the_stage_writes_the_questions_table_byte_identically(tmp_path):
    root = make_raw_dataset(tmp_path / "raw", n_dishes=2, images_per_dish=3)
    add_questions(root, [QUESTION, "لیمو عمانی چه طعمی می‌دهد؟"])
    (tmp_path / "params.yaml").write_text(f"data:\n  root: {root}\n", encoding="utf-8")
    written = []
    for run in ("a", "b"):
        out = tmp_path / run
        cmd = [sys.executable, str(REPO / "stages/prepare.py"), "--docstore", str(out / "d.parquet"),
               "--pairs", str(out / "p.csv"), "--questions", str(out / "q.csv"), "--skips", str(out / "s.csv"),
               "--metrics", str(out / "m.json")]
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        written.append((out / "q.csv").read_bytes())
    assert written[0] == written[1]
    table = load_questions(tmp_path / "a/q.csv")
    assert len(table) == 2 and json.loads((tmp_path / "a/m.json").read_text())["questions"] == 2


def test_the_bundled_sample_asks_about_most_records_and_never_names_the_dish():
    records = []
    for path in sorted((REPO / "data/sample").rglob("*.json")):
        text = path.read_text(encoding="utf-8-sig")
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            loaded = [json.loads(line) for line in text.splitlines() if line.strip()]
        records += loaded if isinstance(loaded, list) else [loaded]
    asked = [r for r in records if "question" in r]
    assert 0 < len(asked) < len(records)  # both shapes of record
    from faclip.text import identity_key

    for record in asked:
        assert identity_key(record["title"]) not in identity_key(record["question"]), record
    passages = {passage_id_for(r["response"]) for r in records}
    assert {passage_id_for(r["response"]) for r in asked} == passages  # every passage has a question


# --- the combined query -----------------------------------------------------------------------------


PASSAGES = [p for _, passages in DISHES for p in passages]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "half", True, None])
def test_a_weight_outside_0_to_1_is_refused(bad):
    with pytest.raises(FaclipError, match="photo_weight=.* is invalid; use a number from 0 .the question alone"):
        check_photo_weight(bad)
    with pytest.raises(FaclipError, match="text_weight=.* is invalid; use a number from 0 .BM25 alone"):
        check_text_weight(bad)


def test_vqa_params_are_validated_and_default_to_the_shared_weights():
    assert parse_params({}).vqa.photo_weight == DEFAULT_PHOTO_WEIGHT
    assert parse_params({}).vqa.text_weight == DEFAULT_TEXT_WEIGHT
    in_yaml = yaml.safe_load((REPO / "params.yaml").read_text())["vqa"]
    assert (in_yaml["photo_weight"], in_yaml["text_weight"]) == (DEFAULT_PHOTO_WEIGHT, DEFAULT_TEXT_WEIGHT)
    with pytest.raises(FaclipError, match=r"vqa.text_weight=-1 is invalid"):
        parse_params({"vqa": {"text_weight": -1}})
    assert parse_params({"vqa": {"photo_weight": 0.25}}).vqa.photo_weight == 0.25
    with pytest.raises(FaclipError, match=r"vqa.photo_weight=2 is invalid"):
        parse_params({"vqa": {"photo_weight": 2}})
    with pytest.raises(FaclipError, match=r"unknown key 'vqa.photo_weigth' \(did you mean 'vqa.photo_weight'\?\)"):
        parse_params({"vqa": {"photo_weigth": 0.5}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dirs):
    """A Flat index over the DISHES passages (tiny base text model), a photo, and the Retriever."""
    root = tmp_path_factory.mktemp("vqa")
    text_dir, vision_dir = tiny_model_dirs
    write_docstore(root / "docstore.parquet")
    build_passage_index(text_dir, root / "docstore.parquet", root / "index", factory="Flat", device="cpu")
    build_lexical_index(root / "docstore.parquet", root / "lexical")
    photo = root / "photo.jpg"
    draw_dish_image(1, 0, size=96).save(photo, quality=90)
    retriever = Retriever(text_dir, vision_dir, root / "index", root / "docstore.parquet", device="cpu")
    args = ["--model", str(text_dir), "--vision", str(vision_dir), "--index", str(root / "index"),
            "--docstore", str(root / "docstore.parquet")]
    return retriever, photo, args


def brute_force_scores(retriever, photo, question, weight) -> dict[str, float]:
    """passage_id -> weight·min_max(cos(photo, p)) + (1 − weight)·min_max(BM25(question, p)) over every passage
    (fewer than CANDIDATES: all are candidates), from a separately loaded vision model, the passage vectors of the
    index and the lexical index read from disk anew."""
    vision, processor = load_vision_model(retriever.vision_dir, device="cpu")

    photo_emb = encode_images(vision, processor, [load_rgb(photo, decode_min_side(processor))])[0]
    lexical = LexicalIndex(retriever.lexical.dir, docstore_sha256=retriever.manifest["docstore_sha256"],
                           passage_ids_sha256=retriever.manifest["passage_ids_sha256"])
    bm25 = lexical.scores(query_text(question, retriever.max_len * CHARS_PER_TOKEN_BOUND))
    scores = weight * min_max(cosines(retriever.index, photo_emb)) + (1 - weight) * min_max(bm25)
    return dict(zip(retriever.passages["id"], scores.tolist()))


def cosines(index, query: np.ndarray) -> np.ndarray:
    """The query's cosine with every passage (N,), in row order, as the index computes it (min-max magnifies the
    last float32 digits when the tiny model's cosines are close together, so both sides compute them alike)."""
    scores, rows = search(index, query[None], index.ntotal)
    return scores[0][np.argsort(rows[0])]


def test_ask_ranks_every_passage_by_the_weighted_scores(setup):
    retriever, photo, _ = setup
    n = retriever.index.ntotal  # fewer than CANDIDATES: every passage is a candidate
    for weight in (0.3, 0.85):
        expected = brute_force_scores(retriever, photo, QUESTION, weight)
        hits = retriever.ask(photo, QUESTION, k=n, photo_weight=weight)
        assert [h.rank for h in hits] == list(range(1, n + 1))
        assert [h.score for h in hits] == pytest.approx([expected[h.passage_id] for h in hits], abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_a_text_query_fuses_the_text_encoder_with_bm25(setup):
    retriever, _, _ = setup
    query = "لیمو عمانی چه طعمی می‌دهد؟"
    text_emb = encode_texts(retriever.text_model, retriever.tokenizer, [query], max_len=retriever.max_len)[0]
    bm25 = retriever.lexical.scores(query_text(query, retriever.max_len * CHARS_PER_TOKEN_BOUND))
    matched = bm25 > 0  # BM25's list: the passages sharing a term; the others get 0 for that half
    lexical = np.zeros(len(bm25))
    lexical[matched] = min_max(bm25[matched])
    for weight in (0.0, 0.3, 1.0):
        retriever.text_weight = weight
        try:
            hits = retriever.by_text(query, k=len(bm25))
        finally:
            retriever.text_weight = DEFAULT_TEXT_WEIGHT
        dense = min_max(cosines(retriever.index, text_emb))
        expected = dict(zip(retriever.passages["id"], weight * dense + (1 - weight) * lexical))
        assert [h.score for h in hits] == pytest.approx([expected[h.passage_id] for h in hits], abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert retriever.by_text(query, k=1)[0].passage_text == "لیمو عمانی به قورمه سبزی طعم ترش می‌دهد."


def test_nothing_is_built_at_query_time(setup, monkeypatch):
    import bm25s

    import faclip.lexical

    def built(*args, **kwargs):
        raise AssertionError("the lexical index was built during a query")

    retriever, photo, _ = setup
    for module, name in ((faclip.lexical, "build_lexical_index"), (faclip.lexical, "term_ids"),
                         (bm25s.BM25, "index"), (bm25s.BM25, "build_index_from_ids")):
        monkeypatch.setattr(module, name, built)
    assert retriever.ask(photo, QUESTION, k=2) and retriever.by_text("کباب", k=2)


def test_ask_at_the_ends_of_the_weight_is_the_photo_or_the_question_alone(setup):
    retriever, photo, _ = setup
    ids = lambda hits: [h.passage_id for h in hits]  # noqa: E731
    n = retriever.index.ntotal
    assert ids(retriever.ask(photo, QUESTION, k=5, photo_weight=1.0)) == ids(retriever.by_image(photo, k=5))
    question = "لیمو عمانی چه طعمی می‌دهد؟"
    by_question = retriever.ask(photo, question, k=1, photo_weight=0.0)[0]
    assert by_question.passage_text == "لیمو عمانی به قورمه سبزی طعم ترش می‌دهد."
    assert ids(retriever.ask(photo, question, k=n)) != ids(retriever.by_image(photo, k=n))  # the question counts
    capped = retriever.ask(photo, QUESTION, k=3, per_dish=1)
    assert len({h.food_id for h in capped}) == 3 and [h.rank for h in capped] == [1, 2, 3]


def test_ask_refuses_each_bad_half_in_one_line(setup, tmp_path):
    retriever, photo, _ = setup
    with pytest.raises(FaclipError, match="the text query is empty"):
        retriever.ask(photo, " \u200c ")
    (tmp_path / "notes.jpg").write_bytes(b"not a photo")
    with pytest.raises(FaclipError, match="cannot read image"):
        retriever.ask(tmp_path / "notes.jpg", QUESTION)
    with pytest.raises(FaclipError, match="k=0 is invalid"):
        retriever.ask(photo, QUESTION, k=0)
    with pytest.raises(FaclipError, match="photo_weight=1.5 is invalid"):
        retriever.ask(photo, QUESTION, photo_weight=1.5)


def test_a_question_longer_than_the_cap_is_cut_as_passages_are(setup):
    retriever, photo, _ = setup
    cap = retriever.max_len * CHARS_PER_TOKEN_BOUND
    long_question = (QUESTION + " ") * (cap // len(QUESTION) + 50)  # well past the cap
    cut = retriever.ask(photo, long_question[:cap], k=4)
    assert [h.to_dict() for h in retriever.ask(photo, long_question, k=4)] == [h.to_dict() for h in cut]


def cli(capsys, args, *extra) -> tuple[int, str, str]:
    """`python -m faclip search ...` in this process (its `main`, as the console script runs it): (exit code,
    stdout, stderr)."""
    from faclip.__main__ import main

    capsys.readouterr()
    try:
        main(["search", *extra, *args])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def test_python_cli_and_http_give_identical_hits(setup, capsys):
    """One code path: Retriever.ask, `search --image --text --json`, POST /search and POST /search/image."""
    from fastapi.testclient import TestClient

    from faclip.serve import create_app

    retriever, photo, args = setup
    expected = [h.to_dict() for h in retriever.ask(photo, QUESTION, k=4, per_dish=2)]
    code, out, err = cli(capsys, args, "--image", str(photo), "--text", QUESTION, "--k", "4", "--per-dish", "2", "--json")
    assert code == 0, err
    by_cli = json.loads(out)
    client = TestClient(create_app(retriever))
    by_json = client.post("/search", json={"image": base64.b64encode(photo.read_bytes()).decode(), "text": QUESTION,
                                           "k": 4, "per_dish": 2})
    by_form = client.post("/search/image", params={"k": 4, "per_dish": 2}, data={"text": QUESTION},
                          files={"file": ("photo.jpg", photo.read_bytes(), "image/jpeg")})
    assert by_json.status_code == 200 and by_form.status_code == 200, (by_json.text, by_form.text)
    for hits in (by_cli, by_json.json()["hits"], by_form.json()["hits"]):
        assert [{k: v for k, v in h.items() if k != "score"} for h in hits] == \
            [{k: v for k, v in h.items() if k != "score"} for h in expected]
        assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in expected], abs=1e-5)
    # and the photo alone is still the photo alone
    alone = client.post("/search/image", params={"k": 4}, files={"file": ("p.jpg", photo.read_bytes(), "image/jpeg")})
    assert [h["passage_id"] for h in alone.json()["hits"]] == [h.passage_id for h in retriever.by_image(photo, k=4)]


def test_http_refuses_a_bad_half_with_a_one_line_422(setup):
    from fastapi.testclient import TestClient

    from faclip.serve import create_app

    retriever, photo, _ = setup
    client = TestClient(create_app(retriever))
    image = base64.b64encode(photo.read_bytes()).decode()
    cases = [
        ("post", "/search", {"json": {"image": image, "text": " \u200c "}}, "text is empty"),
        ("post", "/search", {"json": {"image": image, "text": "آش " * 1000}}, "at most 2000 characters"),
        ("post", "/search", {"json": {"image": "not*base64!", "text": QUESTION}}, "not valid base64"),
        ("post", "/search", {"json": {"k": 3}}, "give text, image, or both"),
        ("post", "/search/image", {"data": {"text": "  "}, "files": {"file": ("p.jpg", photo.read_bytes())}},
         "text is empty"),
        ("post", "/search/image", {"data": {"text": QUESTION}, "files": {"file": ("p.txt", b"not a photo")}},
         "cannot read image"),
    ]
    for method, path, kwargs, words in cases:
        response = client.request(method.upper(), path, **kwargs)
        detail = response.json()["detail"]
        assert response.status_code == 422 and isinstance(detail, str) and "\n" not in detail, response.text
        assert words in detail, detail


@pytest.mark.parametrize("extra, words", [
    ((), "give --image PHOTO, --text"),
    (("--text", "آش", "--photo-weight", "0.5"), "--photo-weight weighs a photo against a question"),
    (("--image", "PHOTO", "--text", " \u200c "), "the text query is empty"),
    (("--image", "missing.jpg", "--text", QUESTION), "missing.jpg"),
    (("--image", "PHOTO", "--text", QUESTION, "--photo-weight", "2"), "--photo-weight 2 is invalid"),
])
def test_cli_bad_input_is_one_line_before_the_models_load(setup, capsys, extra, words):
    _, photo, args = setup
    extra = tuple(str(photo) if e == "PHOTO" else e for e in extra)
    code, _, err = cli(capsys, ["--model", "no/such/model"], *extra)  # a model that does not exist: never reached
    errors = [line for line in err.splitlines() if line.startswith("faclip error")]
    assert code == 2 and len(errors) == 1 and words in errors[0], err


# --- evaluation -------------------------------------------------------------------------------------


def test_exact_passage_metrics_count_only_the_one_passage_asked_about():
    passages = np.eye(4, dtype=np.float32)  # passage i points along axis i
    index = build_index(passages, "Flat")
    # query 0 finds passage 0 first; query 1 finds 2 then 1; query 2 asks about passage 3, ranked last
    queries = np.array([[1, 0.5, 0, 0], [0, 0.5, 1, 0], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    metrics = exact_passage_metrics(index, queries, np.array([0, 1, 3]), (1, 2))
    assert metrics == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3, "mrr": (1 + 1 / 2 + 1 / 4) / 3})


def lexical_over(root, texts: list[str]) -> LexicalIndex:
    """The lexical index of a docstore holding `texts` in this order (row i: texts[i], as a test's index rows)."""
    ids = [passage_id_for(t) for t in texts]
    pd.DataFrame({"id": ids, "food_id": ids, "title": ids, "passage_text": texts}).to_parquet(root / "docstore.parquet")
    manifest = build_lexical_index(root / "docstore.parquet", root / "lexical")
    return LexicalIndex(root / "lexical", docstore_sha256=manifest["docstore_sha256"],
                        passage_ids_sha256=manifest["passage_ids_sha256"])


def random_index_and_lexical(tmp_path, seed: int):
    """A Flat index of random unit vectors for PASSAGES (rows in order), their lexical index, and the rng."""
    rng = np.random.default_rng(seed)
    passages = unit(rng.standard_normal((len(PASSAGES), 8))).astype(np.float32)
    return passages, build_index(passages, "Flat"), lexical_over(tmp_path, PASSAGES), rng


def test_evaluate_vqa_halves_are_the_ends_of_the_weight_and_the_sweep_picks_the_best_on_train(tmp_path):
    n = len(PASSAGES)
    passages, index, lexical, _ = random_index_and_lexical(tmp_path, 1)
    target = np.arange(n)

    def queries(seed):  # photos that barely point at their passage; questions that are its first words
        photo = unit(passages + 3.0 * np.random.default_rng(seed).standard_normal(passages.shape)).astype(np.float32)
        return VqaQueries(photo, [p[:25] for p in PASSAGES], target)

    test, train = queries(2), queries(3)
    metrics, sweep = evaluate_vqa(index, lexical, test, train, (1, 5), photo_weight=0.5)
    at = lambda w: evaluate_vqa(index, lexical, test, train, (1, 5), photo_weight=w)[0]["together"]  # noqa: E731
    assert at(1.0) == metrics["photo_only"]
    assert at(0.0) == metrics["question_only"]
    assert metrics["question_only"]["recall@1"] > metrics["photo_only"]["recall@1"]
    assert metrics["chance"] == pytest.approx({"recall@1": 1 / n, "recall@5": 5 / n})
    assert metrics["counts"] == {"test_questions": n, "train_questions": n}
    assert "dense_question_only" not in metrics
    assert sweep["photo_weight"].tolist() == [i / 20 for i in range(21)]
    best = metrics["best_on_train"]
    assert best["mrr"] == sweep["mrr"].max() and best["photo_weight"] < 0.5  # the question weighs more here
    # the sweep's row for a weight is what evaluating the train split at that weight gives
    train_at = evaluate_vqa(index, lexical, train, train, (1,), photo_weight=0.25)[0]["together"]
    row = sweep.set_index("photo_weight").loc[0.25]
    assert (row["recall@1"], row["mrr"]) == pytest.approx((train_at["recall@1"], train_at["mrr"]))


def test_evaluate_text_measures_questions_and_dish_names_as_by_text_ranks_them(tmp_path):
    n = len(PASSAGES)
    _, index, lexical, rng = random_index_and_lexical(tmp_path, 4)
    dish_of = np.array([d for d, (_, texts) in enumerate(DISHES) for _ in texts])  # each passage's dish
    dishes = pd.DataFrame({"food_id": [t for t, _ in DISHES], "title": [t for t, _ in DISHES]})
    noise = lambda texts: unit(rng.standard_normal((len(texts), 8))).astype(np.float32)  # noqa: E731 a useless encoder
    queries = VqaQueries(np.zeros((n, 8), np.float32), [p[:25] for p in PASSAGES], np.arange(n))

    def at(weight):
        return evaluate_text(index, lexical, noise, queries, queries, dishes, dish_of, (1, 5), weight, 10_000)

    metrics, sweep = at(0.0)
    assert set(metrics) == {"text_weight", "questions", "dish_names", "dish_names_in_sentence", "best_on_train",
                            "counts"}
    assert metrics["questions"]["recall@1"] > 0.8  # BM25 alone finds a passage from its first words
    assert metrics["dish_names"]["recall@1"] == 1.0 == metrics["dish_names_in_sentence"]["recall@1"]
    assert at(1.0)[0]["questions"]["recall@1"] < 0.5  # the useless encoder alone
    assert sweep["text_weight"].tolist() == [i / 20 for i in range(21)]
    assert metrics["best_on_train"]["mrr"] == sweep["mrr"].max() and metrics["best_on_train"]["text_weight"] < 0.5
    assert metrics["counts"] == {"dishes": len(DISHES)}


def test_the_stage_adds_vqa_with_questions_and_leaves_it_out_without(tmp_path, tiny_model_dirs, monkeypatch):
    text_dir, _ = tiny_model_dirs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval": {"k": [1, 5]}, "vqa": {"photo_weight": 0.4}}))
    docstore = write_docstore(tmp_path / "docstore.parquet")
    pairs = fake_pairs(docstore)
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    save_image_embeddings(tmp_path / "image_embeddings", fake_embeddings(pairs, dim=128))
    build_passage_index(text_dir, tmp_path / "docstore.parquet", tmp_path / "index", factory="Flat", device="cpu")
    build_lexical_index(tmp_path / "docstore.parquet", tmp_path / "lexical")
    text_of = dict(zip(docstore["id"], docstore["passage_text"]))
    questions = pairs.assign(question=[text_of[p][:20] for p in pairs["passage_id"]])[QUESTIONS_COLUMNS]
    args = ["--index", "index", "--model", str(text_dir), "--base-text", str(text_dir), "--docstore",
            "docstore.parquet", "--pairs", "pairs.csv", "--image-embeddings", "image_embeddings",
            "--metrics", "metrics/eval.json", "--headline", "metrics/headline.json", "--plots", "metrics/eval_plots",
            "--questions", "questions.csv", "--lexical", "lexical"]

    questions.iloc[:0].to_csv(tmp_path / "questions.csv", index=False)  # no question at all: no vqa
    load_stage().main(args)
    assert not {"vqa", "text"} & set(json.loads((tmp_path / "metrics/eval.json").read_text()))
    assert not [key for key in json.loads((tmp_path / "metrics/headline.json").read_text()) if key.startswith("ask_")]
    assert pd.read_csv(tmp_path / "metrics/eval_plots/vqa_recall_at_k.csv").empty

    questions.to_csv(tmp_path / "questions.csv", index=False)
    load_stage().main(args)
    vqa = json.loads((tmp_path / "metrics/eval.json").read_text())["vqa"]
    assert set(vqa) == {"photo_weight", "photo_only", "question_only", "together", "chance", "best_on_train",
                        "dense_question_only", "counts"}
    assert vqa["photo_weight"] == 0.4
    assert vqa["counts"] == {"test_questions": int((questions["split"] == "test").sum()),
                             "train_questions": int((questions["split"] == "train").sum())}
    for half in ("photo_only", "question_only", "together", "dense_question_only"):
        assert set(vqa[half]) == {"recall@1", "recall@5", "mrr"}
    headline = json.loads((tmp_path / "metrics/headline.json").read_text())  # what `dvc exp show` leads with
    assert (headline["ask_recall@1"], headline["ask_mrr"]) == (
        vqa["together"]["recall@1"], vqa["together"]["mrr"])
    # a question that is its passage's first words finds that passage: far above a random photo
    assert vqa["question_only"]["recall@1"] > vqa["photo_only"]["recall@1"]
    assert vqa["chance"]["recall@1"] == pytest.approx(1 / len(docstore), abs=1e-6)
    table = pd.read_csv(tmp_path / "metrics/eval_plots/vqa_recall_at_k.csv")
    assert list(table.columns) == ["k", "photo_only", "question_only", "together", "chance"]
    assert table.set_index("k").loc[5, "together"] == vqa["together"]["recall@5"]
    sweep = pd.read_csv(tmp_path / "metrics/eval_plots/vqa_photo_weight.csv")
    assert list(sweep.columns) == ["photo_weight", "recall@1", "mrr"] and len(sweep) == 21
    text = json.loads((tmp_path / "metrics/eval.json").read_text())["text"]
    assert text["text_weight"] == DEFAULT_TEXT_WEIGHT and set(text["questions"]) == {"recall@1", "recall@5", "mrr"}
    sweep = pd.read_csv(tmp_path / "metrics/eval_plots/text_weight.csv")
    assert list(sweep.columns) == ["text_weight", "recall@1", "mrr"] and len(sweep) == 21
