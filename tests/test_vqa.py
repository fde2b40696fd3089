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
from faclip.encode import CHARS_PER_TOKEN_BOUND, encode_images, encode_texts, load_rgb
from faclip.errors import FaclipError
from faclip.evaluate import evaluate_vqa, exact_passage_metrics, VqaQueries
from faclip.index import build_index, build_passage_index
from faclip.models import load_text_model, load_vision_model
from faclip.params import parse_params
from faclip.prepare import prepare_dataset
from faclip.search import Retriever
from faclip.tables import QUESTIONS_COLUMNS, load_questions
from faclip.text import passage_id_for
from faclip.vqa import DEFAULT_PHOTO_WEIGHT, check_photo_weight, combine_queries

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


def test_the_combined_vector_scores_each_passage_by_the_weighted_cosines():
    rng = np.random.default_rng(0)
    passages, photo, question = (unit(rng.standard_normal((n, 16))).astype(np.float32) for n in (30, 4, 4))
    for weight in (0.0, 0.3, 0.5, 1.0):
        combined = combine_queries(photo, question, weight)  # (4, 16)
        expected = weight * photo @ passages.T + (1 - weight) * question @ passages.T
        np.testing.assert_allclose(combined @ passages.T, expected, atol=1e-6)
    np.testing.assert_array_equal(combine_queries(photo, question, 1), photo)
    np.testing.assert_array_equal(combine_queries(photo, question, 0), question)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "half", True, None])
def test_a_photo_weight_outside_0_to_1_is_refused(bad):
    with pytest.raises(FaclipError, match="photo_weight=.* is invalid; use a number from 0"):
        check_photo_weight(bad)


def test_vqa_params_are_validated_and_default_to_the_shared_weight():
    assert parse_params({}).vqa.photo_weight == DEFAULT_PHOTO_WEIGHT
    assert yaml.safe_load((REPO / "params.yaml").read_text())["vqa"]["photo_weight"] == DEFAULT_PHOTO_WEIGHT
    assert parse_params({"vqa": {"photo_weight": 0.25}}).vqa.photo_weight == 0.25
    with pytest.raises(FaclipError, match=r"vqa.photo_weight=2 is invalid"):
        parse_params({"vqa": {"photo_weight": 2}})
    with pytest.raises(FaclipError, match=r"unknown key 'vqa.weight' \(did you mean 'vqa.photo_weight'\?\)"):
        parse_params({"vqa": {"weight": 0.5}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dirs):
    """A Flat index over the DISHES passages (tiny base text model), a photo, and the Retriever."""
    root = tmp_path_factory.mktemp("vqa")
    text_dir, vision_dir = tiny_model_dirs
    write_docstore(root / "docstore.parquet")
    build_passage_index(text_dir, root / "docstore.parquet", root / "index", factory="Flat", device="cpu")
    photo = root / "photo.jpg"
    draw_dish_image(1, 0, size=96).save(photo, quality=90)
    retriever = Retriever(text_dir, vision_dir, root / "index", root / "docstore.parquet", device="cpu")
    args = ["--model", str(text_dir), "--vision", str(vision_dir), "--index", str(root / "index"),
            "--docstore", str(root / "docstore.parquet")]
    return retriever, photo, args


def brute_force_scores(retriever, photo, question, weight) -> dict[str, float]:
    """passage_id -> weight·cos(photo, p) + (1 − weight)·cos(question, p), from separately loaded encoders."""
    model, tokenizer = load_text_model(retriever.model_dir, device="cpu")
    texts = retriever.passages["passage_text"].tolist()
    passages = encode_texts(model, tokenizer, texts, max_len=retriever.max_len)  # (N, D)
    question_emb = encode_texts(model, tokenizer, [question], max_len=retriever.max_len)[0]
    vision, processor = load_vision_model(retriever.vision_dir, device="cpu")
    from faclip.encode import decode_min_side

    photo_emb = encode_images(vision, processor, [load_rgb(photo, decode_min_side(processor))])[0]
    scores = weight * passages @ photo_emb + (1 - weight) * passages @ question_emb
    return dict(zip(retriever.passages["id"], scores.tolist()))


def test_ask_ranks_every_passage_by_the_weighted_cosines(setup):
    retriever, photo, _ = setup
    n = retriever.index.ntotal
    for weight in (0.3, 0.7):
        expected = brute_force_scores(retriever, photo, QUESTION, weight)
        hits = retriever.ask(photo, QUESTION, k=n, photo_weight=weight)
        assert [h.rank for h in hits] == list(range(1, n + 1))
        assert [h.score for h in hits] == pytest.approx([expected[h.passage_id] for h in hits], abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_ask_at_the_ends_of_the_weight_is_the_photo_or_the_question_alone(setup):
    retriever, photo, _ = setup
    ids = lambda hits: [h.passage_id for h in hits]  # noqa: E731
    assert ids(retriever.ask(photo, QUESTION, k=5, photo_weight=1.0)) == ids(retriever.by_image(photo, k=5))
    assert ids(retriever.ask(photo, QUESTION, k=5, photo_weight=0.0)) == ids(retriever.by_text(QUESTION, k=5))
    together = retriever.ask(photo, QUESTION, k=len(retriever.passages))
    assert ids(together) != ids(retriever.by_image(photo, k=len(retriever.passages)))  # the question counts
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


def cli(args, *extra):
    return subprocess.run([sys.executable, "-m", "faclip", "search", *extra, *args], cwd=REPO, capture_output=True,
                          text=True, encoding="utf-8", timeout=180, env=_env())


def _env():
    from serve_fixtures import faclip_env

    return faclip_env()


def test_python_cli_and_http_give_identical_hits(setup):
    """One code path: Retriever.ask, `search --image --text --json`, POST /search and POST /search/image."""
    from fastapi.testclient import TestClient

    from faclip.serve import create_app

    retriever, photo, args = setup
    expected = [h.to_dict() for h in retriever.ask(photo, QUESTION, k=4, per_dish=2)]
    result = cli(args, "--image", str(photo), "--text", QUESTION, "--k", "4", "--per-dish", "2", "--json")
    assert result.returncode == 0, result.stderr
    by_cli = json.loads(result.stdout)
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
    (("--image", "photo.jpg", "--text", " \u200c "), "the text query is empty"),
    (("--image", "missing.jpg", "--text", QUESTION), "missing.jpg"),
    (("--image", "PHOTO", "--text", QUESTION, "--photo-weight", "2"), "photo_weight=2.0 is invalid"),
])
def test_cli_bad_input_is_one_line_before_the_models_load(setup, extra, words):
    _, photo, args = setup
    extra = tuple(str(photo) if e == "PHOTO" else e for e in extra)
    result = cli(["--model", "no/such/model"], *extra)  # a model folder that does not exist: never reached
    errors = [line for line in result.stderr.splitlines() if line.startswith("faclip error")]
    assert result.returncode == 2 and len(errors) == 1 and words in errors[0], result.stderr


# --- evaluation -------------------------------------------------------------------------------------


def test_exact_passage_metrics_count_only_the_one_passage_asked_about():
    passages = np.eye(4, dtype=np.float32)  # passage i points along axis i
    index = build_index(passages, "Flat")
    # query 0 finds passage 0 first; query 1 finds 2 then 1; query 2 asks about passage 3, ranked last
    queries = np.array([[1, 0.5, 0, 0], [0, 0.5, 1, 0], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    metrics = exact_passage_metrics(index, queries, np.array([0, 1, 3]), (1, 2))
    assert metrics == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3, "mrr": (1 + 1 / 2 + 1 / 4) / 3})


def test_evaluate_vqa_halves_are_the_ends_of_the_weight_and_the_sweep_picks_the_best_on_train():
    rng = np.random.default_rng(1)
    passages = unit(rng.standard_normal((12, 8))).astype(np.float32)
    index = build_index(passages, "Flat")
    target = np.arange(12)

    def queries(noise_photo, noise_question, seed):
        r = np.random.default_rng(seed)
        photo = unit(passages + noise_photo * r.standard_normal(passages.shape)).astype(np.float32)
        question = unit(passages + noise_question * r.standard_normal(passages.shape)).astype(np.float32)
        return VqaQueries(photo, [f"q{i}" for i in target], target), question

    test, test_q = queries(2.0, 0.1, 2)  # here the question is the better half
    train, train_q = queries(2.0, 0.1, 3)
    metrics, sweep = evaluate_vqa(index, test, test_q, train, train_q, (1, 5), photo_weight=0.5)
    ends = evaluate_vqa(index, test, test_q, train, train_q, (1, 5), photo_weight=1.0)[0]["together"]
    assert ends == metrics["photo_only"]
    assert evaluate_vqa(index, test, test_q, train, train_q, (1, 5), photo_weight=0.0)[0]["together"] == \
        metrics["question_only"]
    assert metrics["chance"] == pytest.approx({"recall@1": 1 / 12, "recall@5": 5 / 12})
    assert metrics["counts"] == {"test_questions": 12, "train_questions": 12}
    assert sweep["photo_weight"].tolist() == [i / 20 for i in range(21)]
    best = metrics["best_on_train"]
    assert best["mrr"] == sweep["mrr"].max() and best["photo_weight"] < 0.5  # the question weighs more here


def test_the_stage_adds_vqa_with_questions_and_leaves_it_out_without(tmp_path, tiny_model_dirs, monkeypatch):
    text_dir, _ = tiny_model_dirs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval": {"k": [1, 5]}, "vqa": {"photo_weight": 0.4}}))
    docstore = write_docstore(tmp_path / "docstore.parquet")
    pairs = fake_pairs(docstore)
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    save_image_embeddings(tmp_path / "image_embeddings", fake_embeddings(pairs, dim=128))
    build_passage_index(text_dir, tmp_path / "docstore.parquet", tmp_path / "index", factory="Flat", device="cpu")
    text_of = dict(zip(docstore["id"], docstore["passage_text"]))
    questions = pairs.assign(question=[text_of[p][:20] for p in pairs["passage_id"]])[QUESTIONS_COLUMNS]
    args = ["--index", "index", "--model", str(text_dir), "--base-text", str(text_dir), "--docstore",
            "docstore.parquet", "--pairs", "pairs.csv", "--image-embeddings", "image_embeddings",
            "--metrics", "metrics/eval.json", "--plots", "metrics/eval_plots", "--questions", "questions.csv"]

    questions.iloc[:0].to_csv(tmp_path / "questions.csv", index=False)  # no question at all: no vqa
    load_stage().main(args)
    assert "vqa" not in json.loads((tmp_path / "metrics/eval.json").read_text())
    assert pd.read_csv(tmp_path / "metrics/eval_plots/vqa_recall_at_k.csv").empty

    questions.to_csv(tmp_path / "questions.csv", index=False)
    load_stage().main(args)
    vqa = json.loads((tmp_path / "metrics/eval.json").read_text())["vqa"]
    assert set(vqa) == {"photo_weight", "photo_only", "question_only", "together", "chance", "best_on_train",
                        "counts"}
    assert vqa["photo_weight"] == 0.4
    assert vqa["counts"] == {"test_questions": int((questions["split"] == "test").sum()),
                             "train_questions": int((questions["split"] == "train").sum())}
    for half in ("photo_only", "question_only", "together"):
        assert set(vqa[half]) == {"recall@1", "recall@5", "mrr"}
    # a question that is its passage's first words finds that passage: far above a random photo
    assert vqa["question_only"]["recall@1"] > vqa["photo_only"]["recall@1"]
    assert vqa["chance"]["recall@1"] == pytest.approx(1 / len(docstore), abs=1e-6)
    table = pd.read_csv(tmp_path / "metrics/eval_plots/vqa_recall_at_k.csv")
    assert list(table.columns) == ["k", "photo_only", "question_only", "together", "chance"]
    assert table.set_index("k").loc[5, "together"] == vqa["together"]["recall@5"]
    sweep = pd.read_csv(tmp_path / "metrics/eval_plots/vqa_photo_weight.csv")
    assert list(sweep.columns) == ["photo_weight", "recall@1", "mrr"] and len(sweep) == 21
