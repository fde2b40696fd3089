"""FAISS factories for the passage index: build time, queries/s and recall@10 against exact search.

    python benchmarks/index_bench.py                       # 100k passages, dims 128 and 768 (~7 min on 2 cores)
    python benchmarks/index_bench.py --passages 10000 --dims 128 --factories Flat HNSW32

Vectors are random but clustered, like passage embeddings (many passages per dish, dishes spread
over the sphere): N / `--per-cluster` centres drawn uniformly on the unit sphere, each vector = its centre
+ isotropic Gaussian noise of norm ~`--spread` (relative to the centre), then L2-normalised. Queries
are fresh draws from the same mixture (not copies of indexed vectors). Indexes are built through
`faclip.index.build_index`, so they carry the project's search defaults (IVF nprobe, HNSW efSearch,
HNSW added on one thread for determinism). `IVF{4sqrt(N)},Flat` is expanded from N. `auto` is what
`index.factory: auto` does (choose from N, dim and --memory-mb, then tune nprobe / efSearch to recall 0.95
on 1000 other draws from the mixture); its build time includes the tuning.

Printed per (dim, factory): build seconds (train + add), queries/s for one batch of all queries
(throughput, all cores) and for one query at a time on one thread (what a search request sees), the
median single-query latency, recall@10 against `Flat` (share of the exact top-10 found), and the index size in MiB.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faclip.index import build_index, choose_factory, tune_index  # noqa: E402
from machine import load_average, machine_line  # noqa: E402

DEFAULT_FACTORIES = ["Flat", "HNSW32", "IVF{4sqrt(N)},Flat", "auto"]


def clustered_vectors(rng: np.random.Generator, count: int, centres: np.ndarray, spread: float) -> np.ndarray:
    """`count` L2-normalised vectors (count, D) around randomly chosen rows of `centres`."""
    dim = centres.shape[1]
    assign = rng.integers(0, len(centres), size=count)
    noise = rng.standard_normal((count, dim), dtype=np.float32) * (spread / math.sqrt(dim))
    vectors = centres[assign] + noise  # (count, D)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def make_data(count: int, queries: int, dim: int, clusters: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # (C, D) on the unit sphere
    vectors, timed = clustered_vectors(rng, count, centres, spread), clustered_vectors(rng, queries, centres, spread)
    return vectors, timed, clustered_vectors(rng, 1000, centres, spread)  # + 1000 queries `auto` tunes on


def expand(factory: str, count: int) -> str:
    return factory.replace("{4sqrt(N)}", str(int(round(4 * math.sqrt(count)))))


def index_mib(index: faiss.Index) -> float:
    return len(faiss.serialize_index(index)) / 2**20


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top-k that the index returned in its top-k."""
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]))


def bench_factory(factory: str, vectors: np.ndarray, queries: np.ndarray, k: int, single: int,
                  tune_queries: np.ndarray | None = None, memory_mb: int = 4096):
    start = time.perf_counter()
    if factory == "auto":  # what index.factory: auto does: choose, build, tune on other queries than the timed ones
        chosen, _ = choose_factory(len(vectors), vectors.shape[1], memory_mb)
        index = build_index(vectors, chosen)
        facts = tune_index(index, vectors, tune_queries, recall_target=0.95)
        factory = f"auto: {chosen} {','.join(f'{k}={v}' for k, v in facts['search_params'].items())}"
    else:
        index = build_index(vectors, factory)
    build_s = time.perf_counter() - start

    index.search(queries[:10], k)  # warm up (page in, thread pool)
    start = time.perf_counter()
    _, ids = index.search(queries, k)  # (Q, k)
    batch_qps = len(queries) / (time.perf_counter() - start)

    # One query at a time on one thread, as a server answering concurrent requests runs them: with
    # several OpenMP threads a 1-row search mostly waits at thread barriers (badly on a busy machine).
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    latencies = []
    try:
        for q in queries[:single]:
            start = time.perf_counter()
            index.search(q[None, :], k)
            latencies.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return index, ids, {
        "factory": factory, "build_s": build_s, "batch_qps": batch_qps, "single_qps": len(latencies) / sum(latencies),
        "single_ms": 1000 * statistics.median(latencies), "mib": index_mib(index),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 768], help="128 = tiny, 768 = CLIPfa")
    parser.add_argument("--factories", nargs="+", default=DEFAULT_FACTORIES)
    parser.add_argument("--queries", type=int, default=2000, help="queries for batch throughput and recall")
    parser.add_argument("--single", type=int, default=300, help="of those, searched one at a time")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--per-cluster", type=int, default=10,
                        help="mean vectors per cluster (a dish has a few passages)")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the cluster centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=4096, help="index.max_memory_mb for the factory `auto`")
    args = parser.parse_args(argv)

    factories = [expand(f, args.passages) for f in args.factories]
    clusters = max(1, args.passages // args.per_cluster)
    print(machine_line())
    print(f"{args.passages} passages, {args.queries} queries ({args.single} one at a time), k={args.k}, "
          f"{clusters} clusters, spread {args.spread}; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")
    header = (f"{'dim':>4} {'factory':<28} {'build s':>8} {'batch q/s':>10} {'1-query q/s':>11} "
              f"{'1-query ms':>10} {f'recall@{args.k}':>9} {'MiB':>7}")
    print(header)
    for dim in args.dims:
        vectors, queries, tune_queries = make_data(args.passages, args.queries, dim, clusters, args.spread, args.seed)
        exact = None
        rows = []
        # Flat first: its answers are the ground truth for the others' recall.
        for factory in sorted(factories, key=lambda f: f != "Flat"):
            _, ids, row = bench_factory(factory, vectors, queries, args.k, args.single, tune_queries, args.memory_mb)
            factory = row["factory"]
            if factory == "Flat":
                exact = ids
            if exact is None:
                exact = build_index(vectors, "Flat").search(queries, args.k)[1]
            row["recall"] = recall_at(ids, exact, args.k)
            rows.append((factory, row))
            print(f"{dim:>4} {factory:<28} {row['build_s']:>8.2f} {row['batch_qps']:>10.0f} "
                  f"{row['single_qps']:>11.0f} {row['single_ms']:>10.3f} {row['recall']:>9.3f} "
                  f"{row['mib']:>7.1f}", flush=True)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
