"""A photo and a question in one query (the VQA request): the photo says which dish, the question which
of its passages.

The score of a passage p is

    photo_weight · cos(photo, p) + (1 − photo_weight) · lexical(question, p)

- cos(photo, p): the photo encoded by the frozen vision model against the passage vectors of the index,
  as `by_image` scores it;
- lexical(question, p): the cosine of TF-IDF vectors of character 3- and 4-grams (within words, after
  faclip's Persian normalisation), the question against the passage (`LexicalIndex`). Character n-grams
  match a question's «سرو می‌کنند» to a passage's «سرو می‌شود», whatever the spelling.

The candidates are the photo's `CANDIDATES` best passages in the index (all of them when there are
fewer): within them the ranking is exact. A passage the photo does not rank that high is not about the
dish in the photo.

Why lexical and not the fine-tuned text encoder for the question: locked-image tuning teaches the text
encoder where each *dish* lies among the photos, not which of a dish's passages answers a question; on
the sample the encoder found a question's own passage first for 4 % of test questions (chance: 2 %), and
no weight of it helped the photo on the train split. `evaluate` keeps measuring that
(`vqa.dense_question_only`), so a stronger text model (CLIPfa) can be judged on the same numbers.
`photo_weight` is the param `vqa.photo_weight`; `evaluate` sweeps it over the train split's questions
and reports the best weight there next to the one in use.
"""

import re
from collections import Counter

import numpy as np

from faclip.errors import FaclipError
from faclip.params import VqaParams
from faclip.text import identity_key

DEFAULT_PHOTO_WEIGHT = VqaParams.photo_weight  # params.yaml's default: one number for evaluate, search and serve
CANDIDATES = 256  # the photo's best passages that the question re-ranks (all passages when there are fewer)
NGRAMS = (3, 4)
_WORD = re.compile(r"\w+")


def check_photo_weight(photo_weight) -> float:
    """A photo weight is a number from 0 (the question alone) to 1 (the photo alone)."""
    ok = isinstance(photo_weight, (int, float)) and not isinstance(photo_weight, bool) and 0 <= photo_weight <= 1
    if not ok:
        raise FaclipError(f"photo_weight={photo_weight!r} is invalid; use a number from 0 (the question alone) "
                          "to 1 (the photo alone), e.g. 0.5")
    return float(photo_weight)


def char_ngrams(text: str, max_chars: int) -> Counter:
    """Character 3- and 4-grams of each word (padded with a space each side) of the normalised text, counted.

    The text is cut to `max_chars` first, as the encoders cut a passage, so a huge question costs what a page does.
    """
    padded = [f" {word} " for word in _WORD.findall(identity_key(text[:max_chars]))]
    return Counter(word[i:i + n] for word in padded for n in NGRAMS for i in range(len(word) - n + 1))


class LexicalIndex:
    """TF-IDF (sublinear tf, smoothed idf) over passages' character n-grams, as postings sorted by term; `scores`
    gives the cosine of a question with every passage (N,). Deterministic: the same passages, the same arrays."""

    def __init__(self, passages: list[str], max_chars: int):
        self.max_chars, self.count = max_chars, len(passages)
        self.vocab: dict[str, int] = {}
        rows, terms, counts = [], [], []
        for row, text in enumerate(passages):
            grams = char_ngrams(text, max_chars)
            rows.append(np.full(len(grams), row, dtype=np.int64))
            terms.append(np.fromiter((self.vocab.setdefault(g, len(self.vocab)) for g in grams), np.int64, len(grams)))
            counts.append(np.fromiter(grams.values(), np.float64, len(grams)))
        rows, terms, counts = (np.concatenate(a) if a else np.zeros(0, t) for a, t in
                               ((rows, np.int64), (terms, np.int64), (counts, np.float64)))
        df = np.bincount(terms, minlength=len(self.vocab))  # (V,)
        self.idf = np.log((1 + self.count) / (1 + df)) + 1  # (V,)
        weights = (1 + np.log(counts)) * self.idf[terms]  # (T,) one per (passage, term)
        norms = np.sqrt(np.bincount(rows, weights=weights * weights, minlength=self.count))  # (N,)
        order = np.argsort(terms, kind="stable")  # postings: grouped by term, passages in order
        self.rows, self.weights = rows[order], (weights / np.where(norms > 0, norms, 1)[rows])[order]
        self.starts = np.searchsorted(terms[order], np.arange(len(self.vocab) + 1))  # (V + 1,)

    def scores(self, question: str) -> np.ndarray:
        """Cosine of the question's TF-IDF vector with each passage's (N,), float64 in [0, 1]."""
        grams = sorted((self.vocab[g], n) for g, n in char_ngrams(question, self.max_chars).items() if g in self.vocab)
        out = np.zeros(self.count, dtype=np.float64)
        if not grams:  # no n-gram in common with any passage: all 0
            return out
        terms = np.array([t for t, _ in grams], dtype=np.int64)
        weights = (1 + np.log(np.array([n for _, n in grams], dtype=np.float64))) * self.idf[terms]
        weights /= np.sqrt(weights @ weights)
        for term, w in zip(terms.tolist(), weights.tolist()):
            lo, hi = self.starts[term], self.starts[term + 1]
            out[self.rows[lo:hi]] += w * self.weights[lo:hi]
        return out


def together_scores(photo_scores: np.ndarray, candidate_rows: np.ndarray, question_scores: np.ndarray,
                    photo_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank one photo's candidates (scores and index rows (C,), -1 = none) by the combined score, with the
    question's lexical scores of every passage (N,): (scores (C,), rows (C,)), best first, a tie kept in the
    photo's order."""
    w = check_photo_weight(photo_weight)
    found = candidate_rows >= 0
    photo_scores, candidate_rows = photo_scores[found], candidate_rows[found]
    combined = w * photo_scores.astype(np.float64) + (1 - w) * question_scores[candidate_rows]
    order = np.argsort(-combined, kind="stable")
    return combined[order], candidate_rows[order]
