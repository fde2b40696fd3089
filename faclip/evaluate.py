"""Held-out quality of the fine-tuned text encoder on the test split, against the untrained base and
against the ceiling of locked-image tuning; zero-shot dish classification; what the index costs.

Queries are the test-split images (their cached vectors: no image is decoded here) and the passages of
the dishes those images show. Relevance is by dish: for an image, every passage of its dish (an image
paired with several dishes has all of them); for a passage, every test image of its dish.
- image_to_text: each test image searches all docstore passages, through the FAISS index for the
  fine-tuned model (the deployed path) and exactly for the base; recall@k, mrr, ndcg@10.
- text_to_image: each passage of a test dish searches the test images exactly; recall@k, mrr.
- ceiling: the same, with every passage placed at its dish's centroid of train-split image vectors
  (what a text encoder that learnt each dish perfectly from the train photos would score against
  these frozen image vectors). A dish with no train image has no centroid: its passages are left out
  of the ceiling's index (its test photos find none of them; they are nobody's distractor) and, as
  queries, find nothing.
- zero_shot: each test image against every dish's title (encoded as passages are); acc@k counts an
  image right when any dish it shows ranks within k, a tie counting against it; mean_per_class_recall
  averages acc@1 over the dishes with test images (an image counts for each dish it shows).
- index.recall_vs_exact@10: the share of the exact top 10 that the configured index returns.
- vqa (when the test split has questions): each (test photo, question) ranks the passages by the photo
  alone (the index), the question alone (BM25, the lexical index) and the two together as `Retriever.ask`
  does (`faclip.vqa`, weight vqa.photo_weight); the relevant item is the exact passage the question was
  written for. recall@k, mrr, chance; dense_question_only: the question through the fine-tuned text encoder
  and the index; best_on_train: the photo weight that scores best (mrr) over the train split's questions.
- text (when the test split has questions): text queries as `Retriever.by_text` ranks them (the text
  encoder fused with BM25, weight vqa.text_weight): the test questions alone (the exact passage); each
  dish's title alone and inside a sentence (`DISH_SENTENCE`), any passage of the dish counting;
  best_on_train: the text weight that scores best (mrr) over the train split's questions.
The test set is `faclip.testset`'s (the one train reports recall on). Rankings come from FAISS (exact
search = a Flat inner-product index), so exact score ties keep FAISS's order; mrr counts ranks up to
MAX_DEPTH (all ranks whenever there are no more items than that). Memory grows with the pairs, never
with (test images x dishes): queries are searched QUERY_CHUNK at a time and only per-query figures
are kept; zero-shot scores at most SCORE_BUDGET (image, dish) cells at a time.
"""

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import pandas as pd

from faclip.embed import ImageEmbeddings, load_image_embeddings
from faclip.errors import FaclipError
from faclip.index import build_index, load_index, recall_vs_exact, search, search_hits
from faclip.metrics import (NDCG_AT, chance_recall_at_k, mean_metrics, query_metrics,
                            rank_of_best_relevant)
from faclip.models import check_same_vision, embed_passages, load_text_model, text_max_len, trained_max_len
from faclip.tables import load_docstore, load_pairs, load_questions
from faclip.testset import TestSet, image_to_text_hits, load_test_set
from faclip.text import query_text
from faclip.encode import CHARS_PER_TOKEN_BOUND, encode_texts, pick_device
from faclip.lexical import LexicalIndex, top_k
from faclip.vqa import CANDIDATES, DEFAULT_PHOTO_WEIGHT, DEFAULT_TEXT_WEIGHT, fuse, together_scores

logger = logging.getLogger(__name__)

MAX_DEPTH = 1000  # ranking depth per query: bounds memory at (chunk x 1000) for large docstores
QUERY_CHUNK = 1024  # queries searched at once: their (chunk, depth) hits are all that is held
SCORE_BUDGET = 2**22  # (image, dish) scores held at once by zero-shot: 16 MiB of float32
ZERO_SHOT_KS = (1, 5)
RECALL_VS_EXACT_K = 10
VQA_WEIGHTS = tuple(i / 20 for i in range(21))  # the weights swept on the train split: 0, 0.05, ..., 1
DISH_SENTENCE = "درباره {} چه می‌دانی؟"  # "what do you know about {dish}?": a dish's name inside a question


def _scored(n_queries: int, hits_of: Callable[[int, int], np.ndarray], n_relevant: np.ndarray,
            ks: tuple[int, ...], ndcg: bool = True) -> tuple[dict[str, float], np.ndarray]:
    """Metrics over queries scored QUERY_CHUNK at a time (`hits_of(start, stop)` -> (chunk, K) hits), and
    whether each query's first result is relevant (Q,)."""
    parts, top1 = [], []
    for start in range(0, n_queries, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, n_queries)
        hits = hits_of(start, stop)  # (chunk, K)
        parts.append(query_metrics(hits, n_relevant[start:stop], ks, ndcg=ndcg))
        top1.append(hits[:, 0] if hits.shape[1] else np.zeros(stop - start, dtype=bool))
    if not parts:
        raise ValueError("no queries to score")
    per_query = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return mean_metrics(per_query), np.concatenate(top1)


def evaluate_encoder(test: TestSet, text_emb: np.ndarray, ks: tuple[int, ...], index: faiss.Index | None = None,
                     rows: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Both directions for one text encoder: ({"image_to_text": …, "text_to_image": …}, image top-1 hit (M,)).

    `text_emb` (R, D) holds the passages `rows` (default: every passage, in index order); `index` (built
    over the same rows) serves the image->passage search when given, else it is exact. A passage not in
    `rows` is never retrieved, and as a query it finds nothing.
    """
    n_passages = len(test.passage_dish)
    rows = np.arange(n_passages) if rows is None else np.asarray(rows, dtype=np.int64)
    assert len(rows) == len(text_emb), "text_emb must hold one vector per row"
    # image -> passage: relevant = the passages filed under any dish the image shows.
    index = index if index is not None else build_index(text_emb, "Flat")
    depth = max(MAX_DEPTH, *ks, NDCG_AT)

    def image_hits(start: int, stop: int) -> np.ndarray:
        if index.ntotal == 0:  # no passage has a vector (a ceiling without a single train photo): no hits
            return np.zeros((stop - start, 0), dtype=bool)
        return image_to_text_hits(test, index, depth, slice(start, stop), rows)  # (chunk, K)

    image_to_text, image_top1 = _scored(len(test.image_sha256), image_hits, test.relevant_passages, ks)

    # passage -> image: the passages of dishes that have test images, over the test images (exact).
    images_per_dish = test.images_per_dish  # (C,)
    queries = np.flatnonzero(images_per_dish[test.passage_dish] > 0)  # (P,) passage rows
    query_dish = test.passage_dish[queries]
    position = np.full(n_passages, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))  # where each passage's vector is in text_emb (-1: none)
    image_index = build_index(test.image_emb, "Flat")
    text_depth = max(MAX_DEPTH, *ks)

    def text_hits(start: int, stop: int) -> np.ndarray:
        at = position[queries[start:stop]]
        found = at >= 0
        dish = query_dish[start:stop][found]
        hits = np.zeros((stop - start, min(text_depth, image_index.ntotal)), dtype=bool)  # (chunk, K)
        hits[found] = search_hits(image_index, text_emb[at[found]], text_depth, lambda q, i: test.shows(i, dish[q]))
        return hits

    text_to_image, _ = _scored(len(queries), text_hits, images_per_dish[query_dish], ks, ndcg=False)
    return {"image_to_text": image_to_text, "text_to_image": text_to_image}, image_top1


def recall_per_dish(test: TestSet, correct: np.ndarray) -> np.ndarray:
    """Share of each dish's test images that `correct` (M,) marks right (C,); an image counts for each dish
    it shows; NaN for a dish with no test image."""
    right = np.bincount(test.shown_dish, weights=np.asarray(correct, dtype=np.float64)[test.shown_image],
                        minlength=len(test.dishes))  # (C,)
    with np.errstate(invalid="ignore"):
        return right / test.images_per_dish


def zero_shot(test: TestSet, title_emb: np.ndarray, title_dish: np.ndarray) -> dict[str, float]:
    """acc@1, acc@5 and mean_per_class_recall of each test image against every dish title.

    `title_emb` (T, D): one vector per dish title; `title_dish` (T,): its dish index. An image is right at
    k when any dish it shows ranks within k (`rank_of_best_relevant`: a tie counts against the image).
    """
    n_images = len(test.image_sha256)
    dish_class = np.full(len(test.dishes), -1, dtype=np.int64)
    dish_class[title_dish] = np.arange(len(title_dish))
    order = np.argsort(test.shown_image, kind="stable")
    shown_image, shown_class = test.shown_image[order], dish_class[test.shown_dish[order]]  # (S,)
    assert (shown_class >= 0).all(), "every dish a test image shows has passages, hence a title"
    chunk = max(1, SCORE_BUDGET // max(1, len(title_dish)))
    ranks = []
    for start in range(0, n_images, chunk):
        stop = min(start + chunk, n_images)
        lo, hi = np.searchsorted(shown_image, [start, stop])
        scores = test.image_emb[start:stop] @ title_emb.T  # (chunk, T)
        ranks.append(rank_of_best_relevant(scores, shown_image[lo:hi] - start, shown_class[lo:hi]))
    rank = np.concatenate(ranks)  # (M,)
    per_dish = recall_per_dish(test, rank == 1)
    return {**{f"acc@{k}": float(np.mean(rank <= k)) for k in ZERO_SHOT_KS},
            "mean_per_class_recall": float(per_dish[test.images_per_dish > 0].mean())}


def zero_shot_chance(test: TestSet, n_classes: int) -> dict[str, float]:
    """Expected acc@k of guessing dishes at random: what 'no better than chance' means for zero-shot."""
    dishes_per_image = np.bincount(test.shown_image, minlength=len(test.image_sha256))  # (M,)
    return {f"acc@{k}": chance_recall_at_k(dishes_per_image, n_classes, k) for k in ZERO_SHOT_KS}


def dish_titles(passages: pd.DataFrame, dishes: list[str]) -> tuple[list[str], np.ndarray]:
    """Each dish's title (that of its first passage in index order) and its dish index, dishes in index order."""
    first = passages.drop_duplicates("food_id")
    dish_idx = {food_id: i for i, food_id in enumerate(dishes)}
    title_dish = np.array([dish_idx[f] for f in first["food_id"]], dtype=np.int64)
    order = np.argsort(title_dish)
    return [first["title"].iloc[i] for i in order], title_dish[order]


def dish_centroids(pairs: pd.DataFrame, embeddings: ImageEmbeddings,
                   dishes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each dish's centroid of its train-split image vectors, L2-normalised (C, D), and whether it has one (C,).

    An image counts once per dish it is paired with, however many passages it pairs with.
    """
    dish_idx = {food_id: i for i, food_id in enumerate(dishes)}
    train = pairs.loc[pairs["split"] == "train", ["image_sha256", "food_id"]].drop_duplicates()
    train = train[train["food_id"].isin(dish_idx)]
    dish = train["food_id"].map(dish_idx).to_numpy(dtype=np.int64)  # (S,)
    shas = train["image_sha256"].tolist()
    sums = np.zeros((len(dishes), embeddings.dim), dtype=np.float64)  # (C, D)
    for start in range(0, len(shas), QUERY_CHUNK * 16):  # a chunk of vectors at a time, not all train images
        stop = start + QUERY_CHUNK * 16
        np.add.at(sums, dish[start:stop], embeddings.lookup(shas[start:stop]))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    centroids = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0).astype(np.float32)
    return centroids, np.bincount(dish, minlength=len(dishes)) > 0


def chance_metrics(test: TestSet, ks: tuple[int, ...]) -> dict:
    """Expected recall@k of a random ranking, both directions: what 'no better than chance' means here."""
    image_relevant = test.relevant_passages
    text_relevant = test.images_per_dish[test.passage_dish]
    text_relevant = text_relevant[text_relevant > 0]
    n_passages, n_images = len(test.passage_dish), len(test.image_sha256)
    return {
        "image_to_text": {f"recall@{k}": chance_recall_at_k(image_relevant, n_passages, k) for k in ks},
        "text_to_image": {f"recall@{k}": chance_recall_at_k(text_relevant, n_images, k) for k in ks},
    }


def gain(finetuned: dict, base: dict) -> dict:
    """finetuned - base, key by key (nested dicts of floats)."""
    return {key: gain(value, base[key]) if isinstance(value, dict) else value - base[key]
            for key, value in finetuned.items()}


def per_dish_recall_at_1(test: TestSet, top1_by_model: dict[str, np.ndarray]) -> pd.DataFrame:
    """image->passage recall@1 per dish: food_id, test_images, <model>_recall@1 (an image counts for each dish)."""
    images_per_dish = test.images_per_dish
    shown = images_per_dish > 0
    table = {"food_id": [d for d, s in zip(test.dishes, shown) if s], "test_images": images_per_dish[shown]}
    for model, top1 in top1_by_model.items():
        table[f"{model}_recall@1"] = recall_per_dish(test, top1)[shown]
    return pd.DataFrame(table)


def _rounded(metrics: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 6) if isinstance(v, float) else v
            for k, v in metrics.items()}


def headline(metrics: dict) -> dict:
    """The few figures experiments are compared on (`metrics/headline.json`, what `dvc exp show` leads with), in
    the order they are read, under names short enough that `dvc exp show` fits a terminal: the fine-tuned
    model's image->passage `recall@k` (each eval.k, in order) and `mrr`; with questions, a photo and a question
    together (`vqa.together`) as `ask_recall@1` and `ask_mrr`; its share of the ceiling's recall at the first k
    (`ceiling_share@k`) and its zero-shot acc@1 (`zero_shot@1`). Written unsorted: the order is the columns'."""
    image_to_text = metrics["finetuned"]["image_to_text"]
    shares = {key: value for key, value in metrics["ceiling"].items() if key.startswith("finetuned_share_of_")}
    together = metrics["vqa"]["together"] if "vqa" in metrics else {}
    return {**{key: value for key, value in image_to_text.items() if key != "ndcg@10"},
            **{f"ask_{key}": together[key] for key in ("recall@1", "mrr") if key in together},
            **{key.replace("finetuned_share_of_recall", "ceiling_share"): value for key, value in shares.items()},
            "zero_shot@1": metrics["zero_shot"]["finetuned"]["acc@1"]}


@dataclass(frozen=True)
class VqaQueries:
    """(photo, question) queries of one split, each with the index row of the passage it was written for."""

    photo_emb: np.ndarray  # (Q, D) the photos' frozen vectors
    questions: list[str]  # (Q,)
    target: np.ndarray  # (Q,) index row of each question's passage


def vqa_queries(questions: pd.DataFrame, split: str, passage_ids: list[str], embeddings: ImageEmbeddings) -> VqaQueries:
    """The questions of `split` whose passage is in the index (rows `passage_ids`), with their photos' vectors."""
    row = {passage_id: i for i, passage_id in enumerate(passage_ids)}
    asked = questions[(questions["split"] == split) & questions["passage_id"].isin(row)]
    if len(asked) < (questions["split"] == split).sum():
        logger.warning("%d %s questions left out: their passage is not in the index",
                       (questions["split"] == split).sum() - len(asked), split)
    photo_emb = (embeddings.lookup(asked["image_sha256"].tolist()) if len(asked)
                 else np.zeros((0, embeddings.dim), np.float32))
    return VqaQueries(photo_emb, asked["question"].tolist(),
                      np.array([row[p] for p in asked["passage_id"]], dtype=np.int64))


def _exact_passage(hits: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """recall@k and mrr from ranked relevance (Q, K) when each query has exactly one relevant passage."""
    return mean_metrics(query_metrics(hits, np.ones(len(hits), dtype=np.int64), ks, ndcg=False))


def exact_passage_metrics(index: faiss.Index, queries: np.ndarray, target: np.ndarray,
                          ks: tuple[int, ...]) -> dict[str, float]:
    """recall@k and mrr of query vectors (Q, D) searched in the index, each relevant to index row `target` (Q,) only."""
    depth = max(MAX_DEPTH, *ks)
    return _exact_passage(search_hits(index, queries, depth, lambda q, i: i == target[q]), ks)


def vqa_hits(index: faiss.Index, lexical: LexicalIndex, queries: VqaQueries,
             photo_weights: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Ranked relevance of each query's passage: by the question's BM25 alone over every passage
    (Q, min(N, MAX_DEPTH)), and together at each photo weight over the photo's candidates (W, Q, min(N, CANDIDATES)),
    as `Retriever.ask` ranks them (`faclip.vqa.together_scores`)."""
    n_queries, depth = len(queries.target), min(index.ntotal, CANDIDATES)
    question_hits = np.zeros((n_queries, min(index.ntotal, MAX_DEPTH)), dtype=bool)
    together = np.zeros((len(photo_weights), n_queries, depth), dtype=bool)
    for start in range(0, n_queries, QUERY_CHUNK):
        photo_scores, photo_rows = search(index, queries.photo_emb[start:start + QUERY_CHUNK], depth)  # (chunk, C)
        for q in range(len(photo_rows)):
            target = queries.target[start + q]
            question_scores = lexical.scores(queries.questions[start + q])  # (N,)
            order = np.argsort(-question_scores, kind="stable")[:question_hits.shape[1]]
            question_hits[start + q] = order == target
            for w, weight in enumerate(photo_weights):
                _, rows = together_scores(photo_scores[q], photo_rows[q], question_scores, weight)
                together[w, start + q, :len(rows)] = rows == target
    return question_hits, together


def evaluate_vqa(index: faiss.Index, lexical: LexicalIndex, test: VqaQueries, train: VqaQueries,
                 ks: tuple[int, ...], photo_weight: float,
                 dense_question_emb: np.ndarray | None = None) -> tuple[dict, pd.DataFrame]:
    """The `vqa` metrics (photo_only, question_only, together at `photo_weight`, chance, the train split's best
    weight; dense_question_only when the questions' text-encoder vectors are given) and the train sweep table
    (photo_weight, recall@1, mrr)."""
    question_hits, together = vqa_hits(index, lexical, test, (photo_weight,))
    metrics = {
        "photo_weight": photo_weight,
        "photo_only": exact_passage_metrics(index, test.photo_emb, test.target, ks),
        "question_only": _exact_passage(question_hits, ks),
        "together": _exact_passage(together[0], ks),
        "chance": {f"recall@{k}": chance_recall_at_k(np.ones(len(test.target), np.int64), index.ntotal, k)
                   for k in ks},
    }
    if dense_question_emb is not None:
        metrics["dense_question_only"] = exact_passage_metrics(index, dense_question_emb, test.target, ks)
    sweep = pd.DataFrame(columns=["photo_weight", "recall@1", "mrr"])
    if len(train.target):
        _, swept = vqa_hits(index, lexical, train, VQA_WEIGHTS)
        sweep = weight_sweep("photo_weight", swept)
        metrics["best_on_train"] = best_weight(sweep, "photo_weight", photo_weight)
    metrics["counts"] = {"test_questions": len(test.target), "train_questions": len(train.target)}
    return metrics, sweep


def weight_sweep(name: str, hits: np.ndarray) -> pd.DataFrame:
    """recall@1 and mrr at each of VQA_WEIGHTS from the ranked relevance at each (W, Q, depth): (name, recall@1, mrr)."""
    return pd.DataFrame([{name: weight, **_exact_passage(weight_hits, (1,))} for weight, weight_hits in
                         zip(VQA_WEIGHTS, hits)], columns=[name, "recall@1", "mrr"])


def best_weight(sweep: pd.DataFrame, name: str, in_use: float) -> dict:
    """The swept weight that scores best by mrr, then recall@1; a tie goes to the weight nearest the one in use."""
    ranked = sweep.assign(gap=(sweep[name] - in_use).abs())
    best = ranked.sort_values(["mrr", "recall@1", "gap"], ascending=[False, False, True], kind="stable").iloc[0]
    return {name: float(best[name]), "recall@1": float(best["recall@1"]), "mrr": float(best["mrr"])}


def text_rankings(index: faiss.Index, lexical: LexicalIndex, dense_emb: np.ndarray, texts: list[str],
                  text_weights: tuple[float, ...]) -> np.ndarray:
    """The index rows each text query ranks as `Retriever.by_text` does (the text encoder's CANDIDATES best fused
    with BM25's), at each text weight: (W, Q, 2 · min(N, CANDIDATES)), -1 past the end of a ranking."""
    depth = min(index.ntotal, CANDIDATES)
    ranked = np.full((len(text_weights), len(texts), 2 * depth), -1, dtype=np.int64)
    for start in range(0, len(texts), QUERY_CHUNK):
        dense_scores, dense_rows = search(index, dense_emb[start:start + QUERY_CHUNK], depth)  # (chunk, C)
        for q in range(len(dense_rows)):
            lexical_top = top_k(lexical.scores(texts[start + q]), depth)
            for w, weight in enumerate(text_weights):
                _, rows = fuse(dense_scores[q], dense_rows[q], *lexical_top, weight)
                ranked[w, start + q, :len(rows)] = rows
    return ranked


def evaluate_text(index: faiss.Index, lexical: LexicalIndex, encode: Callable[[list[str]], np.ndarray],
                  test: VqaQueries, train: VqaQueries, dishes: pd.DataFrame, passage_dish: np.ndarray,
                  ks: tuple[int, ...], text_weight: float, max_chars: int) -> tuple[dict, pd.DataFrame]:
    """The `text` metrics: text queries ranked as `Retriever.by_text` ranks them at `text_weight`: the test questions
    (their exact passage), each dish's title alone and inside DISH_SENTENCE (any passage of the dish: `passage_dish`
    holds each index row's dish, `dishes` each dish's title), and the train split's best weight; with the train
    sweep table (text_weight, recall@1, mrr). The questions come read (`query_text`); the dish names are read here."""
    def ranked(texts: list[str], weights: tuple[float, ...]) -> np.ndarray:
        return text_rankings(index, lexical, encode(texts), texts, weights)

    def dish_metrics(texts: list[str]) -> dict:
        texts = [query_text(t, max_chars) for t in texts]  # read as the Retriever reads a query
        rows = ranked(texts, (text_weight,))[0]  # (D, depth)
        hits = (rows >= 0) & (passage_dish[rows] == np.arange(len(texts))[:, None])
        return _first_relevant(hits, ks)

    questions = ranked(test.questions, (text_weight,))[0]
    metrics = {"text_weight": text_weight,
               "questions": _exact_passage(questions == test.target[:, None], ks),
               "dish_names": dish_metrics(dishes["title"].tolist()),
               "dish_names_in_sentence": dish_metrics([DISH_SENTENCE.format(t) for t in dishes["title"]])}
    sweep = pd.DataFrame(columns=["text_weight", "recall@1", "mrr"])
    if len(train.target):
        sweep = weight_sweep("text_weight", ranked(train.questions, VQA_WEIGHTS) == train.target[None, :, None])
        metrics["best_on_train"] = best_weight(sweep, "text_weight", text_weight)
    metrics["counts"] = {"dishes": len(dishes)}
    return metrics, sweep


def _first_relevant(hits: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """recall@k (a relevant item within the first k) and mrr (1 / rank of the first) from ranked relevance (Q, K)
    when a query may have several relevant items."""
    return _exact_passage(hits & (np.cumsum(hits, axis=1) == 1), ks)


@dataclass(frozen=True)
class EvalResult:
    metrics: dict  # {"finetuned", "base", "ceiling", "gain", "chance", "zero_shot", "index", "counts", "vqa"?}
    recall_at_k: pd.DataFrame  # k, finetuned, base, ceiling: image->passage recall@k
    per_dish: pd.DataFrame  # food_id, test_images, finetuned_recall@1, base_recall@1, ceiling_recall@1
    # k, photo_only, question_only, together, chance: (photo, question) -> its passage recall@k (no rows: no vqa)
    vqa_recall_at_k: pd.DataFrame = None
    vqa_photo_weight: pd.DataFrame = None  # photo_weight, recall@1, mrr over the train split's questions
    text_weight: pd.DataFrame = None  # text_weight, recall@1, mrr over the train split's questions (text queries)


def run_evaluation(*, index_dir: str | Path, model_dir: str | Path, base_text_dir: str | Path,
                   docstore_path: str | Path, pairs_path: str | Path, image_embeddings_path: str | Path,
                   ks: tuple[int, ...], questions_path: str | Path | None = None, lexical_dir: str | Path | None = None,
                   photo_weight: float = DEFAULT_PHOTO_WEIGHT, text_weight: float = DEFAULT_TEXT_WEIGHT) -> EvalResult:
    """Evaluate the fine-tuned model (through its index), the base text model and the ceiling on the test split;
    with `questions_path` and `lexical_dir`, photo + question retrieval and text queries too (`vqa`, `text`, when
    the test split has questions)."""
    index, manifest = load_index(index_dir, model_dir, docstore_path)  # a stale index is an error
    lexical = None
    if questions_path is not None and lexical_dir is not None:  # bound to the same docstore and passage order
        lexical = LexicalIndex(lexical_dir, docstore_sha256=manifest["docstore_sha256"],
                               passage_ids_sha256=manifest["passage_ids_sha256"])
    passages = load_docstore(docstore_path).set_index("id").loc[manifest["passage_ids"]].reset_index()
    embeddings = load_image_embeddings(image_embeddings_path)
    check_same_vision(model_dir, embeddings.vision_sha256, f"the image embeddings in {image_embeddings_path}")
    pairs = load_pairs(pairs_path)
    if not (pairs["split"] == "test").any():
        raise FaclipError(f"{pairs_path} has no test-split images to evaluate on; add images or raise "
                          "data.test_fraction, then run `dvc repro`")
    test = load_test_set(pairs, passages, embeddings)
    if not test.image_sha256:
        raise FaclipError(f"no test image in {pairs_path} has a dish with passages in the docstore; "
                          "run `dvc repro prepare` so both come from one run")
    test_dishes = int((test.images_per_dish > 0).sum())
    logger.info("evaluating on %d test images, %d passages, %d dishes", len(test.image_sha256), len(passages),
                test_dishes)
    # The ceiling's centroids first: then the pairs and the image vectors (all of them) can go before encoding.
    centroids, has_centroid = dish_centroids(pairs, embeddings, test.dishes)
    asked = {}
    if questions_path is not None:
        questions = load_questions(questions_path)
        asked = {split: vqa_queries(questions, split, manifest["passage_ids"], embeddings) for split in ("test", "train")}
    del pairs, embeddings

    # 1. each text encoder: retrieval both ways, zero-shot against the dish titles
    texts = passages["passage_text"].tolist()
    titles, title_dish = dish_titles(passages, test.dishes)
    max_len = trained_max_len(model_dir)  # the base reads passages truncated as the fine-tuned one does
    results, top1, classified = {}, {}, {}
    for model, folder, model_index in (("finetuned", model_dir, index), ("base", base_text_dir, None)):
        text_emb = embed_passages(folder, texts, max_len=max_len)  # (N, D)
        if text_emb.shape[1] != test.image_emb.shape[1]:
            raise FaclipError(f"{folder} outputs {text_emb.shape[1]}-d vectors but the image embeddings are "
                              f"{test.image_emb.shape[1]}-d; run `dvc repro` so base, embed and train match")
        results[model], top1[model] = evaluate_encoder(test, text_emb, ks, index=model_index)
        classified[model] = zero_shot(test, embed_passages(folder, titles, max_len=max_len), title_dish)
        logger.info("%s: %s; zero-shot %s", model, results[model], classified[model])
        if model == "finetuned":  # what the configured index costs against exact search over the same vectors
            index_metrics = {f"recall_vs_exact@{RECALL_VS_EXACT_K}": recall_vs_exact(
                index, text_emb, test.image_emb, k=RECALL_VS_EXACT_K)}
        del text_emb

    classified["chance"] = zero_shot_chance(test, len(title_dish))

    # 2. a photo and a question together, against each half alone (the exact passage is the relevant item);
    # text queries (the questions alone, the dishes' names) as the text encoder fused with BM25 ranks them
    vqa, vqa_sweep = None, pd.DataFrame(columns=["photo_weight", "recall@1", "mrr"])
    text, text_sweep = None, pd.DataFrame(columns=["text_weight", "recall@1", "mrr"])
    if lexical is not None and asked and len(asked["test"].target):
        model, tokenizer = load_text_model(model_dir, device=pick_device())
        query_len = text_max_len(model_dir, tokenizer, model)  # a query read and cut as the Retriever reads it
        max_chars = query_len * CHARS_PER_TOKEN_BOUND

        def encode(queries: list[str]) -> np.ndarray:  # (Q, D)
            return encode_texts(model, tokenizer, queries, max_len=query_len)

        # every question read once as the Retriever reads a query, for the encoder and BM25 alike
        asked = {split: replace(queries, questions=[query_text(q, max_chars) for q in queries.questions])
                 for split, queries in asked.items()}
        vqa, vqa_sweep = evaluate_vqa(index, lexical, asked["test"], asked["train"], ks, photo_weight,
                                      dense_question_emb=encode(asked["test"].questions))
        logger.info("photo + question: %s", {key: vqa[key] for key in ("photo_only", "question_only", "together")})
        dishes = passages.drop_duplicates("food_id")[["food_id", "title"]].reset_index(drop=True)
        passage_dish = passages["food_id"].map({f: i for i, f in enumerate(dishes["food_id"])}).to_numpy()
        text, text_sweep = evaluate_text(index, lexical, encode, asked["test"], asked["train"], dishes, passage_dish,
                                         ks, text_weight, max_chars)
        logger.info("text queries: %s", {key: text[key] for key in ("questions", "dish_names", "dish_names_in_sentence")})

    # 3. the ceiling: every passage at its dish's centroid of train-split image vectors
    rows = np.flatnonzero(has_centroid[test.passage_dish])  # passages whose dish has train images
    without = int((~has_centroid[title_dish]).sum())
    if without:
        logger.warning("%d dishes have no train image: the ceiling never retrieves their passages", without)
    ceiling, top1["ceiling"] = evaluate_encoder(test, centroids[test.passage_dish[rows]], ks, rows=rows)
    first_k = f"recall@{ks[0]}"
    top = ceiling["image_to_text"][first_k]
    ceiling[f"finetuned_share_of_{first_k}"] = results["finetuned"]["image_to_text"][first_k] / top if top else None

    metrics = _rounded({
        **results, "ceiling": ceiling, "gain": gain(results["finetuned"], results["base"]),
        "chance": chance_metrics(test, ks), "zero_shot": classified, "index": index_metrics,
        "counts": {"test_images": len(test.image_sha256), "passages": len(passages), "test_dishes": test_dishes,
                   "dishes": len(title_dish), "dishes_without_train_images": without},
        **({"vqa": vqa} if vqa is not None else {}),
        **({"text": text} if text is not None else {}),
    })
    # Wide (one column per model) so `dvc plots` draws every curve from one file.
    recall_rows = pd.DataFrame([{"k": k, **{model: metrics[model]["image_to_text"][f"recall@{k}"]
                                            for model in ("finetuned", "base", "ceiling")}} for k in ks])
    per_dish = per_dish_recall_at_1(test, top1).round(6)
    vqa_columns = ["photo_only", "question_only", "together", "chance"]
    vqa_rows = pd.DataFrame([{"k": k, **{key: metrics["vqa"][key][f"recall@{k}"] for key in vqa_columns}}
                             for k in ks] if vqa is not None else [], columns=["k", *vqa_columns])
    return EvalResult(metrics=metrics, recall_at_k=recall_rows, per_dish=per_dish, vqa_recall_at_k=vqa_rows,
                      vqa_photo_weight=vqa_sweep.round(6), text_weight=text_sweep.round(6))
