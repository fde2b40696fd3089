"""The evaluate stage: 1.0 for a perfect encoder, chance for a random one, relevance by dish, the outputs."""

import dataclasses
import hashlib
import json
import logging

import numpy as np
import pandas as pd
import pytest
import yaml
from test_search import write_docstore

from faclip.embed import ImageEmbeddings, save_image_embeddings
from faclip.errors import FaclipError
from faclip.evaluate import (chance_metrics, dish_centroids, dish_titles, evaluate_encoder, gain,
                             per_dish_recall_at_1, zero_shot)
from faclip.index import build_index, build_passage_index
from faclip.lexical import build_lexical_index
from faclip.models import check_same_vision
from faclip.testset import TestSet, load_test_set

KS = (1, 5, 10)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_test_set(dishes, image_emb, image_dishes, passage_dish) -> TestSet:
    """A TestSet from a dense (images x dishes) bool matrix of the dishes each image shows."""
    shown_image, shown_dish = np.nonzero(np.asarray(image_dishes, dtype=bool))
    return TestSet(dishes=list(dishes), image_sha256=[f"{i:064x}" for i in range(len(image_emb))],
                   image_emb=image_emb, shown_image=shown_image, shown_dish=shown_dish,
                   passage_dish=np.asarray(passage_dish))


def synthetic(n_dishes: int, passages_per_dish: int, images_per_dish: int, dim: int, seed: int = 0):
    """A TestSet of one-dish images, and the passage dish of each row: vectors are filled in by each test."""
    rng = np.random.default_rng(seed)
    passage_dish = np.repeat(np.arange(n_dishes), passages_per_dish)
    image_dish = np.repeat(np.arange(n_dishes), images_per_dish)
    test = make_test_set([f"dish{d}" for d in range(n_dishes)], unit(rng.standard_normal((len(image_dish), dim))),
                    np.eye(n_dishes, dtype=bool)[image_dish], passage_dish)
    return test, image_dish, rng


def test_a_perfect_encoder_scores_one_everywhere():
    test, image_dish, _ = synthetic(n_dishes=6, passages_per_dish=3, images_per_dish=4, dim=16)
    directions = np.eye(16, dtype=np.float32)[:6]  # one direction per dish: same-dish cosine 1, others 0
    test = dataclasses.replace(test, image_emb=directions[image_dish])
    text_emb = directions[test.passage_dish]
    metrics, top1 = evaluate_encoder(test, text_emb, KS, index=build_index(text_emb, "Flat"))
    for direction in ("image_to_text", "text_to_image"):
        assert all(value == pytest.approx(1.0) for value in metrics[direction].values()), metrics[direction]
    assert set(metrics["image_to_text"]) == {"recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"}
    assert set(metrics["text_to_image"]) == {"recall@1", "recall@5", "recall@10", "mrr"}
    assert top1.shape == (len(image_dish),) and top1.all()


def test_a_random_encoder_scores_chance():
    test, _, rng = synthetic(n_dishes=10, passages_per_dish=20, images_per_dish=40, dim=64)
    text_emb = unit(rng.standard_normal((len(test.passage_dish), 64)))
    metrics, _ = evaluate_encoder(test, text_emb, KS, index=build_index(text_emb, "Flat"))
    chance = chance_metrics(test, KS)
    assert chance["image_to_text"]["recall@1"] == pytest.approx(0.1)  # 20 of 200 passages are relevant
    for direction in ("image_to_text", "text_to_image"):
        for k in KS:  # 400 image / 200 passage queries: a 3-sigma band is about +-0.065
            assert abs(metrics[direction][f"recall@{k}"] - chance[direction][f"recall@{k}"]) < 0.07, (direction, k)


def test_the_index_path_agrees_with_exact_search():
    test, _, rng = synthetic(n_dishes=5, passages_per_dish=4, images_per_dish=6, dim=32, seed=3)
    text_emb = unit(rng.standard_normal((20, 32)))
    exact, _ = evaluate_encoder(test, text_emb, KS)
    hnsw, _ = evaluate_encoder(test, text_emb, KS, index=build_index(text_emb, "HNSW16"))
    assert hnsw == exact


@pytest.mark.parametrize("module", ["faclip.index", "faclip.evaluate"])
def test_queries_searched_in_chunks_give_the_same_result(monkeypatch, module):
    import importlib

    test, _, rng = synthetic(n_dishes=5, passages_per_dish=4, images_per_dish=6, dim=32, seed=4)
    text_emb = unit(rng.standard_normal((20, 32)))
    whole, whole_top1 = evaluate_encoder(test, text_emb, KS)
    monkeypatch.setattr(importlib.import_module(module), "QUERY_CHUNK", 7)  # 30 images, 20 passages: partial chunks
    chunked, chunked_top1 = evaluate_encoder(test, text_emb, KS)
    assert chunked == whole and (chunked_top1 == whole_top1).all()


def test_gain_is_finetuned_minus_base_key_by_key():
    got = gain({"a": {"recall@1": 0.5, "mrr": 0.25}}, {"a": {"recall@1": 0.125, "mrr": 0.5}})
    assert got == {"a": {"recall@1": 0.375, "mrr": -0.25}}


def test_per_dish_recall_counts_an_image_for_each_of_its_dishes():
    test = make_test_set(["a", "b", "c"], np.zeros((3, 2), np.float32), [[1, 0, 0], [1, 1, 0], [0, 1, 0]], [0, 1, 2])
    hits = {"finetuned": np.array([True, False, True]), "base": np.array([False, True, False])}
    table = per_dish_recall_at_1(test, hits)
    assert table["food_id"].tolist() == ["a", "b"]  # c has no test image
    assert table["test_images"].tolist() == [2, 2]
    assert table["finetuned_recall@1"].tolist() == [0.5, 0.5] and table["base_recall@1"].tolist() == [0.5, 0.5]


# --- zero-shot classification ------------------------------------------------------------------


def zero_shot_case():
    """4 dishes with titles e3, e0, e1, e2 (rows in another order than the dishes); dish 3 has no test photo.

    photo 0 (e0) shows dish 0; photo 1, halfway between e0 and e1, shows dish 1 (a tie with dish 0);
    photo 2 (e2) shows dishes 1 and 2.
    """
    e = np.eye(4, dtype=np.float32)
    images = np.stack([e[0], unit(e[0] + e[1]), e[2]])
    test = make_test_set(["d0", "d1", "d2", "d3"], images, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]],
                         passage_dish=[0, 1, 2, 3])
    return test, e[[3, 0, 1, 2]], np.array([3, 0, 1, 2])


def test_zero_shot_counts_a_tie_against_the_photo_and_skips_a_dish_with_no_photo():
    test, title_emb, title_dish = zero_shot_case()
    got = zero_shot(test, title_emb, title_dish)
    # photo 1 ties its dish with dish 0: rank 2, wrong at 1, right at 5; photo 2 is right (either dish).
    assert got["acc@1"] == pytest.approx(2 / 3) and got["acc@5"] == 1.0
    # per dish: d0 1/1, d1 1/2 (photo 1 wrong, photo 2 right), d2 1/1; d3 has no photo and is not averaged.
    assert got["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_zero_shot_in_small_score_blocks_gives_the_same_result(monkeypatch):
    import faclip.evaluate

    test, _, rng = synthetic(n_dishes=7, passages_per_dish=1, images_per_dish=5, dim=16, seed=5)
    title_emb, title_dish = unit(rng.standard_normal((7, 16))), np.arange(7)
    whole = zero_shot(test, title_emb, title_dish)
    monkeypatch.setattr(faclip.evaluate, "SCORE_BUDGET", 10)  # one photo per block
    assert zero_shot(test, title_emb, title_dish) == whole
    assert 0 < whole["acc@1"] < whole["acc@5"] < 1


def test_dish_titles_take_each_dish_first_passage_title_in_index_order():
    passages = pd.DataFrame({"food_id": ["b", "a", "b"], "title": ["B one", "A", "B two"]})
    titles, title_dish = dish_titles(passages, ["a", "b", "c"])
    assert titles == ["A", "B one"] and title_dish.tolist() == [0, 1]


# --- the ceiling ---------------------------------------------------------------------------------


def test_centroids_average_each_dish_train_photos_once():
    e = np.eye(3, dtype=np.float32)
    embeddings = ImageEmbeddings(["a", "b", "c", "d"], np.stack([e[0], e[1], e[2], e[2]]), "v" * 64)
    pairs = pd.DataFrame({
        "image_sha256": ["a", "a", "a", "b", "c", "d"],  # photo a pairs with two passages of x and one of y
        "food_id": ["x", "x", "y", "x", "z", "x"],
        "split": ["train", "train", "train", "train", "test", "test"],  # c and d are test photos: not used
    })
    centroids, has = dish_centroids(pairs, embeddings, ["x", "y", "z"])
    assert has.tolist() == [True, True, False]
    np.testing.assert_allclose(centroids[0], unit(e[0] + e[1]))  # a once, b once; d is a test photo
    np.testing.assert_allclose(centroids[1], e[0])
    assert not centroids[2].any()


def test_the_ceiling_never_retrieves_a_dish_without_a_centroid():
    e = np.eye(3, dtype=np.float32)
    # dishes 0, 1, 2 with one passage each; photo 0 shows dish 0, photo 1 shows dish 2, which has no centroid.
    test = make_test_set(["d0", "d1", "d2"], np.stack([e[0], e[2]]), [[1, 0, 0], [0, 0, 1]], [0, 1, 2])
    rows = np.array([0, 1])
    metrics, top1 = evaluate_encoder(test, e[[0, 1]], KS, rows=rows)
    assert top1.tolist() == [True, False]
    assert metrics["image_to_text"]["recall@10"] == 0.5 and metrics["image_to_text"]["mrr"] == 0.5
    # passage 2 (dish 2) is a query with no vector: it finds nothing; passage 0 finds photo 0 first.
    assert metrics["text_to_image"] == {"recall@1": 0.5, "recall@5": 0.5, "recall@10": 0.5, "mrr": 0.5}
    everything, _ = evaluate_encoder(test, e, KS)  # with dish 2 at its own place, both photos are found
    assert everything["image_to_text"]["recall@1"] == 1.0 and everything["text_to_image"]["recall@1"] == 1.0
    nothing, top1 = evaluate_encoder(test, np.zeros((0, 3), np.float32), KS, rows=np.array([], dtype=int))
    assert not top1.any() and all(v == 0 for d in nothing.values() for v in d.values())  # no train photo at all


# --- reading the test split ----------------------------------------------------------------------


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def fake_pairs(docstore: pd.DataFrame, images_per_dish: int = 3) -> pd.DataFrame:
    """Each dish: images_per_dish images, each paired with every passage of the dish; the last is train."""
    rows = []
    for d, (food_id, group) in enumerate(docstore.groupby("food_id", sort=True)):
        for i in range(images_per_dish):
            split = "train" if i == images_per_dish - 1 else "test"
            for passage_id in group["id"]:
                rows.append({"image_path": f"dish{d}/{i}.jpg", "image_sha256": sha(f"{d}/{i}"),
                             "passage_id": passage_id, "food_id": food_id, "split": split})
    return pd.DataFrame(rows)


def fake_embeddings(pairs: pd.DataFrame, dim: int, seed: int = 0, vision_sha256: str = "v" * 64) -> ImageEmbeddings:
    shas = sorted(set(pairs["image_sha256"]))
    vectors = unit(np.random.default_rng(seed).standard_normal((len(shas), dim)))
    return ImageEmbeddings(shas, vectors, vision_sha256)


def test_load_test_set_takes_test_images_and_every_dish_they_show(tmp_path, caplog):
    docstore = write_docstore(tmp_path / "docstore.parquet")
    pairs = fake_pairs(docstore)
    shared = pairs[pairs["split"] == "test"].iloc[0]  # pair the first test image with a second dish too
    other = docstore[docstore["food_id"] != shared["food_id"]].iloc[0]
    orphan = {"image_path": "x.jpg", "image_sha256": sha("orphan"), "passage_id": other["id"],
              "food_id": "no such dish", "split": "test"}  # filed under a dish with no docstore passage
    pairs = pd.concat([pairs, pd.DataFrame([{**shared, "passage_id": other["id"], "food_id": other["food_id"]},
                                            orphan])])
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    with caplog.at_level(logging.WARNING):
        test = load_test_set(pairs, docstore, fake_embeddings(pairs, dim=8))
    assert "1 test images left out" in caplog.text
    assert len(test.image_sha256) == 2 * docstore["food_id"].nunique()  # 2 test images per dish, not the orphan
    assert test.image_sha256 == sorted(test.image_sha256) and sha("orphan") not in test.image_sha256
    row = test.image_sha256.index(shared["image_sha256"])
    shown = {test.dishes[c] for c in range(len(test.dishes)) if test.shows(row, c)}
    assert shown == {shared["food_id"], other["food_id"]}
    assert len(test.shown_image) == len(test.image_sha256) + 1
    assert [test.dishes[d] for d in test.passage_dish] == docstore["food_id"].tolist()


def test_no_test_images_is_an_empty_test_set(tmp_path):
    docstore = write_docstore(tmp_path / "docstore.parquet")
    pairs = fake_pairs(docstore).assign(split="train")
    test = load_test_set(pairs, docstore, fake_embeddings(pairs, dim=8))
    assert test.image_sha256 == [] and test.image_emb.shape == (0, 8) and not test.shows(0, 0)


def test_image_embeddings_from_another_vision_model_are_refused(tmp_path):
    (tmp_path / "faclip.json").write_text(json.dumps({"vision_sha256": "a" * 64}))
    check_same_vision(tmp_path, "a" * 64, "the image embeddings")  # same: fine
    with pytest.raises(FaclipError, match="image embeddings come from another vision model.*dvc repro"):
        check_same_vision(tmp_path, "b" * 64, "the image embeddings")


# --- the stage script ----------------------------------------------------------------------------


@pytest.fixture
def stage_inputs(tmp_path, tiny_model_dirs, monkeypatch):
    """Docstore, pairs, image embeddings and a Flat index (the tiny base text model as 'finetuned')."""
    text_dir, _ = tiny_model_dirs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"eval": {"k": [3, 1]}}))
    docstore = write_docstore(tmp_path / "docstore.parquet")
    pairs = fake_pairs(docstore)
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    save_image_embeddings(tmp_path / "image_embeddings", fake_embeddings(pairs, dim=128))
    build_passage_index(text_dir, tmp_path / "docstore.parquet", tmp_path / "index", factory="Flat", device="cpu")
    build_lexical_index(tmp_path / "docstore.parquet", tmp_path / "lexical")
    return ["--index", "index", "--model", str(text_dir), "--base-text", str(text_dir), "--docstore",
            "docstore.parquet", "--pairs", "pairs.csv", "--image-embeddings", "image_embeddings",
            "--metrics", "metrics/eval.json", "--headline", "metrics/headline.json", "--plots", "metrics/eval_plots"]


def load_stage():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_writes_nested_metrics_and_plot_tables(stage_inputs, tmp_path):
    load_stage().main(stage_inputs)
    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert set(metrics) == {"finetuned", "base", "ceiling", "gain", "chance", "zero_shot", "index", "counts"}
    assert set(metrics["finetuned"]["image_to_text"]) == {"recall@1", "recall@3", "mrr", "ndcg@10"}
    assert set(metrics["base"]["text_to_image"]) == {"recall@1", "recall@3", "mrr"}
    # 'finetuned' and 'base' are the same model here: the index path must equal exact search, gain 0.
    assert metrics["finetuned"] == metrics["base"]
    assert all(v == 0 for d in metrics["gain"].values() for v in d.values())
    # The headline (what `dvc exp show` leads with) repeats the figures experiments are compared on.
    image_to_text, share = metrics["finetuned"]["image_to_text"], next(
        (k, v) for k, v in metrics["ceiling"].items() if k.startswith("finetuned_share_of_"))
    # In the order it is read (the file's order is `dvc exp show`'s column order): recall@k by k, then the rest.
    headline = json.loads((tmp_path / "metrics/headline.json").read_text())
    assert list(headline.items()) == [
        ("recall@1", image_to_text["recall@1"]), ("recall@3", image_to_text["recall@3"]), ("mrr", image_to_text["mrr"]),
        (share[0].replace("finetuned_share_of_recall", "ceiling_share"), share[1]),
        ("zero_shot@1", metrics["zero_shot"]["finetuned"]["acc@1"])]
    assert metrics["counts"] == {"test_images": 8, "passages": 8, "test_dishes": 4, "dishes": 4,
                                 "dishes_without_train_images": 0}
    ceiling = metrics["ceiling"]
    assert set(ceiling) == {"image_to_text", "text_to_image", "finetuned_share_of_recall@1"}
    assert set(ceiling["image_to_text"]) == set(metrics["finetuned"]["image_to_text"])
    assert ceiling["finetuned_share_of_recall@1"] == pytest.approx(
        metrics["finetuned"]["image_to_text"]["recall@1"] / ceiling["image_to_text"]["recall@1"], abs=1e-5)
    assert metrics["zero_shot"]["finetuned"] == metrics["zero_shot"]["base"]
    assert set(metrics["zero_shot"]["base"]) == {"acc@1", "acc@5", "mean_per_class_recall"}
    assert metrics["zero_shot"]["base"]["acc@5"] == 1.0  # 4 dishes: every photo's dish is in the top 5
    assert metrics["zero_shot"]["chance"] == {"acc@1": 0.25, "acc@5": 1.0}  # one dish of 4 per photo
    assert metrics["index"] == {"recall_vs_exact@10": 1.0}  # a Flat index is exact
    recall = pd.read_csv(tmp_path / "metrics/eval_plots/recall_at_k.csv")
    assert list(recall.columns) == ["k", "finetuned", "base", "ceiling"]
    assert recall["k"].tolist() == [1, 3]
    assert recall["finetuned"].iloc[0] == metrics["finetuned"]["image_to_text"]["recall@1"]
    assert recall["base"].iloc[1] == metrics["base"]["image_to_text"]["recall@3"]
    assert recall["ceiling"].iloc[1] == ceiling["image_to_text"]["recall@3"]
    per_dish = pd.read_csv(tmp_path / "metrics/eval_plots/per_dish.csv")
    assert list(per_dish.columns) == ["food_id", "test_images", "finetuned_recall@1", "base_recall@1",
                                      "ceiling_recall@1"]
    assert len(per_dish) == 4 and (per_dish["test_images"] == 2).all()
    # per-dish recall@1 averages back to the overall one (every image shows one dish, 2 per dish)
    assert per_dish["finetuned_recall@1"].mean() == pytest.approx(metrics["finetuned"]["image_to_text"]["recall@1"])


def test_stage_ceiling_leaves_out_a_dish_with_no_train_photo(stage_inputs, tmp_path, caplog):
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    dish = sorted(pairs["food_id"].unique())[0]
    pairs.loc[pairs["food_id"] == dish, "split"] = "test"  # its one train photo joins its test photos
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    with caplog.at_level(logging.WARNING):
        load_stage().main(stage_inputs)
    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert metrics["counts"]["dishes_without_train_images"] == 1 and metrics["counts"]["test_images"] == 9
    assert "1 dishes have no train image" in caplog.text
    per_dish = pd.read_csv(tmp_path / "metrics/eval_plots/per_dish.csv").set_index("food_id")
    assert per_dish.loc[dish, "ceiling_recall@1"] == 0  # its passages are never retrieved by the ceiling


def test_stage_refuses_an_index_built_from_another_docstore(stage_inputs, tmp_path):
    docstore = pd.read_parquet(tmp_path / "docstore.parquet")
    docstore.loc[0, "passage_text"] += " (ویرایش)"
    docstore.to_parquet(tmp_path / "docstore.parquet", index=False)
    with pytest.raises(FaclipError, match="another docstore.*dvc repro index"):
        load_stage().main(stage_inputs)
    assert not (tmp_path / "metrics").exists()


def test_stage_with_no_test_images_is_a_one_line_error(stage_inputs, tmp_path):
    pairs = pd.read_csv(tmp_path / "pairs.csv").assign(split="train")
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    with pytest.raises(FaclipError, match="no test-split images"):
        load_stage().main(stage_inputs)
