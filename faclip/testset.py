"""The held-out test set: test-split images as retrieval queries over the docstore passages.

One definition, used by `train` (its recall after every epoch) and by `evaluate`. Relevance is by dish:
an image shows every dish it is paired with (usually one); a passage belongs to the dish the docstore
files it under. The (image, dish) pairs are kept as a sorted key array, not an (images x dishes)
matrix, so memory grows with the pairs, whatever the number of dishes.
"""

import logging
from dataclasses import dataclass, field

import faiss
import numpy as np
import pandas as pd

from faclip.index import search_hits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestSet:
    """Test images (rows of `image_emb`) and passages (in index order), with dish indices into `dishes`."""

    __test__ = False  # not a pytest test class, despite the name

    dishes: list[str]  # (C,) food_id of each dish index
    image_sha256: list[str]  # (M,) sorted
    image_emb: np.ndarray  # (M, D) frozen, L2-normalised image vectors
    shown_image: np.ndarray  # (S,) image row of each (image, dish) pair
    shown_dish: np.ndarray  # (S,) dish index of each (image, dish) pair
    passage_dish: np.ndarray  # (N,) dish index of each passage, in index order
    _keys: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        keys = np.unique(self.shown_image.astype(np.int64) * len(self.dishes) + self.shown_dish)
        object.__setattr__(self, "_keys", keys)

    def shows(self, image: np.ndarray, dish: np.ndarray) -> np.ndarray:
        """Whether test image `image` shows dish `dish` (broadcast over both index arrays)."""
        keys = np.asarray(image, dtype=np.int64) * len(self.dishes) + np.asarray(dish)
        if len(self._keys) == 0:
            return np.zeros(keys.shape, dtype=bool)
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return self._keys[at] == keys

    @property
    def passages_per_dish(self) -> np.ndarray:
        return np.bincount(self.passage_dish, minlength=len(self.dishes))  # (C,)

    @property
    def images_per_dish(self) -> np.ndarray:
        return np.bincount(self.shown_dish, minlength=len(self.dishes))  # (C,)

    @property
    def relevant_passages(self) -> np.ndarray:
        """How many passages are relevant to each test image (M,): those of every dish it shows."""
        weights = self.passages_per_dish[self.shown_dish]
        return np.bincount(self.shown_image, weights=weights, minlength=len(self.image_sha256)).astype(np.int64)


def load_test_set(pairs: pd.DataFrame, passages: pd.DataFrame, image_embeddings) -> TestSet:
    """The test split of `pairs` over `passages` (docstore rows in index order); may hold no images.

    A pair may name a passage the docstore files under another dish (one passage shared by two
    dishes): an image none of whose dishes has a passage has nothing relevant to find, so it is left out.
    """
    test = pairs[pairs["split"] == "test"]
    dishes = sorted(set(passages["food_id"]) | set(test["food_id"]))
    dish_idx = {food_id: i for i, food_id in enumerate(dishes)}
    passage_dish = np.array([dish_idx[f] for f in passages["food_id"]], dtype=np.int64)
    has_passages = np.bincount(passage_dish, minlength=len(dishes)) > 0
    shown = test[["image_sha256", "food_id"]].drop_duplicates()
    shown = shown[has_passages[[dish_idx[f] for f in shown["food_id"]]]] if len(shown) else shown
    left_out = test["image_sha256"].nunique() - shown["image_sha256"].nunique()
    if left_out:
        logger.warning("%d test images left out: no docstore passage is filed under their dish", left_out)
    image_sha256 = sorted(set(shown["image_sha256"]))
    image_row = {sha: i for i, sha in enumerate(image_sha256)}
    dim = image_embeddings.dim
    return TestSet(
        dishes=dishes, image_sha256=image_sha256,
        image_emb=image_embeddings.lookup(image_sha256) if image_sha256 else np.zeros((0, dim), np.float32),
        shown_image=np.array([image_row[s] for s in shown["image_sha256"]], dtype=np.int64),
        shown_dish=np.array([dish_idx[f] for f in shown["food_id"]], dtype=np.int64),
        passage_dish=passage_dish,
    )


def image_to_text_hits(test: TestSet, index: faiss.Index, depth: int, images: slice = slice(None),
                       rows: np.ndarray | None = None) -> np.ndarray:
    """Test images `images` (all by default) search the passage index: relevance in rank order (M, depth).

    `rows` is the passage row of each index row when the index holds only some passages (default: all,
    in index order).
    """
    first = images.start or 0
    dish = test.passage_dish if rows is None else test.passage_dish[rows]  # dish of each index row
    return search_hits(index, test.image_emb[images], depth, lambda q, p: test.shows(q + first, dish[p]))
