"""Held-out retrieval quality of the fine-tuned text encoder, against the untrained base, on the test split.

Queries are the test-split images (their cached vectors: no image is decoded here) and the passages of
the dishes those images show. Relevance is by dish: for an image, every passage of its dish (an image
paired with several dishes has all of them); for a passage, every test image of its dish.
- image_to_text: each test image searches all docstore passages, through the FAISS index for the
  fine-tuned model (the deployed path) and exactly for the base; recall@k, mrr, ndcg@10.
- text_to_image: each passage of a test dish searches the test images exactly; recall@k, mrr.
The test set is `faclip.testset`'s (the one train reports recall on). Rankings come from FAISS (exact
search = a Flat inner-product index), so exact score ties keep FAISS's order; mrr counts ranks up to
MAX_DEPTH (all ranks whenever there are no more items than that).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from faclip.embed import load_image_embeddings
from faclip.errors import FaclipError
from faclip.index import build_index, load_index, search_hits
from faclip.metrics import NDCG_AT, chance_recall_at_k, metrics_from_hits
from faclip.models import check_same_vision, embed_passages, trained_max_len
from faclip.tables import load_docstore, load_pairs
from faclip.testset import TestSet, image_to_text_hits, load_test_set

logger = logging.getLogger(__name__)

MAX_DEPTH = 1000  # ranking depth per query: bounds memory at (queries x 1000) for large docstores


def evaluate_encoder(test: TestSet, text_emb: np.ndarray, ks: tuple[int, ...], index: faiss.Index | None = None):
    """Both directions for one text encoder: ({"image_to_text": …, "text_to_image": …}, image hits (M, K)).

    `text_emb` (N, D) holds every passage in index order; `index` (built over the same rows) serves the
    image->passage search when given, else it is exact.
    """
    # image -> passage: relevant = the passages filed under any dish the image shows.
    index = index if index is not None else build_index(text_emb, "Flat")
    image_hits = image_to_text_hits(test, index, max(MAX_DEPTH, *ks, NDCG_AT))  # (M, K)
    image_to_text = metrics_from_hits(image_hits, test.relevant_passages, ks)

    # passage -> image: the passages of dishes that have test images, over the test images (exact).
    images_per_dish = test.images_per_dish  # (C,)
    queries = np.flatnonzero(images_per_dish[test.passage_dish] > 0)  # (P,)
    query_dish = test.passage_dish[queries]
    text_hits = search_hits(build_index(test.image_emb, "Flat"), text_emb[queries], max(MAX_DEPTH, *ks),
                            lambda q, i: test.shows(i, query_dish[q]))  # (P, K)
    text_to_image = metrics_from_hits(text_hits, images_per_dish[query_dish], ks, ndcg=False)
    return {"image_to_text": image_to_text, "text_to_image": text_to_image}, image_hits


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


def per_dish_recall_at_1(test: TestSet, hits_by_model: dict[str, np.ndarray]) -> pd.DataFrame:
    """image->passage recall@1 per dish: food_id, test_images, <model>_recall@1 (an image counts for each dish)."""
    images_per_dish = test.images_per_dish
    shown = images_per_dish > 0
    table = {"food_id": [d for d, s in zip(test.dishes, shown) if s], "test_images": images_per_dish[shown]}
    for model, hits in hits_by_model.items():
        top1 = hits[:, 0].astype(np.float64)  # (M,)
        correct = np.bincount(test.shown_dish, weights=top1[test.shown_image], minlength=len(test.dishes))  # (C,)
        table[f"{model}_recall@1"] = correct[shown] / table["test_images"]
    return pd.DataFrame(table)


def _rounded(metrics: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 6) if isinstance(v, float) else v
            for k, v in metrics.items()}


@dataclass(frozen=True)
class EvalResult:
    metrics: dict  # {"finetuned", "base", "gain", "chance", "counts"}
    recall_at_k: pd.DataFrame  # k, finetuned, base: image->passage recall@k
    per_dish: pd.DataFrame  # food_id, test_images, finetuned_recall@1, base_recall@1


def run_evaluation(*, index_dir: str | Path, model_dir: str | Path, base_text_dir: str | Path,
                   docstore_path: str | Path, pairs_path: str | Path, image_embeddings_path: str | Path,
                   ks: tuple[int, ...]) -> EvalResult:
    """Evaluate the fine-tuned model (through its index) and the base text model on the test split."""
    index, manifest = load_index(index_dir, model_dir, docstore_path)  # a stale index is an error
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
                   "test_dishes": test_dishes},
    })
    # Wide (one column per model) so `dvc plots` draws both curves from one file.
    recall_rows = pd.DataFrame([{"k": k, **{model: metrics[model]["image_to_text"][f"recall@{k}"]
                                            for model in ("finetuned", "base")}} for k in ks])
    per_dish = per_dish_recall_at_1(test, image_hits).round(6)
    return EvalResult(metrics=metrics, recall_at_k=recall_rows, per_dish=per_dish)
