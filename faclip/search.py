"""Passage retrieval for a photo, a text, or both: the `Retriever` a RAG / VQA system imports, and the search CLI.

    from faclip.search import Retriever
    retriever = Retriever()                      # models/finetuned, models/base/vision, models/index, docstore
    for hit in retriever.by_image("kabab.jpg", k=5):
        print(hit.rank, hit.score, hit.food_id, hit.passage_text)
    hits = retriever.ask("fesenjan.jpg", "این غذا چطور پخته می‌شود؟", k=5)   # a photo and a question

Image queries are encoded by the frozen base vision model (the one the text model was tuned against) and
searched in the passage index. A text query is ranked by the fine-tuned text model's index search fused with
BM25 (the lexical index), and `ask` re-ranks the photo's best passages with the question's BM25 (`faclip.vqa`).
Both indexes are built by `dvc repro`; nothing is built at query time.
"""

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from faclip.artifacts import DEFAULT_DOCSTORE, DEFAULT_INDEX, DEFAULT_MODEL, DEFAULT_VISION, LEXICAL_DIR_NAME
from faclip.batching import Batcher, PixelBudget
from faclip.encode import (CHARS_PER_TOKEN_BOUND, ImageSource, decode_min_side, encode_pixels, encode_texts,
                           load_rgb, pick_device, preprocess_image, tokenize)
from faclip.errors import FaclipError
from faclip.files import MAX_IMAGE_PIXELS, sha256_dir
from faclip.index import load_index, search
from faclip.models import check_same_vision, load_text_model, load_vision_model, text_max_len
from faclip.tables import load_docstore
from faclip.text import MAX_QUERY_CHARS, query_text
from faclip.lexical import LexicalIndex, top_k
from faclip.vqa import (CANDIDATES, DEFAULT_PHOTO_WEIGHT, DEFAULT_TEXT_WEIGHT, check_photo_weight, check_text_weight,
                        fuse, together_scores)

logger = logging.getLogger(__name__)

# Pixels being decoded at once, in all threads (about 8 bytes each at the peak of a PNG decode: ~0.5 GB).
DECODE_BUDGET_PIXELS = MAX_IMAGE_PIXELS
# A batch's budget when serving: padded tokens (32 question-sized texts, or 4 of 512 tokens), and pixels (32
# photos at CLIP's 224 x 224).
BATCH_TOKENS = 2048
BATCH_PIXELS = 32 * 224 * 224


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


@dataclass(frozen=True)
class Query:
    """One query of a batch: a text, or a photo already preprocessed to the vision model's input (3, H, W),
    optionally with a question about it (`ask`: the photo's candidates re-ranked with the question)."""

    text: str | None = None
    pixels: torch.Tensor | None = None
    question: str | None = None
    k: int = 5
    per_dish: int | None = None
    photo_weight: float = DEFAULT_PHOTO_WEIGHT

    @property
    def kind(self) -> str:
        return "image" if self.pixels is not None else "text"


class Retriever:
    """Loads the text model, both indexes and the docstore once (the vision model on the first image query).

    Safe to share between threads (a web server's workers): model calls take a lock, because a
    tokenizer or model is not re-entrant; decoding a photo runs outside it, at most `decode_budget`
    pixels at once. `start_batching()` (what `faclip serve` does) encodes concurrent queries together.
    """

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL, vision_dir: str | Path = DEFAULT_VISION,
                 index_dir: str | Path = DEFAULT_INDEX, docstore_path: str | Path = DEFAULT_DOCSTORE,
                 lexical_dir: str | Path | None = None, device=None, decode_budget: int = DECODE_BUDGET_PIXELS,
                 text_weight: float = DEFAULT_TEXT_WEIGHT):
        self.model_dir, self.vision_dir = Path(model_dir), Path(vision_dir)
        self.device = device or pick_device()
        docstore = load_docstore(docstore_path)
        self.index, self.manifest = load_index(index_dir, model_dir, docstore_path)  # checks the manifest hashes
        # Row i of the index is manifest passage_ids[i]; the docstore hash matched, so every id is there.
        self.passages = docstore.set_index("id").loc[self.manifest["passage_ids"]].reset_index()
        # BM25, memory-mapped (by default `lexical/` beside the index folder, as dvc.yaml puts it): bound to the
        # same docstore and passage order as the FAISS index
        lexical_dir = Path(index_dir).parent / LEXICAL_DIR_NAME if lexical_dir is None else lexical_dir
        self.lexical = LexicalIndex(lexical_dir, docstore_sha256=self.manifest["docstore_sha256"],
                                    passage_ids_sha256=self.manifest["passage_ids_sha256"])
        self.text_weight = check_text_weight(text_weight)
        self.text_model, self.tokenizer = load_text_model(model_dir, device=self.device)
        self.max_len = text_max_len(model_dir, self.tokenizer, self.text_model)
        self._model_lock = threading.Lock()
        self.decode_budget = PixelBudget(decode_budget)
        self._batchers: dict[str, Batcher] = {}
        # Called after each encode as on_batch(kind, queries, seconds): how `serve` exports batch metrics.
        self.on_batch = None

    @cached_property
    def _vision(self):
        # The text model was tuned against one vision model: another one would give meaningless scores.
        check_same_vision(self.model_dir, sha256_dir(self.vision_dir), f"the images encoded by {self.vision_dir}")
        return load_vision_model(self.vision_dir, device=self.device)

    @cached_property
    def _lexical(self) -> LexicalIndex:
        # Built on the first question (~3.5 s per 10k passages on 2 busy cores), so photo and text searches never pay.
        return LexicalIndex(self.passages["passage_text"].tolist(), self.max_len * CHARS_PER_TOKEN_BOUND)

    def start_batching(self, max_batch: int = 32, *, max_batch_tokens: int = BATCH_TOKENS,
                       max_batch_pixels: int = BATCH_PIXELS, max_wait_ms: float = 0.0) -> None:
        """From now on concurrent `by_text` calls are encoded in one forward pass, and so are the photos of
        concurrent `by_image` / `ask` calls.

        A worker thread per kind runs `search_batch` on what is waiting when the model is free (`Batcher`): at
        most `max_batch` queries, and at most `max_batch_tokens` padded tokens (texts of similar length go
        together) or `max_batch_pixels` pixels. A query's hits do not depend on what it was batched with."""
        budgets = {"text": max_batch_tokens, "image": max_batch_pixels}
        for kind in ("text", "image"):
            self._batchers[kind] = Batcher(lambda queries: self.search_batch(queries), max_batch=max_batch,
                                           budget=budgets[kind], size=self._batch_size, max_wait_ms=max_wait_ms,
                                           name=f"faclip-{kind}-batcher")

    def _batch_size(self, query: Query) -> int:
        # What a query takes of its batch's budget: its tokens (on the batcher's thread, the only one that uses
        # the tokenizer while batching), or its pixels once preprocessed.
        if query.kind == "text":
            return len(tokenize(self.tokenizer, [query.text], self.max_len, padding=False)["input_ids"][0])
        return int(query.pixels.shape[-1] * query.pixels.shape[-2])

    def by_image(self, image: ImageSource, k: int = 5, per_dish: int | None = None) -> list[Hit]:
        """The k passages closest to a photo (path, bytes or PIL image); at most `per_dish` per food_id."""
        check_k(k, per_dish)
        return self._run(Query(pixels=self.image_pixels(image), k=k, per_dish=per_dish))

    def by_text(self, text: str, k: int = 5, per_dish: int | None = None) -> list[Hit]:
        """The k passages that best match a text query: the text encoder's ranking fused with BM25's by
        text_weight·dense + (1 − text_weight)·lexical, each min-max normalised (`faclip.vqa.fuse`); at most
        `per_dish` per food_id."""
        check_k(k, per_dish)
        text = query_text(text, self.max_len * CHARS_PER_TOKEN_BOUND)
        return self._run(Query(text=text, k=k, per_dish=per_dish))

    def ask(self, image: ImageSource, question: str, k: int = 5, per_dish: int | None = None,
            photo_weight: float = DEFAULT_PHOTO_WEIGHT) -> list[Hit]:
        """The k passages that best answer a question about a photo: the photo's best candidates re-ranked by
        photo_weight·photo + (1 − photo_weight)·BM25(question), each min-max normalised (`faclip.vqa`); at most `per_dish`
        per food_id. Each half is checked as `by_image` / `by_text` check it, the question first."""
        check_k(k, per_dish)
        question = query_text(question, self.max_len * CHARS_PER_TOKEN_BOUND)
        photo_weight = check_photo_weight(photo_weight)
        return self._run(Query(pixels=self.image_pixels(image), question=question, k=k, per_dish=per_dish,
                               photo_weight=photo_weight))

    def image_pixels(self, image: ImageSource) -> torch.Tensor:
        """A photo decoded as `embed` decodes it and preprocessed for the vision model (3, H, W); unreadable: one line.

        At most `decode_budget` pixels are decoded at once, in all threads (`load_rgb`'s budget)."""
        vision = self.__dict__.get("_vision")  # loaded: no lock, so photos preprocess while a batch encodes
        if vision is None:
            with self._model_lock:
                vision = self._vision
        processor = vision[1]
        rgb = load_rgb(image, decode_min_side(processor), budget=self.decode_budget)
        return preprocess_image(processor, rgb)

    def _run(self, query: Query) -> list[Hit]:
        batcher = self._batchers.get(query.kind)
        return batcher.submit(query) if batcher is not None else self.search_batch([query])[0]

    def search_batch(self, queries: list[Query]) -> list[list[Hit]]:
        """Hits for each query: the texts encoded in one forward pass, the photos in another, one search per depth."""
        vectors = np.zeros((len(queries), self.index.d), dtype=np.float32)
        for kind in ("text", "image"):
            rows = [i for i, query in enumerate(queries) if query.kind == kind]
            if rows:
                vectors[rows] = self._encode(kind, [queries[i] for i in rows])
        return self._search(vectors, queries)

    def _encode(self, kind: str, queries: list[Query]) -> np.ndarray:
        with self._model_lock:
            start = time.perf_counter()  # inside the lock: the forward pass, not the wait for it
            if kind == "text":
                vectors = encode_texts(self.text_model, self.tokenizer, [q.text for q in queries],
                                       max_len=self.max_len, batch_size=len(queries))  # (B, D)
            else:
                model, _ = self._vision
                vectors = encode_pixels(model, torch.stack([q.pixels for q in queries]))  # (B, D)
            seconds = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(kind, len(queries), seconds)
        return vectors

    def _search(self, vectors: np.ndarray, queries: list[Query]) -> list[list[Hit]]:
        # Queries asking for the same depth are searched together. With a per-dish cap the top k passages may
        # hold too few dishes: widen that query's search until k passages pass the cap or the whole index was
        # searched. A text query or a question fuses at least CANDIDATES passages of each half. A query's depth
        # depends on its own k, per_dish and kind only, so its hits do not depend on its batch-mates (an
        # approximate index may answer differently at another depth).
        ntotal = self.index.ntotal
        results: list[list[Hit] | None] = [None] * len(queries)
        # BM25 of every passage (N,) for each text query and each question: read from the lexical index, never built
        # (the text and the question are already read as the encoder reads them: `query_text` in by_text / ask)
        lexical = {i: self.lexical.scores(q.question or q.text) for i, q in enumerate(queries)
                   if q.question or q.kind == "text"}
        depth = {i: min(max(q.k if q.per_dish is None else q.k * 4, CANDIDATES if i in lexical else 0), ntotal)
                 for i, q in enumerate(queries)}
        pending = list(range(len(queries)))
        while pending:
            by_depth: dict[int, list[int]] = {}
            for i in pending:
                by_depth.setdefault(depth[i], []).append(i)
            pending = []
            for fetch, rows in by_depth.items():
                scores, ids = search(self.index, vectors[rows], fetch)  # (len(rows), fetch) each
                for row, i in enumerate(rows):
                    query, found = queries[i], (scores[row], ids[row])
                    if query.question:
                        found = together_scores(*found, lexical[i], query.photo_weight)
                    elif i in lexical:
                        found = fuse(*found, *top_k(lexical[i], fetch), self.text_weight)
                    hits = self._hits(*found, query.k, query.per_dish)
                    if len(hits) == query.k or query.per_dish is None or fetch >= ntotal:
                        results[i] = hits
                    else:
                        depth[i] = min(fetch * 4, ntotal)
                        pending.append(i)
        return results

    def _hits(self, scores: np.ndarray, ids: np.ndarray, k: int, per_dish: int | None) -> list[Hit]:
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
                break
        return hits


def check_k(k, per_dish=None) -> None:
    """k (and a per-dish cap, when given) must be whole numbers of at least 1."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise FaclipError(f"k={k!r} is invalid; ask for at least 1 passage")
    if per_dish is not None and (isinstance(per_dish, bool) or not isinstance(per_dish, int) or per_dish < 1):
        raise FaclipError(f"per_dish={per_dish!r} is invalid; keep at least 1 passage per dish, or leave it out")


def check_text_query(text) -> None:
    """A text query must have something left to read after normalisation, and not be too long (`query_text`)."""
    query_text(text, MAX_QUERY_CHARS)


def format_hits(hits: list[Hit], as_json: bool = False) -> str:
    """Hits as text (rank, score, food_id, title, then the passage) or as a JSON list."""
    if as_json:
        return json.dumps([hit.to_dict() for hit in hits], ensure_ascii=False, indent=2)
    lines = []
    for hit in hits:
        lines.append(f"{hit.rank}. {hit.score:.4f}  {hit.food_id}  |  {hit.title}")
        lines.append(f"   {hit.passage_text}")
    return "\n".join(lines)
