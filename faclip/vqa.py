"""A photo and a question in one query (the VQA request): the photo says which dish, the question which
of its passages.

The combined score of a passage p is

    photo_weight · cos(photo, p) + (1 − photo_weight) · cos(question, p)

with the photo encoded by the frozen vision model and the question by the fine-tuned text model, as
`by_image` and `by_text` encode them. Passage vectors are unit length, so that score is exactly the
inner product of p with the one vector photo_weight · photo + (1 − photo_weight) · question: a single
search of the passage index ranks every passage by it (exactly for a Flat index, as closely as the
index searches for any query otherwise), and `per_dish`, `k` and the hits work as for any query.
`photo_weight` is the param `vqa.photo_weight`; `evaluate` measures it and reports the best weight on
the train split next to it.
"""

import numpy as np

from faclip.errors import FaclipError
from faclip.params import VqaParams

DEFAULT_PHOTO_WEIGHT = VqaParams.photo_weight  # params.yaml's default: one number for evaluate, search and serve


def check_photo_weight(photo_weight) -> float:
    """A photo weight is a number from 0 (the question alone) to 1 (the photo alone)."""
    ok = isinstance(photo_weight, (int, float)) and not isinstance(photo_weight, bool) and 0 <= photo_weight <= 1
    if not ok:
        raise FaclipError(f"photo_weight={photo_weight!r} is invalid; use a number from 0 (the question alone) "
                          "to 1 (the photo alone), e.g. 0.5")
    return float(photo_weight)


def combine_queries(photo_emb: np.ndarray, question_emb: np.ndarray, photo_weight: float) -> np.ndarray:
    """photo_weight · photo + (1 − photo_weight) · question, (Q, D) float32 from two (Q, D) unit-vector arrays:
    its inner product with a unit passage vector is the combined score (not re-normalised, so scores are
    the weighted cosines themselves)."""
    w = check_photo_weight(photo_weight)
    combined = w * photo_emb.astype(np.float64) + (1.0 - w) * question_emb.astype(np.float64)
    return np.ascontiguousarray(combined, dtype=np.float32)
