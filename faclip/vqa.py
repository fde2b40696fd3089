"""Hybrid ranking: a dense ranking fused with the lexical one, for the VQA system's two kinds of question.

- A photo and a question (`Retriever.ask`): the photo says which dish, the question which of its passages.
  The dense half is the photo (frozen vision model) against the passage vectors; the candidates are the
  photo's `CANDIDATES` best passages (all of them when there are fewer), and the question's BM25 scores those
  same passages. Weight: `vqa.photo_weight`.
- A text query (`Retriever.by_text`): the dense half is the fine-tuned text encoder's `CANDIDATES` best
  passages, the lexical half BM25's `CANDIDATES` best, the candidates both lists together. Weight:
  `vqa.text_weight`.

The rule is relative score fusion (Weaviate's relativeScoreFusion, OpenSearch's min_max normalisation): each
half's scores are min-max normalised over its own list, so both lie in [0, 1] whatever BM25's scale, a passage
missing from a list gets 0 for that half, and

    score = w · dense + (1 − w) · lexical

A raw BM25 score is unbounded (it grows with the question's length and the corpus), so it cannot be added to a
cosine as it is. `evaluate` sweeps both weights over the train split's questions and reports the best next to
the one in use (BENCHMARKS.md, "The lexical half", compares this rule with reciprocal-rank fusion).

Why lexical and not only the fine-tuned text encoder for a question: locked-image tuning teaches the text
encoder where each *dish* lies among the photos, not which of a dish's passages answers a question; `evaluate`
keeps measuring the encoder alone (`vqa.dense_question_only`), so a stronger text model (CLIPfa) can be judged on
the same numbers.
"""

import numpy as np

from faclip.errors import FaclipError
from faclip.params import VqaParams

DEFAULT_PHOTO_WEIGHT = VqaParams.photo_weight  # params.yaml's defaults: one number for evaluate, search and serve
DEFAULT_TEXT_WEIGHT = VqaParams.text_weight
CANDIDATES = 256  # each half's list: the photo's (or text encoder's) best passages, and BM25's best


def check_photo_weight(photo_weight) -> float:
    """A photo weight is a number from 0 (the question alone) to 1 (the photo alone)."""
    return _check_weight(photo_weight, "photo_weight", "the question alone", "the photo alone")


def check_text_weight(text_weight) -> float:
    """A text weight is a number from 0 (BM25 alone) to 1 (the text encoder alone)."""
    return _check_weight(text_weight, "text_weight", "BM25 alone", "the text encoder alone")


def _check_weight(weight, name: str, at_0: str, at_1: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise FaclipError(f"{name}={weight!r} is invalid; use a number from 0 ({at_0}) to 1 ({at_1}), e.g. 0.5")
    return float(weight)


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scores rescaled to [0, 1] over the list (float64): the best 1, the worst 0; a list of equal scores is all
    1 when they are positive (a match), else all 0."""
    scores = scores.astype(np.float64)
    if len(scores) == 0:
        return scores
    low, high = scores.min(), scores.max()
    if high > low:
        return (scores - low) / (high - low)
    return np.full(len(scores), 1.0 if high > 0 else 0.0)


def fuse(dense_scores: np.ndarray, dense_rows: np.ndarray, lexical_scores: np.ndarray, lexical_rows: np.ndarray,
         dense_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Relative score fusion of two ranked lists (scores and index rows; a row of -1 is no result): the union of
    their rows ranked by w·min_max(dense) + (1 − w)·min_max(lexical), 0 for a half that does not list the row.
    Returns (scores, rows), best first; a tie keeps the dense list's order, then the lexical list's."""
    found = dense_rows >= 0
    dense_scores, dense_rows = dense_scores[found], dense_rows[found]
    extra = ~np.isin(lexical_rows, dense_rows)
    rows = np.concatenate([dense_rows, lexical_rows[extra]])
    dense = np.zeros(len(rows))
    dense[:len(dense_rows)] = min_max(dense_scores)
    lexical = np.zeros(len(rows))
    position = {row: i for i, row in enumerate(rows.tolist())}
    lexical[[position[row] for row in lexical_rows.tolist()]] = min_max(lexical_scores)
    combined = dense_weight * dense + (1 - dense_weight) * lexical
    order = np.argsort(-combined, kind="stable")
    return combined[order], rows[order]


def together_scores(photo_scores: np.ndarray, candidate_rows: np.ndarray, question_scores: np.ndarray,
                    photo_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """A photo's candidates (scores and index rows (C,), -1 = none) re-ranked with a question's BM25 score of every
    passage (N,), by `fuse` with the lexical list being the same candidates: (scores (C,), rows (C,)), best first."""
    w = check_photo_weight(photo_weight)
    rows = candidate_rows[candidate_rows >= 0]
    return fuse(photo_scores, candidate_rows, question_scores[rows], rows, w)
