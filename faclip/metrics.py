"""Retrieval metrics as pure functions over numpy arrays, returning flat dicts (open_clip style).

Definitions (the CLIP convention; a query may have several relevant items):
- recall@k: share of queries with ANY relevant item among their top k.
- mrr: mean over queries of 1 / rank of the first relevant item (ranks start at 1; 0 when no
  relevant item is in the ranking, e.g. beyond the depth an index was searched to).
- ndcg@10: binary relevance, DCG@10 = sum over ranks i <= 10 of rel_i / log2(i + 1), divided by the
  ideal DCG, i.e. the DCG of min(#relevant, 10) relevant items in the first ranks.
Every metric is a mean over queries, so it lies in [0, 1]; each query needs >= 1 relevant item.
Zero-shot classification ranks from a score matrix instead (`rank_of_best_relevant`): acc@k is the
share of queries whose best-scoring right class ranks within k, a tie counting against the query.

Rankings come from FAISS (ids in the order the index returned them; exact score ties keep FAISS's
order). tests/test_metrics.py keeps a score-matrix reference implementation to check these against.
"""

import math
from typing import Callable, Iterable

import numpy as np

NDCG_AT = 10


def hits_from_ids(ranked_ids: np.ndarray, is_relevant: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Relevance in rank order (Q, K) from ranked item ids (FAISS labels; -1 = no result).

    `is_relevant(query_idx (Q, 1), item_ids (Q, K)) -> bool (Q, K)` is vectorised over its broadcast inputs.
    """
    ranked_ids = np.asarray(ranked_ids)
    found = ranked_ids >= 0
    queries = np.arange(len(ranked_ids))[:, None]  # (Q, 1)
    return np.asarray(is_relevant(queries, np.where(found, ranked_ids, 0)), dtype=bool) & found


def query_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks: Iterable[int] = (1, 5, 10),
                  ndcg: bool = True) -> dict[str, np.ndarray]:
    """Per-query recall@k (bool), reciprocal rank `mrr` and (when `ndcg`) ndcg@10, each (Q,), from ranked
    relevance (Q, K) and #relevant (Q,): the values `metrics_from_hits` averages, so that queries can be
    scored a chunk at a time and averaged at the end (the same result as scoring them all at once)."""
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant)
    if hits.ndim != 2 or n_relevant.shape != (hits.shape[0],):
        raise ValueError(f"hits must be (Q, K) and n_relevant (Q,); got {hits.shape} and {n_relevant.shape}")
    if (n_relevant < 1).any():
        raise ValueError("every query needs at least one relevant item; drop the others first")
    out = {f"recall@{k}": hits[:, :k].any(axis=1) for k in sorted(set(ks))}
    first = hits.argmax(axis=1) if hits.shape[1] else np.zeros(len(hits), dtype=np.int64)  # 0 if none: masked
    out["mrr"] = np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)
    if ndcg:
        out[f"ndcg@{NDCG_AT}"] = ndcg_at(hits, n_relevant, NDCG_AT)
    return out


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """The mean over queries of each per-query metric (`query_metrics`), as floats."""
    if any(len(values) == 0 for values in per_query.values()):
        raise ValueError("no queries to score")
    return {key: float(np.mean(values)) for key, values in per_query.items()}


def metrics_from_hits(hits: np.ndarray, n_relevant: np.ndarray, ks: Iterable[int] = (1, 5, 10),
                      ndcg: bool = True) -> dict[str, float]:
    """recall@k for each k, mrr and (when `ndcg`) ndcg@10 from ranked relevance (Q, K) and #relevant (Q,)."""
    return mean_metrics(query_metrics(hits, n_relevant, ks, ndcg=ndcg))


def rank_of_best_relevant(scores: np.ndarray, relevant_query: np.ndarray, relevant_item: np.ndarray) -> np.ndarray:
    """1-based rank (Q,) of each query's best-scoring relevant item in a score matrix (Q, C).

    (relevant_query, relevant_item) lists the relevant (query, item) pairs, each once; every query needs
    one. The rank is 1 + the number of irrelevant items scoring at least as high: a tie counts against
    the query, so a model that scores every item alike ranks its right answer last, never lucky first.
    """
    n_queries = scores.shape[0]
    relevant_scores = scores[relevant_query, relevant_item]  # (S,)
    best = np.full(n_queries, -np.inf, dtype=np.float64)
    np.maximum.at(best, relevant_query, relevant_scores)
    if np.isneginf(best).any():
        raise ValueError("every query needs at least one relevant item; drop the others first")
    at_or_above = (scores >= best[:, None].astype(scores.dtype)).sum(axis=1)  # (Q,), the best relevant included
    relevant_at_or_above = np.bincount(relevant_query, weights=relevant_scores >= best[relevant_query],
                                       minlength=n_queries).astype(np.int64)  # (Q,)
    return 1 + at_or_above - relevant_at_or_above


def ndcg_at(hits: np.ndarray, n_relevant: np.ndarray, k: int = NDCG_AT) -> np.ndarray:
    """Per-query nDCG@k (Q,) with binary relevance."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,): rank i -> 1 / log2(i + 1)
    top = hits[:, :k].astype(np.float64)
    dcg = top @ discounts[: top.shape[1]]
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    return dcg / ideal


def chance_recall_at_k(n_relevant: np.ndarray, n_items: int, k: int) -> float:
    """Expected recall@k of a random ranking: mean of 1 - C(N - r, k) / C(N, k) over queries."""
    return float(np.mean([1.0 - math.comb(n_items - r, k) / math.comb(n_items, k) if k <= n_items else 1.0
                          for r in np.asarray(n_relevant).tolist()]))
