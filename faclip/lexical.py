"""The lexical index: BM25 over every docstore passage, built once by the `lexical` stage and loaded
(memory-mapped) with the FAISS index by `Retriever` and `evaluate`. Nothing is built at query time.

Scoring is bm25s's: Lucene's BM25 (k1 = 1.5, b = 0.75, the library's defaults) over our own terms (`terms`),
the character 3-, 4- and 5-grams of each word of faclip's Persian identity form (`faclip.text.identity_key`:
Arabic letters and digits folded, ZWNJ as a space, no diacritics), each word padded with a space either side.
Character n-grams match «سرو می‌کنند» to «سرو می‌شود» and «کباب‌ها» to «کباب». No stopwords: a short
question's every word counts. BENCHMARKS.md ("The lexical half") compares these terms and BM25 with the
TF-IDF cosine faclip used before; this scored best on the train split's questions.

`models/lexical/` holds bm25s's files (the score matrix in CSC form as three .npy arrays, `vocab.index.json`,
`params.index.json`) and `manifest.json`: the terms, the passage count, the sha256 of the docstore, of its
ordered passage ids (row i is docstore row i, as in the FAISS index) and of every bm25s file, so a stale,
edited or damaged index is refused in one line.
"""

import json
import logging
import re
from array import array
from pathlib import Path

import bm25s
import numpy as np

from faclip.errors import FaclipError
from faclip.files import atomic_dir, sha256_file, write_json
from faclip.tables import load_docstore, passage_ids_sha256
from faclip.text import identity_key

logging.getLogger("bm25s").setLevel(logging.WARNING)  # its DEBUG lines say nothing faclip's log does not

MANIFEST_FILE = "manifest.json"
REBUILD = "run `dvc repro`"
TERMS = "char-3-5-grams"  # what `terms` yields: recorded in the manifest, so an index of other terms is refused
NGRAMS = (3, 4, 5)
K1, B = 1.5, 0.75  # bm25s's (and Lucene's) defaults
_WORD = re.compile(r"\w+")
CHUNK = 10_000  # passages per array of term ids while building
POSTINGS_STEP = 1 << 22  # postings placed at once while laying the index out by term
# bm25s writes these; each one's sha256 is in the manifest.
BM25_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
              "params.index.json")


def word_terms(word: str) -> list[str]:
    """The character 3-, 4- and 5-grams of one word padded with a space each side (a 2-letter word: its 3- and
    4-gram)."""
    padded = f" {word} "
    return [padded[i:i + n] for n in NGRAMS for i in range(len(padded) - n + 1)]


def terms(text: str) -> list[str]:
    """The BM25 terms of a text: `word_terms` of each word of its identity form, in order."""
    return [term for word in _WORD.findall(identity_key(text)) for term in word_terms(word)]


class _TermIds:
    """Every passage's term ids, held as int32 arrays of CHUNK passages each (a list of Python ints per passage
    would cost ~10x the memory; one growing array, 2x at its last resize); iterating it yields one passage's ids
    as a list, as bm25s reads them."""

    def __init__(self):
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (ids, starts): passage i's ids are ids[starts[i]:starts[i + 1]]
        self.count = 0

    def add_chunk(self, ids: array, starts: array) -> None:
        self.chunks.append((np.frombuffer(ids, dtype=np.int32), np.frombuffer(starts, dtype=np.int64)))
        self.count += len(starts) - 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for ids, starts in self.chunks:
            for i in range(len(starts) - 1):
                yield ids[starts[i]:starts[i + 1]].tolist()


def term_ids(texts) -> tuple[_TermIds, dict[str, int]]:
    """The term ids of each text and the vocabulary {term: id}, ids in order of first appearance
    (deterministic). A word's terms are computed once: a corpus repeats its words far more than it has them."""
    vocab: dict[str, int] = {}
    known: dict[str, list[int]] = {}  # word -> its term ids
    passages = _TermIds()
    ids, starts = array("i"), array("q", [0])
    for text in texts:
        for word in _WORD.findall(identity_key(text)):
            word_ids = known.get(word)
            if word_ids is None:
                word_ids = known[word] = [vocab.setdefault(term, len(vocab)) for term in word_terms(word)]
            ids.extend(word_ids)
        starts.append(len(ids))
        if len(starts) > CHUNK:
            passages.add_chunk(ids, starts)
            ids, starts = array("i"), array("q", [0])
    passages.add_chunk(ids, starts)
    return passages, vocab


class _BM25(bm25s.BM25):
    """bm25s's BM25, with its documented hook for the sparse layout (`_np_csc`, which bm25s swaps for a numba one)
    given a builder whose memory is the output's: bm25s's own sorts the (column, row) keys of every posting at once,
    ~50 bytes a posting at its peak (25 GB at a million passages)."""

    @staticmethod
    def _np_csc(data, rows, cols, shape):
        return postings_by_term(data, rows, cols, shape)


def postings_by_term(data: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]):
    """The CSC layout of (data, rows, cols) triples that come in row order: (data, row indices) grouped by column,
    rows ascending within a column, and indptr (V + 1,), exactly as bm25s lays it out; placed POSTINGS_STEP triples
    at a time, each by a stable sort of its columns, so only the output and one step are held."""
    indptr = np.zeros(shape[1] + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=shape[1]), out=indptr[1:])
    next_free = indptr[:-1].copy()  # (V,) where each column's next posting goes
    out_data, out_rows = np.empty_like(data), np.empty_like(rows)
    for start in range(0, len(cols), POSTINGS_STEP):
        step_cols = cols[start:start + POSTINGS_STEP]
        order = np.argsort(step_cols, kind="stable")  # rows stay ascending within a column
        sorted_cols = step_cols[order]
        rank = np.arange(len(sorted_cols)) - np.searchsorted(sorted_cols, sorted_cols)  # within its column, this step
        places = next_free[sorted_cols] + rank
        out_data[places] = data[start:start + POSTINGS_STEP][order]
        out_rows[places] = rows[start:start + POSTINGS_STEP][order]
        next_free += np.bincount(step_cols, minlength=shape[1])
    return out_data, out_rows, indptr


def build_lexical_index(docstore_path: str | Path, out_dir: str | Path) -> dict:
    """BM25 over every docstore passage, in docstore order, written to `out_dir` with its manifest; returns it."""
    docstore = load_docstore(docstore_path)
    ids, vocab = term_ids(docstore["passage_text"])
    retriever = _BM25(k1=K1, b=B)
    retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    manifest = {"terms": TERMS, "k1": K1, "b": B, "count": len(docstore), "vocabulary": len(retriever.vocab_dict),
                "postings": int(len(retriever.scores["data"])), "docstore_sha256": sha256_file(docstore_path),
                "passage_ids_sha256": passage_ids_sha256(docstore["id"].tolist())}
    with atomic_dir(out_dir) as tmp:
        retriever.save(tmp, show_progress=False)
        manifest["files_sha256"] = {name: sha256_file(tmp / name) for name in BM25_FILES}
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


class LexicalIndex:
    """A built lexical index, memory-mapped: `scores(text)` is the BM25 score of the text against every passage."""

    def __init__(self, lexical_dir: str | Path, *, docstore_sha256: str, passage_ids_sha256: str):
        """Load `lexical_dir` after checking it was built from this docstore, in this order (the FAISS manifest's
        hashes) and is intact."""
        self.dir = Path(lexical_dir)
        manifest = read_lexical_manifest(self.dir)
        if manifest["docstore_sha256"] != docstore_sha256 or manifest["passage_ids_sha256"] != passage_ids_sha256:
            raise FaclipError(f"the lexical index in {self.dir} was built from another docstore than the passage "
                              f"index; {REBUILD}")
        for name, digest in manifest["files_sha256"].items():
            if not (self.dir / name).is_file():
                raise FaclipError(f"{self.dir / name} is missing; {REBUILD} or `dvc checkout {self.dir}`")
            if sha256_file(self.dir / name) != digest:
                raise FaclipError(f"{self.dir / name} does not match {self.dir / MANIFEST_FILE} (changed or "
                                  f"damaged); {REBUILD} or `dvc checkout {self.dir}`")
        try:
            self.bm25 = bm25s.BM25.load(self.dir, mmap=True, show_progress=False, verbosity=0)
        except (OSError, ValueError) as err:
            raise FaclipError(f"cannot load the lexical index in {self.dir} ({type(err).__name__}); {REBUILD}") from None
        self.count = manifest["count"]

    def scores(self, text: str) -> np.ndarray:
        """BM25 of a query against each passage (N,) float32, 0 where no term is shared. The query is what the text
        encoder reads too (`faclip.text.query_text`: normalised, then cut): callers read it once for both."""
        vocab = self.bm25.vocab_dict
        ids = [vocab[term] for term in terms(text) if term in vocab]
        if not ids:
            return np.zeros(self.count, dtype=np.float32)
        return self.bm25.get_scores_from_ids(ids)



def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of one query's scores of every passage (N,), leaving out 0 (no term shared): (scores, rows),
    each (<= k,), best first, a tie in row order."""
    rows = np.flatnonzero(scores > 0)
    if len(rows) > k:
        rows = rows[np.argpartition(-scores[rows], k - 1)[:k]]
    rows = rows[np.lexsort((rows, -scores[rows]))]
    return scores[rows], rows


def read_lexical_manifest(lexical_dir: str | Path) -> dict:
    """The lexical index's manifest; one line when it is missing, damaged or of other terms."""
    path = Path(lexical_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FaclipError(f"no lexical index found in {lexical_dir}; {REBUILD}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FaclipError(f"{path} is damaged (not JSON: {type(err).__name__}); {REBUILD}") from None
    fields = {"terms": str, "count": int, "docstore_sha256": str, "passage_ids_sha256": str, "files_sha256": dict}
    problem = next((key for key, kind in fields.items()
                    if not isinstance(manifest, dict) or not isinstance(manifest.get(key), kind)), None)
    if problem is None and set(manifest["files_sha256"]) != set(BM25_FILES):
        problem = "files_sha256"
    if problem is not None:
        raise FaclipError(f"{path} is damaged or from another faclip ({problem!r} missing or wrong); {REBUILD}")
    if manifest["terms"] != TERMS:
        raise FaclipError(f"the lexical index in {lexical_dir} holds {manifest['terms']!r} terms, this faclip scores "
                          f"{TERMS!r}; {REBUILD}")
    return manifest
