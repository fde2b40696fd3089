"""Passage retrieval for a photo, a text, or both: the `Retriever` a RAG / VQA system imports, and the search CLI.

    from faclip.search import Retriever
    retriever = Retriever()                      # models/finetuned, models/base/vision, models/index, docstore
    for hit in retriever.by_image("kabab.jpg", k=5):
        print(hit.rank, hit.score, hit.food_id, hit.passage_text)
    hits = retriever.ask("fesenjan.jpg", "این غذا چطور پخته می‌شود؟", k=5)   # a photo and a question

Image queries are encoded by the frozen base vision model (the one the text model was tuned against),
text queries by the fine-tuned text model; both are searched in the passage index. `ask` searches it
with the two combined (`faclip.vqa`).
"""

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from faclip.artifacts import DEFAULT_DOCSTORE, DEFAULT_INDEX, DEFAULT_MODEL, DEFAULT_VISION
from faclip.encode import (CHARS_PER_TOKEN_BOUND, ImageSource, decode_min_side, encode_images, encode_texts, load_rgb,
                           pick_device)
from faclip.errors import FaclipError
from faclip.files import sha256_dir
from faclip.index import load_index, search
from faclip.models import check_same_vision, load_text_model, load_vision_model, text_max_len
from faclip.tables import load_docstore
from faclip.text import normalize_text
from faclip.vqa import CANDIDATES, DEFAULT_PHOTO_WEIGHT, LexicalIndex, check_photo_weight, together_scores

logger = logging.getLogger(__name__)

EMPTY_TEXT = 'the text query is empty; give a few words, e.g. --text "قورمه سبزی"'


@dataclass(frozen=True)
class Hit:
    """One retrieved passage: 1-based rank, cosine score, and the docstore row."""

    rank: int
    score: float
    passage_id: str
    food_id: str
    title: str
    passage_text: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Retriever:
    """Loads the text model, index and docstore once (the vision model on the first image query).

    Safe to share between threads (a web server's workers): model calls take a lock, because a
    tokenizer or model is not re-entrant; decoding a photo and the FAISS search run outside it.
    """

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL, vision_dir: str | Path = DEFAULT_VISION,
                 index_dir: str | Path = DEFAULT_INDEX, docstore_path: str | Path = DEFAULT_DOCSTORE,
                 device=None):
        self.model_dir, self.vision_dir = Path(model_dir), Path(vision_dir)
        self.device = device or pick_device()
        docstore = load_docstore(docstore_path)
        self.index, self.manifest = load_index(index_dir, model_dir, docstore_path)  # checks the manifest hashes
        # Row i of the index is manifest passage_ids[i]; the docstore hash matched, so every id is there.
        self.passages = docstore.set_index("id").loc[self.manifest["passage_ids"]].reset_index()
        self.text_model, self.tokenizer = load_text_model(model_dir, device=self.device)
        self.max_len = text_max_len(model_dir, self.tokenizer, self.text_model)
        self._model_lock = threading.Lock()

    @cached_property
    def _vision(self):
        # The text model was tuned against one vision model: another one would give meaningless scores.
        check_same_vision(self.model_dir, sha256_dir(self.vision_dir), f"the images encoded by {self.vision_dir}")
        return load_vision_model(self.vision_dir, device=self.device)

    def by_image(self, image: ImageSource, k: int = 5, per_dish: int | None = None) -> list[Hit]:
        """The k passages closest to a photo (path, bytes or PIL image); at most `per_dish` per food_id."""
        check_k(k, per_dish)
        return self._search(self._image_query(image), k, per_dish)

    def by_text(self, text: str, k: int = 5, per_dish: int | None = None) -> list[Hit]:
        """The k passages closest to a text query; at most `per_dish` per food_id."""
        check_k(k, per_dish)
        check_text_query(text)
        return self._search(self._text_query(text), k, per_dish)

    def ask(self, image: ImageSource, question: str, k: int = 5, per_dish: int | None = None,
            photo_weight: float = DEFAULT_PHOTO_WEIGHT) -> list[Hit]:
        """The k passages that best answer a question about a photo: the photo's best candidates re-ranked by
        photo_weight·cos(photo, p) + (1 − photo_weight)·lexical(question, p) (`faclip.vqa`); at most `per_dish`
        per food_id. Each half is checked as `by_image` / `by_text` check it, the question first."""
        check_k(k, per_dish)
        check_text_query(question)
        photo_weight = check_photo_weight(photo_weight)
        question_scores = self._lexical.scores(question)  # (N,)
        return self._search(self._image_query(image), k, per_dish, depth=CANDIDATES,
                            rerank=lambda scores, rows: together_scores(scores, rows, question_scores, photo_weight))

    @cached_property
    def _lexical(self) -> LexicalIndex:
        # Built on the first question (~3.5 s per 10k passages on 2 busy cores), so photo and text searches never pay.
        return LexicalIndex(self.passages["passage_text"].tolist(), self.max_len * CHARS_PER_TOKEN_BOUND)

    def _image_query(self, image: ImageSource) -> np.ndarray:
        """A photo (path, bytes or PIL image) as a query vector (1, D), decoded as `embed` decodes it."""
        with self._model_lock:
            model, processor = self._vision
        image = load_rgb(image, decode_min_side(processor))  # unreadable: one line
        with self._model_lock:
            return encode_images(model, processor, [image])  # (1, D)

    def _text_query(self, text: str) -> np.ndarray:
        """A text (a dish name, a question) as a query vector (1, D), cut and encoded as passages are."""
        with self._model_lock:
            return encode_texts(self.text_model, self.tokenizer, [text], max_len=self.max_len)  # (1, D)

    def _search(self, query: np.ndarray, k: int, per_dish: int | None, depth: int = 0, rerank=None) -> list[Hit]:
        # With a per-dish cap the top k passages may hold too few dishes: widen the search until k
        # passages pass the cap or the whole index was searched. `rerank(scores, rows) -> (scores, rows)`
        # reorders the (at least `depth`) passages fetched before they become hits.
        fetch = max(k if per_dish is None else k * 4, depth)
        fetch = min(fetch, self.index.ntotal)
        while True:
            scores, ids = search(self.index, query, fetch)  # (1, fetch) each
            scores, ids = (scores[0], ids[0]) if rerank is None else rerank(scores[0], ids[0])
            hits, per_food = [], {}
            for score, i in zip(scores.tolist(), ids.tolist()):
                if i < 0:  # an approximate index may return fewer than k results
                    continue
                row = self.passages.iloc[i]
                if per_dish is not None:
                    if per_food.get(row["food_id"], 0) >= per_dish:
                        continue
                    per_food[row["food_id"]] = per_food.get(row["food_id"], 0) + 1
                hits.append(Hit(rank=len(hits) + 1, score=float(score), passage_id=row["id"],
                                food_id=row["food_id"], title=row["title"], passage_text=row["passage_text"]))
                if len(hits) == k:
                    return hits
            if per_dish is None or fetch >= self.index.ntotal:
                return hits
            fetch = min(fetch * 4, self.index.ntotal)


def check_k(k, per_dish=None) -> None:
    """k (and a per-dish cap, when given) must be whole numbers of at least 1."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise FaclipError(f"k={k!r} is invalid; ask for at least 1 passage")
    if per_dish is not None and (isinstance(per_dish, bool) or not isinstance(per_dish, int) or per_dish < 1):
        raise FaclipError(f"per_dish={per_dish!r} is invalid; keep at least 1 passage per dish, or leave it out")


def check_text_query(text) -> None:
    """A text query must have something left to read after normalisation (not just spaces or ZWNJ)."""
    if not isinstance(text, str) or not normalize_text(text):
        raise FaclipError(EMPTY_TEXT)


def format_hits(hits: list[Hit], as_json: bool = False) -> str:
    """Hits as text (rank, score, food_id, title, then the passage) or as a JSON list."""
    if as_json:
        return json.dumps([hit.to_dict() for hit in hits], ensure_ascii=False, indent=2)
    lines = []
    for hit in hits:
        lines.append(f"{hit.rank}. {hit.score:.4f}  {hit.food_id}  |  {hit.title}")
        lines.append(f"   {hit.passage_text}")
    return "\n".join(lines)
