"""The passage index: embed every docstore passage, build a FAISS index, record what it was built from,
and search it (the one place faclip ranks vectors: the index stage, evaluate, train's held-out recall
and search all come here).

`models/index/` holds `passages.faiss` (row i = passage `passage_ids[i]`) and `manifest.json` with the
factory, dim, count, passage-id order and the sha256 of the docstore, of the model weights and of the
index file. Readers call `check_manifest` first, so an index never silently outlives its inputs.
All vectors are L2-normalised and the index uses inner product, so `Flat` is exact cosine search.
"""

import json
import logging
import re
from pathlib import Path

import faiss
import numpy as np

from faclip.errors import FaclipError
from faclip.files import atomic_dir, sha256_file, write_json
from faclip.metrics import hits_from_ids
from faclip.models import embed_passages, weights_sha256
from faclip.tables import load_docstore

logger = logging.getLogger(__name__)

INDEX_FILE = "passages.faiss"
MANIFEST_FILE = "manifest.json"
REBUILD = "run `dvc repro index`"
SEED = 1234  # IVF k-means seed (PQ codebooks keep faiss's fixed default): a rebuild is byte-identical
# Search-time defaults stored in the index file (faiss's own, nprobe=1 / efSearch=16, miss too much).
IVF_NPROBE = 32
HNSW_EF_SEARCH = 128
QUERY_CHUNK = 4096  # queries per FAISS call: keeps each chunk's (chunk, depth) ids/scores small


def _training_points_needed(err: RuntimeError) -> int | None:
    match = re.search(r"number of clusters \((\d+)\)", str(err))
    return int(match.group(1)) if match else None


def build_index(vectors: np.ndarray, factory: str) -> faiss.Index:
    """A FAISS index (inner product) from `faiss.index_factory`, trained on `vectors` if it needs it."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, D)
    count, dim = vectors.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1].split("Error: ")[-1][:160]
        raise FaclipError(f"index.factory={factory!r} is not a FAISS factory string for dim {dim} ({detail}); "
                          "use e.g. Flat, HNSW32 or IVF64,Flat") from None
    if not index.is_trained:
        _train(index, vectors, factory)
    # HNSW links nodes in parallel and the result depends on thread timing: build on one thread.
    threads = faiss.omp_get_max_threads()
    if "HNSW" in factory.upper():
        faiss.omp_set_num_threads(1)
    try:
        index.add(vectors)
    finally:
        faiss.omp_set_num_threads(threads)
    _set_search_defaults(index)
    return index


def _train(index: faiss.Index, vectors: np.ndarray, factory: str) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and len(vectors) < ivf.nlist:
        _too_few(factory, ivf.nlist, len(vectors))
    if ivf is not None:
        ivf.cp.seed = SEED
    try:
        index.train(vectors)
    except RuntimeError as err:
        needed = _training_points_needed(err)
        if needed is None:
            raise FaclipError(f"cannot train index.factory={factory!r} on {len(vectors)} passages "
                              f"({str(err).strip().splitlines()[-1][:160]}); use index.factory=Flat") from None
        _too_few(factory, needed, len(vectors))


def _too_few(factory: str, needed: int, count: int):
    raise FaclipError(f"index.factory={factory!r} needs at least {needed} passages to train, the docstore has "
                      f"{count}; use index.factory=Flat (exact search) or a factory with fewer clusters")


def _set_search_defaults(index: faiss.Index) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, IVF_NPROBE)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = max(hnsw.efSearch, HNSW_EF_SEARCH)


def save_index(index: faiss.Index, out_dir: str | Path, *, factory: str, passage_ids: list[str],
               docstore_sha256: str, model_sha256: str) -> dict:
    """Write passages.faiss + manifest.json into `out_dir` (replaced whole); returns the manifest."""
    assert index.ntotal == len(passage_ids)
    with atomic_dir(out_dir) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        manifest = {
            "factory": factory, "dim": index.d, "count": index.ntotal, "passage_ids": list(passage_ids),
            "docstore_sha256": docstore_sha256, "model_sha256": model_sha256,
            "index_sha256": sha256_file(tmp / INDEX_FILE),
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def build_passage_index(model_dir: str | Path, docstore_path: str | Path, out_dir: str | Path,
                        factory: str, device=None) -> dict:
    """Embed every docstore passage with `model_dir`, index them with `factory`, write `out_dir`."""
    docstore = load_docstore(docstore_path)
    vectors = embed_passages(model_dir, docstore["passage_text"].tolist(), device=device)  # (N, D)
    index = build_index(vectors, factory)
    manifest = save_index(index, out_dir, factory=factory, passage_ids=docstore["id"].tolist(),
                          docstore_sha256=sha256_file(docstore_path), model_sha256=weights_sha256(model_dir))
    logger.info("indexed %d passages (dim %d, %s) in %s", index.ntotal, index.d, factory, out_dir)
    return manifest


def read_manifest(index_dir: str | Path) -> dict:
    """The index manifest; a one-line error when the index is missing."""
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file() or not (Path(index_dir) / INDEX_FILE).is_file():
        raise FaclipError(f"no index found in {index_dir}; {REBUILD}")
    return json.loads(path.read_text(encoding="utf-8"))


def check_manifest(index_dir: str | Path, model_dir: str | Path, docstore_path: str | Path) -> dict:
    """Check the index was built from this docstore and model and is intact; returns the manifest."""
    manifest = read_manifest(index_dir)
    if sha256_file(docstore_path) != manifest["docstore_sha256"]:
        raise FaclipError(f"the index in {index_dir} was built from another docstore than {docstore_path}; {REBUILD}")
    if weights_sha256(model_dir) != manifest["model_sha256"]:
        raise FaclipError(f"the index in {index_dir} was built from another model than {model_dir}; {REBUILD}")
    if sha256_file(Path(index_dir) / INDEX_FILE) != manifest["index_sha256"]:
        raise FaclipError(f"{Path(index_dir) / INDEX_FILE} does not match its manifest (changed or damaged); {REBUILD}")
    return manifest


def load_index(index_dir: str | Path, model_dir: str | Path, docstore_path: str | Path) -> tuple[faiss.Index, dict]:
    """Load the FAISS index after `check_manifest`: (index, manifest)."""
    manifest = check_manifest(index_dir, model_dir, docstore_path)
    index = faiss.read_index(str(Path(index_dir) / INDEX_FILE))
    return index, manifest


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores (Q, k), ids (Q, k)) for L2-normalised queries; k is capped at the index size."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(queries, min(k, index.ntotal))



def search_hits(index: faiss.Index, queries: np.ndarray, depth: int, is_relevant) -> np.ndarray:
    """Relevance in rank order (Q, depth) of what each query retrieves; `is_relevant` as in `hits_from_ids`."""
    parts = [np.zeros((0, min(depth, index.ntotal)), dtype=bool)]
    for start in range(0, len(queries), QUERY_CHUNK):
        _, ids = search(index, queries[start:start + QUERY_CHUNK], depth)  # (chunk, depth)
        parts.append(hits_from_ids(ids, lambda q, items: is_relevant(q + start, items)))
    return np.concatenate(parts)


def recall_vs_exact(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k (brute force over `vectors`, the index's own rows) that `index` returns, averaged
    over queries: 1.0 for Flat, what an approximate factory costs otherwise (autofaiss's recall measure)."""
    assert index.ntotal == len(vectors), "the index must hold `vectors`, row for row"
    k = min(k, index.ntotal)
    if len(queries) == 0 or k == 0:
        return 1.0
    exact_index = build_index(vectors, "Flat")
    found = 0
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = queries[start:start + QUERY_CHUNK]
        _, approx = search(index, chunk, k)  # (chunk, k)
        _, exact = search(exact_index, chunk, k)  # (chunk, k)
        found += int(((approx[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)).any(axis=1).sum())
    return found / (len(queries) * k)
