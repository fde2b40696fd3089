"""The passage index: embed every docstore passage, build a FAISS index, record what it was built from,
and search it (the one place faclip ranks vectors: the index stage, evaluate, train's held-out recall
and search all come here).

`models/index/` holds `passages.faiss` (row i = passage `passage_ids[i]`) and `manifest.json` with the
factory, dim, count, passage-id order and the sha256 of the docstore, of the model weights and of the
index file. Readers call `check_manifest` first, so an index never silently outlives its inputs.
All vectors are L2-normalised and the index uses inner product, so `Flat` is exact cosine search.

`index.factory: auto` chooses the factory as autofaiss does (`choose_factory`: Flat while exact search
is fast enough, then HNSW, then IVF with ~4 sqrt(N) lists, PQ codes only when the memory budget demands)
and tunes its search-time knob (`nprobe` / `efSearch`) on held-out queries until `recall_vs_exact@10`
reaches `index.recall_target`. The manifest records what was chosen and why, the knob and the measured
recall (`factory`, `factory_requested`, `factory_reason`, `search_params`, `recall_vs_exact@10`,
`recall_queries`); `load_index` applies the manifest's `search_params`, so every reader searches alike.
"""

import hashlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np

from faclip.errors import FaclipError, outputs_hint
from faclip.files import atomic_dir, sha256_file, write_json
from faclip.metrics import hits_from_ids
from faclip.params import shown
from faclip.tables import load_docstore, load_pairs, passage_ids_sha256

# faclip.embed and faclip.models (torch, transformers: ~10 s to import on busy cores) are imported where
# used, so that check_params' factory probe, which needs only FAISS, starts in about a second.

logger = logging.getLogger(__name__)

INDEX_FILE = "passages.faiss"
MANIFEST_FILE = "manifest.json"
REBUILD = "run `dvc repro index`"
SEED = 1234  # IVF k-means seed (PQ codebooks keep faiss's fixed default): a rebuild is byte-identical
# Search-time defaults stored in the index file (faiss's own, nprobe=1 / efSearch=16, miss too much).
IVF_NPROBE = 32
HNSW_EF_SEARCH = 128
QUERY_CHUNK = 4096  # queries per FAISS call: keeps each chunk's (chunk, depth) ids/scores small
# index.factory: auto. Exact search costs ~0.2 ns per (passage x dim) on one core (BENCHMARKS.md, section 3),
# so Flat stays while passages x dim <= 5e7 (~10 ms a query). HNSW's build runs on one thread (determinism):
# ~3 min per 1M passages at 128-d, ~12 min at 768-d, so IVF takes over beyond a million.
AUTO = "auto"
FLAT_MAX_WORK = 50_000_000
HNSW_MAX_PASSAGES = 1_000_000
HNSW_M = 32
MIN_POINTS_PER_LIST = 39  # faiss's k-means wants >= 39 training points per centroid
RECALL_K = 10
TUNE_QUERIES = 1000  # held-out queries the knob is tuned on (a seeded sample of the train split's images)
EF_SEARCH_MAX = 4096


def _faiss_message(err: RuntimeError) -> str:
    """The last line of a FAISS error, without its C++ signature: what failed, in a few words."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    match = re.search(r" at \S+:\d+: (?:Error: )?(.*)$", line)
    return (match.group(1) if match else line.split("Error: ")[-1])[:160]


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
        detail = _faiss_message(err)
        raise FaclipError(f"index.factory={factory!r} is not a FAISS factory string for dim {dim} ({detail}); "
                          "use e.g. Flat, HNSW32 or IVF64,Flat") from None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.nlist < 1:
        raise FaclipError(f"index.factory={factory!r} has {ivf.nlist} inverted lists; use IVF<n> with n >= 1, "
                          "e.g. IVF64,Flat")
    if not index.is_trained:
        _train(index, vectors, factory)
    # HNSW links nodes in parallel and the result depends on thread timing: build on one thread.
    threads = faiss.omp_get_max_threads()
    if "HNSW" in factory.upper():
        faiss.omp_set_num_threads(1)
    try:
        index.add(vectors)
    except RuntimeError as err:  # NSG needs > 100 vectors, IDMap wants ids...
        raise FaclipError(f"cannot build index.factory={factory!r} on {count} passages "
                          f"({_faiss_message(err)}); use index.factory=Flat or auto") from None
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
                              f"({_faiss_message(err)}); use index.factory=Flat") from None
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
               docstore_sha256: str, model_sha256: str, search_facts: dict | None = None) -> dict:
    """Write passages.faiss + manifest.json into `out_dir` (replaced whole); returns the manifest.

    `search_facts` (what `tune_index` returns: the choice, its reason, the knob, the measured recall) are
    recorded too."""
    assert index.ntotal == len(passage_ids) and len(set(passage_ids)) == len(passage_ids)
    with atomic_dir(out_dir) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        manifest = {
            "factory": factory, "dim": index.d, "count": index.ntotal, **(search_facts or {}),
            "passage_ids": list(passage_ids), "passage_ids_sha256": passage_ids_sha256(passage_ids),
            "docstore_sha256": docstore_sha256, "model_sha256": model_sha256,
            "index_sha256": sha256_file(tmp / INDEX_FILE),
        }
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def build_passage_index(model_dir: str | Path, docstore_path: str | Path, out_dir: str | Path,
                        factory: str, *, max_memory_mb: int = 4096, recall_target: float = 0.95,
                        nprobe: int | None = None, efSearch: int | None = None,
                        queries: np.ndarray | None = None, queries_label: str = "held-out queries",
                        device=None) -> dict:
    """Embed every docstore passage with `model_dir`, index them with `factory` (or `auto`), write `out_dir`.

    `queries` (Q, D) are held-out query vectors the search knob is tuned and recall measured on (the
    passages themselves when None)."""
    from faclip.models import embed_passages, weights_sha256

    docstore = load_docstore(docstore_path)  # ids checked unique: row i of the index is passage_ids[i]
    vectors = embed_passages(model_dir, docstore["passage_text"].tolist(), device=device)  # (N, D)
    requested = factory
    reason = "given as index.factory"
    if factory == AUTO:
        factory, reason = choose_factory(len(vectors), vectors.shape[1], max_memory_mb)
    index = build_index(vectors, factory)
    if requested == AUTO:  # a knob given for a kind of index that auto did not choose is left unused
        knob = search_knob(index)
        nprobe, efSearch = (nprobe if knob == "nprobe" else None), (efSearch if knob == "efSearch" else None)
    facts = tune_index(index, vectors, queries, recall_target=recall_target if requested == AUTO else None,
                       nprobe=nprobe, efSearch=efSearch, queries_label=queries_label)
    facts = {"factory_requested": requested, "factory_reason": reason, **facts}
    manifest = save_index(index, out_dir, factory=factory, passage_ids=docstore["id"].tolist(),
                          docstore_sha256=sha256_file(docstore_path), model_sha256=weights_sha256(model_dir),
                          search_facts=facts)
    logger.info("indexed %d passages (dim %d, %s, %s; recall_vs_exact@%d %.4f) in %s", index.ntotal, index.d,
                factory, facts["search_params"] or "no search knob", RECALL_K, facts[f"recall_vs_exact@{RECALL_K}"],
                out_dir)
    return manifest


# --- index.factory: auto -----------------------------------------------------------------------------


def held_out_queries(pairs_path: str | Path, image_embeddings_path: str | Path) -> np.ndarray:
    """The train split's distinct image vectors (M, D): image->passage queries that `evaluate`'s test photos are
    not among, so the knob is tuned on other queries than those its recall is reported on."""
    from faclip.embed import load_image_embeddings

    pairs = load_pairs(pairs_path)
    shas = sorted(set(pairs.loc[pairs["split"] == "train", "image_sha256"]))
    return load_image_embeddings(image_embeddings_path).lookup(shas)  # (M, D)


def _ivf_lists(count: int) -> int:
    # ~4 sqrt(N) lists (autofaiss, FAISS wiki), but never fewer than 39 training points per list.
    return max(1, min(int(round(4 * math.sqrt(count))), count // MIN_POINTS_PER_LIST))


def index_bytes(factory_kind: str, count: int, dim: int, *, nlist: int = 0, pq_m: int = 0) -> int:
    """Estimated memory of an index of `count` vectors: 'flat', 'hnsw', 'ivf_flat' or 'ivf_pq' (8-bit codes)."""
    if factory_kind == "flat":
        return 4 * dim * count
    if factory_kind == "hnsw":  # vectors + level-0 links (2M int32) + upper levels (~1/M of nodes) and levels
        return count * (4 * dim + 4 * 2 * HNSW_M + 4 * HNSW_M // 2 + 16)
    lists = 4 * dim * nlist + 8 * count  # centroids + one int64 id per vector
    if factory_kind == "ivf_flat":
        return lists + 4 * dim * count
    assert factory_kind == "ivf_pq"
    return lists + pq_m * count + 4 * dim * 256  # codes + codebooks


def choose_factory(count: int, dim: int, max_memory_mb: int) -> tuple[str, str]:
    """(factory, why) for `count` passages of `dim` under `max_memory_mb`, as autofaiss picks them."""
    budget = max_memory_mb * 2**20
    mib = f"{max_memory_mb} MiB"
    if index_bytes("flat", count, dim) <= budget:
        if count * dim <= FLAT_MAX_WORK:
            return "Flat", f"exact search: {count} passages x {dim} dims <= {FLAT_MAX_WORK:.0e} (~10 ms a query)"
        if count <= HNSW_MAX_PASSAGES and index_bytes("hnsw", count, dim) <= budget:
            return f"HNSW{HNSW_M}", (f"{count} passages x {dim} dims is too slow for exact search; "
                                     f"<= {HNSW_MAX_PASSAGES} passages and the graph fits {mib}")
        nlist = _ivf_lists(count)
        if index_bytes("ivf_flat", count, dim, nlist=nlist) <= budget:
            why = (f"more than {HNSW_MAX_PASSAGES} passages for HNSW's one-thread build"
                   if count > HNSW_MAX_PASSAGES else f"the HNSW graph does not fit {mib}")
            return f"IVF{nlist},Flat", f"{why}; {nlist} lists (~4 sqrt(N)), full vectors fit {mib}"
    nlist = _ivf_lists(count)
    for pq_m in sorted((m for m in range(1, dim // 2 + 1) if dim % m == 0), reverse=True):
        if index_bytes("ivf_pq", count, dim, nlist=nlist, pq_m=pq_m) <= budget:
            return f"IVF{nlist},PQ{pq_m}", (f"full vectors ({index_bytes('flat', count, dim) / 2**20:.0f} MiB) do not "
                                            f"fit {mib}: {pq_m}-byte PQ codes, {nlist} lists (~4 sqrt(N))")
    need = index_bytes("ivf_pq", count, dim, nlist=nlist, pq_m=1) / 2**20
    raise FaclipError(f"index.max_memory_mb={max_memory_mb} is too small for {count} passages of dim {dim} (the "
                      f"smallest index needs ~{math.ceil(need)} MiB); raise it")


def search_knob(index: faiss.Index) -> str | None:
    """The faiss ParameterSpace name of the index's search-time knob: nprobe (IVF), efSearch (HNSW), or None."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    if hasattr(faiss.downcast_index(index), "hnsw"):
        return "efSearch"
    return None


def set_search_params(index: faiss.Index, search_params: dict) -> None:
    """Apply {'nprobe': n} / {'efSearch': n} to `index` (as the manifest records them)."""
    for name, value in search_params.items():
        faiss.ParameterSpace().set_index_parameter(index, name, int(value))


def _get_knob(index: faiss.Index, knob: str | None) -> int | None:
    if knob == "nprobe":
        return faiss.extract_index_ivf(index).nprobe
    return faiss.downcast_index(index).hnsw.efSearch if knob == "efSearch" else None


def _knob_range(index: faiss.Index, knob: str) -> tuple[int, int]:
    if knob == "nprobe":
        return 1, faiss.extract_index_ivf(index).nlist
    return RECALL_K, EF_SEARCH_MAX


def tune_index(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray | None, *,
               recall_target: float | None, nprobe: int | None = None, efSearch: int | None = None,
               queries_label: str = "held-out queries") -> dict:
    """Set the index's search knob and measure its recall_vs_exact@10 on `queries` (a sample of `vectors` if None).

    A knob given (`nprobe` / `efSearch`) is used as is; else, with a `recall_target`, the smallest value that
    reaches it (doubling, then bisection: recall grows with the knob); else faclip's defaults. Returns the
    manifest's facts: search_params, recall_vs_exact@10, recall_queries, and recall_target when tuned."""
    knob = search_knob(index)
    given = {name: value for name, value in (("nprobe", nprobe), ("efSearch", efSearch)) if value is not None}
    for name in given:
        if name != knob:
            raise FaclipError(f"index.{name}={given[name]} does not apply to this index ({knob or 'no'} search knob); "
                              f"set index.{name} to null")
    source = queries_label
    if queries is None or len(queries) == 0:
        source, queries = "indexed passages", vectors
    rows = np.random.default_rng(SEED).permutation(len(queries))[:TUNE_QUERIES]
    queries = np.ascontiguousarray(queries[np.sort(rows)], dtype=np.float32)  # (Q, D)
    exact = _exact_ids(vectors, queries, RECALL_K)  # (Q, k): once, for every knob value tried

    def recall_at(value: int | None) -> float:
        if value is not None:
            set_search_params(index, {knob: value})
        return _share_found(index, queries, exact)

    facts = {}
    if knob in given:
        value = given[knob]
    elif knob is not None and recall_target is not None:
        value = _smallest_reaching(recall_at, recall_target, *_knob_range(index, knob))
        facts["recall_target"] = recall_target
    else:
        _set_search_defaults(index)
        value = _get_knob(index, knob)
    search_params = {knob: int(value)} if knob else {}
    recall = recall_at(value)
    if "recall_target" in facts and recall < recall_target:
        logger.warning("%s reaches recall_vs_exact@%d %.4f < index.recall_target %s even at %s=%d; "
                       "raise index.max_memory_mb or give a factory", faiss.downcast_index(index).__class__.__name__,
                       RECALL_K, recall, recall_target, knob, value)
    return {"search_params": search_params, f"recall_vs_exact@{RECALL_K}": round(recall, 4),
            "recall_queries": f"{len(queries)} {source}", **facts}


def _smallest_reaching(recall_at, target: float, low: int, high: int) -> int:
    """The smallest knob value in [low, high] whose recall reaches `target` (`high` when none does)."""
    value = low
    while value < high and recall_at(value) < target:
        low, value = value + 1, min(2 * value, high)
    while low < value:  # recall_at(value) reaches the target (or value == high); the answer is in [low, value]
        middle = (low + value) // 2
        if recall_at(middle) >= target:
            value = middle
        else:
            low = middle + 1
    return value


# What every reader relies on in a manifest, and its type; then the optional facts and search knobs.
MANIFEST_FIELDS = {"factory": str, "dim": int, "count": int, "passage_ids": list, "passage_ids_sha256": str,
                   "docstore_sha256": str, "model_sha256": str, "index_sha256": str}
MANIFEST_FACTS = {"factory_requested": str, "factory_reason": str, "search_params": dict,
                  f"recall_vs_exact@{RECALL_K}": (int, float), "recall_queries": str, "recall_target": (int, float)}
SEARCH_KNOBS = ("nprobe", "efSearch")


def _manifest_problem(manifest) -> str | None:
    """What is wrong with a parsed manifest (a few words), or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key, kind in {**MANIFEST_FIELDS, **MANIFEST_FACTS}.items():
        value = manifest.get(key)
        if (key in MANIFEST_FIELDS or key in manifest) and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"{key!r} missing or not a {getattr(kind, '__name__', 'number')}"
    unknown = sorted(set(manifest) - set(MANIFEST_FIELDS) - set(MANIFEST_FACTS))
    if unknown:
        return f"unknown field {unknown[0]!r}"
    if manifest["dim"] < 1 or manifest["count"] < 1:
        return f"dim {manifest['dim']}, count {manifest['count']}"
    ids = manifest["passage_ids"]
    if len(ids) != manifest["count"] or not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
        return f"{len(ids)} passage ids for a count of {manifest['count']}, not all distinct strings"
    if passage_ids_sha256(ids) != manifest["passage_ids_sha256"]:
        return "passage_ids do not match passage_ids_sha256 (edited or reordered)"
    for name, value in manifest.get("search_params", {}).items():
        if name not in SEARCH_KNOBS or not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"search_params {name}={value!r} (known: {', '.join(SEARCH_KNOBS)}, whole numbers >= 1)"
    return None


def read_manifest(index_dir: str | Path) -> dict:
    """The index manifest; a one-line error when the index is missing or the manifest is damaged
    (not JSON, not an object, a field missing, unknown or of the wrong type, passage ids that do not
    match their sha256). The files' sha256 it records are checked by `check_manifest`."""
    path = Path(index_dir) / MANIFEST_FILE
    if not path.is_file() or not (Path(index_dir) / INDEX_FILE).is_file():
        raise FaclipError(f"no index found in {index_dir}; {outputs_hint()}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FaclipError(f"{path} is damaged (not JSON: {type(err).__name__}); {REBUILD}") from None
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise FaclipError(f"{path} is damaged or from another faclip ({problem}); {REBUILD} "
                          f"or `dvc checkout {index_dir}`")
    return manifest


def check_manifest(index_dir: str | Path, model_dir: str | Path, docstore_path: str | Path) -> dict:
    """Check the index was built from this docstore and model and is intact; returns the manifest."""
    from faclip.models import weights_sha256

    manifest = read_manifest(index_dir)
    if sha256_file(docstore_path) != manifest["docstore_sha256"]:
        raise FaclipError(f"the index in {index_dir} was built from another docstore than {docstore_path}; {REBUILD}")
    ids = load_docstore(docstore_path)["id"].tolist()  # the index holds the docstore's passages, in its order
    if ids != manifest["passage_ids"]:
        missing = sorted(set(manifest["passage_ids"]) - set(ids))
        what = f"passage {missing[0]} is not in the docstore" if missing else "its passage order is not the docstore's"
        raise FaclipError(f"the manifest of the index in {index_dir} does not match {docstore_path} ({what}); {REBUILD}")
    if weights_sha256(model_dir) != manifest["model_sha256"]:
        raise FaclipError(f"the index in {index_dir} was built from another model than {model_dir}; {REBUILD}")
    if sha256_file(Path(index_dir) / INDEX_FILE) != manifest["index_sha256"]:
        raise FaclipError(f"{Path(index_dir) / INDEX_FILE} does not match its manifest (changed or damaged); {REBUILD}")
    return manifest


def load_index(index_dir: str | Path, model_dir: str | Path, docstore_path: str | Path) -> tuple[faiss.Index, dict]:
    """Load the FAISS index after `check_manifest`: (index, manifest)."""
    manifest = check_manifest(index_dir, model_dir, docstore_path)
    index = faiss.read_index(str(Path(index_dir) / INDEX_FILE))
    if (index.ntotal, index.d) != (manifest["count"], manifest["dim"]):
        raise FaclipError(f"{Path(index_dir) / MANIFEST_FILE} says {manifest['count']} passages of dim {manifest['dim']}, "
                          f"the index holds {index.ntotal} of dim {index.d}; {REBUILD}")
    set_search_params(index, manifest.get("search_params", {}))  # the knob the index stage chose, in every reader
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
    if len(queries) == 0 or index.ntotal == 0:
        return 1.0
    return _share_found(index, queries, _exact_ids(vectors, queries, k))


def _exact_ids(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k rows of `vectors` for each query (Q, k), by brute force."""
    exact_index = build_index(vectors, "Flat")
    return np.concatenate([search(exact_index, queries[start:start + QUERY_CHUNK], k)[1]
                           for start in range(0, len(queries), QUERY_CHUNK)])


def _share_found(index: faiss.Index, queries: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact ids (Q, k) that `index` returns in its own top k, over all queries."""
    found = 0
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = exact[start:start + QUERY_CHUNK]  # (chunk, k)
        _, approx = search(index, queries[start:start + QUERY_CHUNK], chunk.shape[1])  # (chunk, k)
        found += int(((approx[:, :, None] == chunk[:, None, :]) & (chunk[:, None, :] >= 0)).any(axis=1).sum())
    return found / exact.size


# --- check_params' factory probe ---------------------------------------------------------------------

# A factory is built on this many random unit vectors of this dim: CLIPfa's 768 (the tiny models' 128
# divides it, so a PQ split valid for either is valid here). Too few vectors to train is not the probe's
# concern (it depends on the docstore; the index stage names it in one line): 200 vectors build graphs
# (NSG needs > 100) but stop PQ codebooks (256 centroids) at once, which keeps OPQ's slow training out.
PROBE_VECTORS = 200
PROBE_DIM = 768
PROBE_TIMEOUT_S = 120


def probe_factory(factory: str, nprobe: int | None, efSearch: int | None) -> None:
    """Build `factory` on a random set, set the given knob and search it, as the index stage would: a
    FaclipError for what would fail there. Run it in a subprocess (`check_factory`): FAISS may abort."""
    vectors = np.random.default_rng(SEED).standard_normal((PROBE_VECTORS, PROBE_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    try:
        index = build_index(vectors, factory)
    except FaclipError as err:
        if "passages to train" in str(err):
            return
        raise
    tune_index(index, vectors, vectors[:10], recall_target=None, nprobe=nprobe, efSearch=efSearch)


def check_factory(factory: str, nprobe: int | None = None, efSearch: int | None = None) -> None:
    """`probe_factory` in a subprocess: a factory that FAISS aborts or crashes on (HNSW0, HNSW1) is a
    one-line FaclipError here, before DVC deletes the index stage's outputs, not a dead index stage."""
    # The factory and knobs go on stdin, never on the command line (a NUL or a long string would not fit there).
    code = ("import json, sys; from faclip.errors import run_main; from faclip.index import probe_factory; "
            "run_main(lambda: probe_factory(*json.load(sys.stdin)))")
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    try:
        result = subprocess.run([sys.executable, "-c", code], input=json.dumps([factory, nprobe, efSearch]),
                                capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FaclipError(f"index.factory={shown(factory)} did not build {PROBE_VECTORS} random vectors in "
                          f"{PROBE_TIMEOUT_S} s; use auto, Flat, HNSW32 or IVF<n>,Flat") from None
    errors = [line for line in result.stderr.splitlines() if line.startswith("faclip error: ")]
    if result.returncode == 2 and errors:
        raise FaclipError(errors[-1].removeprefix("faclip error: "))
    if result.returncode != 0:
        how = (f"killed by {signal.Signals(-result.returncode).name}" if result.returncode < 0
               else f"failed with exit status {result.returncode}")
        lines = result.stderr.strip().splitlines()
        detail = f": {lines[-1][:160]}" if lines else ""
        raise FaclipError(f"index.factory={shown(factory)}: FAISS {how} building it on {PROBE_VECTORS} random vectors"
                          f"{detail}; use auto, Flat, HNSW32 or IVF<n>,Flat")
