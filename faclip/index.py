"""The passage index: embed every docstore passage, build a FAISS index, and record what it was built from.

`models/index/` holds `passages.faiss` (row i = passage `passage_ids[i]`) and `manifest.json` with the
factory, dim, count, passage-id order and the sha256 of the docstore, of the model weights and of the
index file. Readers call `check_manifest` first, so an index never silently outlives its inputs.
All vectors are L2-normalised and the index uses inner product, so `Flat` is exact cosine search.
"""

import hashlib
import json
import logging
import re
from pathlib import Path

import faiss
import numpy as np

from faclip.encode import encode_texts, pick_device
from faclip.errors import FaclipError
from faclip.files import atomic_dir, sha256_file, write_json
from faclip.models import load_text_model, read_model_info
from faclip.tables import load_docstore

logger = logging.getLogger(__name__)

INDEX_FILE = "passages.faiss"
MANIFEST_FILE = "manifest.json"
REBUILD = "run `dvc repro index`"
SEED = 1234  # IVF k-means seed (PQ codebooks keep faiss's fixed default): a rebuild is byte-identical
# Search-time defaults stored in the index file (faiss's own, nprobe=1 / efSearch=16, miss too much).
IVF_NPROBE = 32
HNSW_EF_SEARCH = 128


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 of the model weights: model.safetensors, or all *.safetensors shards in name order."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FaclipError(f"no *.safetensors weights in {model_dir}; run `dvc repro train`")
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def trained_max_len(model_dir: str | Path) -> int | None:
    """The max_text_len a fine-tuned model was trained with (faclip.json params), or None."""
    max_len = read_model_info(model_dir).get("params", {}).get("max_text_len")
    return int(max_len) if max_len else None


def text_max_len(model_dir: str | Path, tokenizer, model) -> int:
    """Token budget for passages: what training used, else the tokenizer's and position table's limit."""
    trained = trained_max_len(model_dir)
    if trained:
        return trained
    limits = [tokenizer.model_max_length]
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:  # RoBERTa offsets positions by padding_idx + 1
        limits.append(positions - 2 if getattr(model.config, "model_type", "") == "roberta" else positions)
    return int(min(limits))


def embed_passages(model_dir: str | Path, texts: list[str], *, max_len: int | None = None,
                   batch_size: int = 64, progress: bool = True, device=None) -> np.ndarray:
    """Load the text model in `model_dir` and encode `texts` (N, D), L2-normalised float32.

    `max_len` defaults to `text_max_len` of that model; `device` to `pick_device()`.
    """
    model, tokenizer = load_text_model(model_dir, device=device or pick_device())
    max_len = max_len or text_max_len(model_dir, tokenizer, model)
    logger.info("encoding %d passages with %s (max_len %d)", len(texts), model_dir, max_len)
    return encode_texts(model, tokenizer, texts, max_len=max_len, batch_size=batch_size, progress=progress)


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
