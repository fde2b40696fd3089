"""Search latency: one image query end to end through `faclip.search.Retriever` (warm), median and p95.

    python benchmarks/search_latency.py                 # builds a pipeline on data/sample in a temp folder (~2 min)
    python benchmarks/search_latency.py --root .        # use an existing pipeline's outputs (after `dvc repro`)
    python benchmarks/search_latency.py --keep /tmp/p && python benchmarks/search_latency.py --root /tmp/p --threads 1

Without --root it runs the dvc.yaml stage commands (prepare .. index, 1 epoch; see scaling.py) on
the bundled sample in a temp folder. Then it opens one Retriever, answers one query to warm it (the
vision model loads on the first image query), and times `--queries` calls of `by_image(path, k)`,
each on a different image file of the sample in turn: read + decode + preprocess + vision encoder +
FAISS search + docstore rows. `by_text` is timed the same way on the passages' titles, for scale.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from faclip.search import Retriever  # noqa: E402
from machine import load_average, machine_line  # noqa: E402
from scaling import run_stage, stage_commands, write_run_folder  # noqa: E402

PIPELINE = ["prepare", "base", "embed", "train", "index"]


def build_pipeline(folder: Path, data_root: Path, epochs: int) -> None:
    """Run the stage commands of dvc.yaml up to `index` in `folder`, on `data_root`."""
    write_run_folder(folder, data_root, epochs)
    commands = stage_commands(REPO / "dvc.yaml")
    for stage in PIPELINE:
        row = run_stage(commands[stage], folder, folder / f"{stage}.log")
        print(f"   built {stage:<8} in {row['wall_s']:5.1f} s", flush=True)


def timed(calls) -> np.ndarray:
    """Milliseconds of each call."""
    times = []
    for call in calls:
        start = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - start))
    return np.array(times)


def summary(name: str, ms: np.ndarray) -> str:
    return (f"{name:<22} median {statistics.median(ms):7.2f} ms   p95 {np.percentile(ms, 95):7.2f} ms   "
            f"min {ms.min():6.2f}   max {ms.max():7.2f}   ({len(ms)} queries, {1000 / ms.mean():.0f}/s)")


def measure(root: Path, data_root: Path, queries: int, k: int) -> None:
    retriever = Retriever(model_dir=root / "models/finetuned", vision_dir=root / "models/base/vision",
                          index_dir=root / "models/index", docstore_path=root / "data/docstore.parquet")
    pairs = pd.read_csv(root / "data/training_pairs.csv", dtype=str)
    images = sorted(set(pairs["image_path"]))
    paths = [data_root / images[i % len(images)] for i in range(queries)]
    titles = sorted(set(retriever.passages["title"]))
    texts = [titles[i % len(titles)] for i in range(queries)]
    print(f"index: {retriever.index.ntotal} passages, dim {retriever.index.d}, "
          f"{type(retriever.index).__name__}; {len(images)} distinct query images; k={k}; "
          f"torch threads {torch.get_num_threads()}")

    start = time.perf_counter()
    retriever.by_image(paths[0], k=k)  # warm: loads the vision model
    retriever.by_text(texts[0], k=k)
    print(f"warm-up (vision model load + first queries): {1000 * (time.perf_counter() - start):.0f} ms")

    print(summary("by_image (path)", timed(lambda p=p: retriever.by_image(p, k=k) for p in paths)))
    print(summary("by_text", timed(lambda t=t: retriever.by_text(t, k=k) for t in texts)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="folder holding models/ and data/ of a built pipeline")
    parser.add_argument("--data", type=Path, help="raw data root, for the query images (default: data.root of "
                        "--root's params.yaml, else data/sample)")
    parser.add_argument("--keep", type=Path, help="build the pipeline in this new folder and keep it (for --root)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs when building the pipeline")
    parser.add_argument("--threads", type=int, help="torch threads while querying (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    data_root = args.data or REPO / "data" / "sample"
    if args.data is None and args.root:
        data_root = args.root / yaml.safe_load((args.root / "params.yaml").read_text(encoding="utf-8"))["data"]["root"]
    data_root = data_root.resolve()
    if args.root:
        measure(args.root, data_root, args.queries, args.k)
    elif args.keep:
        print(f"building the pipeline on {data_root} in {args.keep} ({args.epochs} epoch)")
        args.keep.mkdir(parents=True)
        build_pipeline(args.keep, data_root, args.epochs)
        measure(args.keep, data_root, args.queries, args.k)
    else:
        with tempfile.TemporaryDirectory(prefix="faclip-latency-") as tmp:
            print(f"building the pipeline on {data_root} in {tmp} ({args.epochs} epoch)")
            build_pipeline(Path(tmp), data_root, args.epochs)
            measure(Path(tmp), data_root, args.queries, args.k)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
