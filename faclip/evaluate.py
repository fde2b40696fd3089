"""Held-out retrieval quality of the fine-tuned text encoder, against the untrained base, on the test split.

Queries are the test-split images (their cached vectors: no image is decoded here) and the passages of
the dishes those images show. Relevance is by dish: for an image, every passage of its dish (an image
paired with several dishes has all of them); for a passage, every test image of its dish.
- image_to_text: each test image searches all docstore passages, through the FAISS index for the
  fine-tuned model (the deployed path) and exactly for the base; recall@k, mrr, ndcg@10.
- text_to_image: each passage of a test dish searches the test images exactly; recall@k, mrr.
Rankings come from FAISS (exact search = a Flat inner-product index), so exact score ties keep FAISS's
order; mrr counts ranks up to MAX_DEPTH (all ranks whenever there are no more items than that).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from faclip.embeddings import load_image_embeddings
from faclip.errors import FaclipError
from faclip.index import build_index, embed_passages, load_index, search, trained_max_len
from faclip.metrics import NDCG_AT, chance_recall_at_k, hits_from_ids, metrics_from_hits
from faclip.models import read_model_info
from faclip.tables import load_docstore, load_pairs

logger = logging.getLogger(__name__)

MAX_DEPTH = 1000  # ranking depth per query: bounds memory at (queries x 1000) for large docstores
QUERY_CHUNK = 4096  # queries per FAISS call: keeps the (chunk, depth) ids/scores small


@dataclass(frozen=True)
class EvalSet:
    """Test images and docstore passages, with their dishes as indices into `dishes`."""

    dishes: list[str]  # (C,) food_id of each dish index
    image_sha256: list[str]  # (M,)
    image_emb: np.ndarray  # (M, D) frozen image vectors
    image_dishes: np.ndarray  # (M, C) bool: the dishes each test image shows
    passage_dish: np.ndarray  # (N,) dish index of each passage, in index order


def load_test_set(pairs_path: str | Path, passages: pd.DataFrame, image_embeddings) -> EvalSet:
    """The test split of the pairs as a EvalSet over `passages` (the docstore rows in index order)."""
    pairs = load_pairs(pairs_path)
    test = pairs[pairs["split"] == "test"]
    if test.empty:
        raise FaclipError(f"{pairs_path} has no test-split images to evaluate on; add images or raise "
                          "data.test_fraction, then run `dvc repro`")
    dishes = sorted(set(passages["food_id"]) | set(test["food_id"]))
    dish_idx = {food_id: i for i, food_id in enumerate(dishes)}
    image_sha256 = sorted(set(test["image_sha256"]))
    image_row = {sha: i for i, sha in enumerate(image_sha256)}
    image_dishes = np.zeros((len(image_sha256), len(dishes)), dtype=bool)
    image_dishes[[image_row[s] for s in test["image_sha256"]], [dish_idx[f] for f in test["food_id"]]] = True
    passage_dish = np.array([dish_idx[f] for f in passages["food_id"]])
    # A pair may name a passage the docstore files under another dish (a passage shared by two dishes):
    # an image whose dishes then have no passage at all has nothing relevant to find, so it is left out.
    image_dishes &= np.bincount(passage_dish, minlength=len(dishes)) > 0
    keep = image_dishes.any(axis=1)
    if not keep.all():
        logger.warning("%d test images left out: no docstore passage is filed under their dish", (~keep).sum())
    if not keep.any():
        raise FaclipError(f"no test image in {pairs_path} has a dish with passages in the docstore; "
                          "run `dvc repro prepare` so both come from one run")
    image_sha256 = [sha for sha, k in zip(image_sha256, keep) if k]
    return EvalSet(dishes=dishes, image_sha256=image_sha256, image_emb=image_embeddings.lookup(image_sha256),
                   image_dishes=image_dishes[keep], passage_dish=passage_dish)


def search_hits(index: faiss.Index, queries: np.ndarray, depth: int, is_relevant) -> np.ndarray:
    """Relevance in rank order (Q, depth) of what each query retrieves; `is_relevant` as in `hits_from_ids`."""
    parts = [np.zeros((0, min(depth, index.ntotal)), dtype=bool)]
    for start in range(0, len(queries), QUERY_CHUNK):
        _, ids = search(index, queries[start:start + QUERY_CHUNK], depth)  # (chunk, depth)
        parts.append(hits_from_ids(ids, lambda q, items: is_relevant(q + start, items)))
    return np.concatenate(parts)


def evaluate_encoder(test: EvalSet, text_emb: np.ndarray, ks: tuple[int, ...], index: faiss.Index | None = None):
    """Both directions for one text encoder: ({"image_to_text": …, "text_to_image": …}, image hits (M, K)).

    `text_emb` (N, D) holds every passage in index order; `index` (built over the same rows) serves the
    image->passage search when given, else it is exact.
    """
    # image -> passage: relevant = the passages filed under any dish the image shows.
    passage_count = np.bincount(test.passage_dish, minlength=len(test.dishes))  # (C,)
    index = index if index is not None else build_index(text_emb, "Flat")
    image_hits = search_hits(index, test.image_emb, max(MAX_DEPTH, *ks, NDCG_AT),
                             lambda q, p: test.image_dishes[q, test.passage_dish[p]])  # (M, K)
    image_relevant = test.image_dishes.astype(np.int64) @ passage_count  # (M,)
    image_to_text = metrics_from_hits(image_hits, image_relevant, ks)

    # passage -> image: the passages of dishes that have test images, over the test images (exact).
    images_per_dish = test.image_dishes.sum(axis=0)  # (C,)
    queries = np.flatnonzero(images_per_dish[test.passage_dish] > 0)  # (P,)
    query_dish = test.passage_dish[queries]
    text_hits = search_hits(build_index(test.image_emb, "Flat"), text_emb[queries], max(MAX_DEPTH, *ks),
                            lambda q, i: test.image_dishes[i, query_dish[q]])  # (P, K)
    text_to_image = metrics_from_hits(text_hits, images_per_dish[query_dish], ks, ndcg=False)
    return {"image_to_text": image_to_text, "text_to_image": text_to_image}, image_hits


def chance_metrics(test: EvalSet, ks: tuple[int, ...]) -> dict:
    """Expected recall@k of a random ranking, both directions: what 'no better than chance' means here."""
    passage_count = np.bincount(test.passage_dish, minlength=len(test.dishes))
    images_per_dish = test.image_dishes.sum(axis=0)
    image_relevant = test.image_dishes.astype(np.int64) @ passage_count
    text_relevant = images_per_dish[test.passage_dish]
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


def per_dish_recall_at_1(test: EvalSet, hits_by_model: dict[str, np.ndarray]) -> pd.DataFrame:
    """image->passage recall@1 per dish: food_id, test_images, <model>_recall@1 (an image counts for each dish)."""
    shown = test.image_dishes.any(axis=0)
    table = {"food_id": [d for d, s in zip(test.dishes, shown) if s],
             "test_images": test.image_dishes.sum(axis=0)[shown]}
    for model, hits in hits_by_model.items():
        top1 = hits[:, 0].astype(np.float64)  # (M,)
        table[f"{model}_recall@1"] = (top1 @ test.image_dishes)[shown] / table["test_images"]
    return pd.DataFrame(table)


def _rounded(metrics: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 6) if isinstance(v, float) else v
            for k, v in metrics.items()}


@dataclass(frozen=True)
class EvalResult:
    metrics: dict  # {"finetuned", "base", "gain", "chance", "counts"}
    recall_at_k: pd.DataFrame  # k, finetuned, base: image->passage recall@k
    per_dish: pd.DataFrame  # food_id, test_images, finetuned_recall@1, base_recall@1


def check_vision(model_dir: str | Path, embeddings) -> None:
    """The image vectors must come from the vision model the text model was tuned against."""
    expected = read_model_info(model_dir).get("vision_sha256")
    if expected and expected != embeddings.vision_sha256:
        raise FaclipError(f"the image embeddings come from another vision model than {model_dir} was trained "
                          "against; run `dvc repro train`")


def run_evaluation(*, index_dir: str | Path, model_dir: str | Path, base_text_dir: str | Path,
                   docstore_path: str | Path, pairs_path: str | Path, image_embeddings_path: str | Path,
                   ks: tuple[int, ...]) -> EvalResult:
    """Evaluate the fine-tuned model (through its index) and the base text model on the test split."""
    index, manifest = load_index(index_dir, model_dir, docstore_path)  # a stale index is an error
    passages = load_docstore(docstore_path).set_index("id").loc[manifest["passage_ids"]].reset_index()
    embeddings = load_image_embeddings(image_embeddings_path)
    check_vision(model_dir, embeddings)
    test = load_test_set(pairs_path, passages, embeddings)
    logger.info("evaluating on %d test images, %d passages, %d dishes",
                len(test.image_sha256), len(passages), int(test.image_dishes.any(axis=0).sum()))

    texts = passages["passage_text"].tolist()
    max_len = trained_max_len(model_dir)  # the base reads passages truncated as the fine-tuned one does
    results, image_hits = {}, {}
    for model, folder, model_index in (("finetuned", model_dir, index), ("base", base_text_dir, None)):
        text_emb = embed_passages(folder, texts, max_len=max_len)  # (N, D)
        if text_emb.shape[1] != test.image_emb.shape[1]:
            raise FaclipError(f"{folder} outputs {text_emb.shape[1]}-d vectors but the image embeddings are "
                              f"{test.image_emb.shape[1]}-d; run `dvc repro` so base, embed and train match")
        results[model], image_hits[model] = evaluate_encoder(test, text_emb, ks, index=model_index)
        logger.info("%s: %s", model, results[model])

    metrics = _rounded({
        **results, "gain": gain(results["finetuned"], results["base"]), "chance": chance_metrics(test, ks),
        "counts": {"test_images": len(test.image_sha256), "passages": len(passages),
                   "test_dishes": int(test.image_dishes.any(axis=0).sum())},
    })
    # Wide (one column per model) so `dvc plots` draws both curves from one file.
    recall_rows = pd.DataFrame([{"k": k, **{model: metrics[model]["image_to_text"][f"recall@{k}"]
                                            for model in ("finetuned", "base")}} for k in ks])
    per_dish = per_dish_recall_at_1(test, image_hits).round(6)
    return EvalResult(metrics=metrics, recall_at_k=recall_rows, per_dish=per_dish)
