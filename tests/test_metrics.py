"""Retrieval metrics on a hand-computed example with ties and several relevant items."""

import math

import numpy as np
import pytest

from faclip.metrics import (chance_recall_at_k, hits_from_ids, mean_metrics, metrics_from_hits, query_metrics,
                            rank_of_best_relevant)


# A reference ranking from a dense score matrix (the pipeline ranks through FAISS): ties pessimistic,
# i.e. among equal scores irrelevant items rank first, so a constant scorer never scores by luck.
def rank_by_scores(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Relevance of each query's items in rank order (Q, N), best score first, ties pessimistic."""
    order = np.lexsort((relevant, -scores), axis=-1)  # last key primary; stable, so ties keep item order
    return np.take_along_axis(relevant, order, axis=-1)


def retrieval_metrics(scores: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    return metrics_from_hits(rank_by_scores(scores, relevant), relevant.sum(axis=1), ks)


# 3 queries x 6 items. Worked by hand (ties pessimistic: irrelevant before relevant, then item order):
#   q0: relevant {2, 4}; item 1 (irrelevant) ties item 2 at 0.8 -> ranking 0 1 2 3 4 5, hits at ranks 3 and 5
#   q1: relevant {1, 3}; items 1, 2, 3 tie at 0.7 -> ranking 5 2 1 3 4 0, hits at ranks 3 and 4
#   q2: relevant {0}; item 0 scores highest -> hit at rank 1
SCORES = np.array([
    [0.9, 0.8, 0.8, 0.5, 0.1, 0.0],
    [0.2, 0.7, 0.7, 0.7, 0.3, 0.9],
    [0.6, 0.1, 0.2, 0.3, 0.4, 0.5],
])
RELEVANT = np.zeros((3, 6), dtype=bool)
RELEVANT[0, [2, 4]] = RELEVANT[1, [1, 3]] = RELEVANT[2, 0] = True
IDEAL_2 = 1 + 1 / math.log2(3)  # DCG of two relevant items at ranks 1 and 2
NDCG = [(1 / math.log2(4) + 1 / math.log2(6)) / IDEAL_2, (1 / math.log2(4) + 1 / math.log2(5)) / IDEAL_2, 1.0]


def test_ranking_breaks_ties_pessimistically():
    hits = rank_by_scores(SCORES, RELEVANT)
    assert hits.astype(int).tolist() == [[0, 0, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]]


def test_metrics_match_the_hand_computed_example():
    got = retrieval_metrics(SCORES, RELEVANT, ks=(1, 2, 3, 5))
    assert set(got) == {"recall@1", "recall@2", "recall@3", "recall@5", "mrr", "ndcg@10"}
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert got["recall@3"] == pytest.approx(1.0)
    assert got["recall@5"] == pytest.approx(1.0)
    assert got["mrr"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert got["ndcg@10"] == pytest.approx(sum(NDCG) / 3)
    assert NDCG[0] == pytest.approx(0.543771, abs=1e-6)  # the hand value, not just the same formula


def test_constant_scores_never_score_by_luck():
    relevant = np.zeros((2, 5), dtype=bool)
    relevant[0, 0] = relevant[1, [0, 1]] = True
    got = retrieval_metrics(np.zeros((2, 5)), relevant, ks=(1, 3, 4))
    # Pessimistic: q0's only relevant item comes last (rank 5); q1's come at ranks 4 and 5.
    assert got["recall@1"] == 0.0 and got["recall@3"] == 0.0 and got["recall@4"] == 0.5
    assert got["mrr"] == pytest.approx((1 / 5 + 1 / 4) / 2)


def test_ndcg_ideal_is_capped_at_ten_relevant_items():
    hits = np.ones((1, 12), dtype=bool)
    got = metrics_from_hits(hits, np.array([12]), ks=(1,))
    assert got["ndcg@10"] == pytest.approx(1.0)
    hits[0, 0] = False  # rank 1 misses; the hit moved to rank 11 is past the cut-off and adds nothing
    expected = sum(1 / math.log2(i + 1) for i in range(2, 11)) / sum(1 / math.log2(i + 1) for i in range(1, 11))
    assert metrics_from_hits(hits, np.array([12]), ks=(1,))["ndcg@10"] == pytest.approx(expected)


def test_a_relevant_item_beyond_the_depth_scores_zero():
    hits = np.array([[False, False], [False, True]])
    got = metrics_from_hits(hits, np.array([1, 1]), ks=(1, 2))
    assert got["recall@2"] == 0.5 and got["mrr"] == pytest.approx(0.25)


def test_queries_without_relevant_items_are_rejected():
    with pytest.raises(ValueError, match="at least one relevant"):
        metrics_from_hits(np.zeros((1, 3), dtype=bool), np.array([0]))


def test_hits_from_ids_looks_up_relevance_and_skips_missing_results():
    item_class = np.array([0, 1, 1, 2])  # 4 items in 3 classes
    query_classes = np.array([[False, True, False], [True, False, True]])  # q0: class 1; q1: classes 0 and 2
    ids = np.array([[0, 2, -1], [1, 3, 0]])
    hits = hits_from_ids(ids, lambda q, items: query_classes[q, item_class[items]])
    assert hits.tolist() == [[False, True, False], [False, True, True]]


def test_chance_recall():
    assert chance_recall_at_k(np.array([1]), 4, 1) == pytest.approx(0.25)
    assert chance_recall_at_k(np.array([2]), 4, 2) == pytest.approx(5 / 6)
    assert chance_recall_at_k(np.array([1, 2]), 4, 5) == 1.0


def test_per_query_metrics_in_chunks_average_to_the_whole():
    hits = rank_by_scores(SCORES, RELEVANT)
    parts = [query_metrics(hits[a:b], RELEVANT.sum(axis=1)[a:b], (1, 3)) for a, b in ((0, 2), (2, 3))]
    joined = mean_metrics({key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
    assert joined == metrics_from_hits(hits, RELEVANT.sum(axis=1), (1, 3))
    with pytest.raises(ValueError, match="no queries"):
        metrics_from_hits(np.zeros((0, 3), dtype=bool), np.zeros(0, dtype=int))


def test_rank_of_best_relevant_matches_the_pessimistic_reference_ranking():
    query, item = np.nonzero(RELEVANT)
    ranks = rank_of_best_relevant(SCORES.astype(np.float32), query, item)
    first_hit = rank_by_scores(SCORES, RELEVANT).argmax(axis=1) + 1
    assert ranks.tolist() == first_hit.tolist() == [3, 3, 1]  # q0 and q1 lose their ties


def test_rank_of_best_relevant_with_constant_scores_is_last_place():
    relevant = np.zeros((2, 5), dtype=bool)
    relevant[0, 0] = relevant[1, [0, 1]] = True
    query, item = np.nonzero(relevant)
    assert rank_of_best_relevant(np.zeros((2, 5), np.float32), query, item).tolist() == [5, 4]
    with pytest.raises(ValueError, match="at least one relevant"):
        rank_of_best_relevant(np.zeros((2, 5), np.float32), np.array([0]), np.array([0]))
