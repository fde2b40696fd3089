"""The lexical index at knowledge-base scale: the `lexical` stage's build and a fresh process's photo + question query.

    python benchmarks/vqa_scale.py --root . --sizes 10000 100000 1000000    # after `dvc repro` (models, a photo)

For each size N it writes N synthetic passages of ~400 characters (Persian words drawn from the sample's
passages, 5 passages a dish) as a docstore, a Flat FAISS index of seeded random unit vectors bound to it and to
the fine-tuned model (the photo-only query searches it; only the lexical half is measured here), then:
- runs `python stages/lexical.py` on it: wall time, peak memory (the process's max RSS), the artifact's size;
- runs `faclip search --image PHOTO --text QUESTION` and `faclip search --image PHOTO` as fresh processes on
  the same artifacts, once each untimed (so neither pays for a cold page cache: the first process after a
  1M build reads gigabytes from disk), then `--repeats` times each, alternated: median wall time and peak
  memory, and the difference.
`--reuse` keeps a corpus and lexical index already in `--work` (build columns then blank): to measure the
searches again without a 20-minute build.
Prints one table row per size, and the machine's line (cores, load) first and last.
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from faclip.files import sha256_file  # noqa: E402
from faclip.index import save_index  # noqa: E402
from faclip.models import weights_sha256  # noqa: E402
from faclip.text import passage_id_for  # noqa: E402
from machine import load_average, machine_line  # noqa: E402

QUESTION = "این غذا را با چه چیزی سرو می‌کنند؟"
PASSAGE_CHARS = 400
PER_DISH = 5


def write_corpus(root: Path, n: int, words: list[str], model_dir: Path, dim: int, seed: int = 0) -> None:
    """`root`/docstore.parquet with n passages and `root`/index: a Flat index of random unit vectors bound to it."""
    rng = random.Random(seed)
    texts, ids = [], []
    for i in range(n):
        text = f"{i} "  # the number makes every passage (and its id) distinct
        while len(text) < PASSAGE_CHARS:
            text += rng.choice(words) + " "
        texts.append(text.strip())
        ids.append(passage_id_for(texts[-1]))
    dishes = [f"غذای {i // PER_DISH}" for i in range(n)]
    docstore = pd.DataFrame({"id": ids, "food_id": dishes, "title": dishes, "passage_text": texts})
    docstore.to_parquet(root / "docstore.parquet", index=False)
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    save_index(index, root / "index", factory="Flat", passage_ids=ids, docstore_sha256=sha256_file(root / "docstore.parquet"),
               model_sha256=weights_sha256(model_dir))


def measured(command: list[str]) -> tuple[float, float, str]:
    """Run a command: (wall seconds, peak RSS in MB, stderr's last line); a failure stops the benchmark."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, (stderr.strip().splitlines() or [""])[-1]


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="a pipeline's root after `dvc repro` (default: this repo)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="where the corpora go (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true", help="measure the searches on what --work already holds")
    args = parser.parse_args(argv)

    model, vision = args.root / "models/finetuned", args.root / "models/base/vision"
    dim = faiss.read_index(str(args.root / "models/index/passages.faiss")).d
    words = " ".join(pd.read_parquet(args.root / "data/docstore.parquet")["passage_text"]).split()
    pairs = pd.read_csv(args.root / "data/training_pairs.csv")
    photo = next((args.root / "data/sample").rglob("*.jpg"))
    print(machine_line(), flush=True)
    print(f"photo {photo.relative_to(args.root)}; question {QUESTION!r}; {len(pairs)} pairs in the sample")
    print("| passages | build s | build peak MB | artifact MB | photo+question s | photo s | +s | photo+question MB | photo MB | +MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    work = Path(tempfile.mkdtemp(prefix="faclip-vqa-scale-")) if args.work is None else args.work
    for n in args.sizes:
        root = work / str(n)
        root.mkdir(parents=True, exist_ok=True)
        if args.reuse and (root / "lexical/manifest.json").is_file():
            build_s = build_mb = float("nan")
        else:
            write_corpus(root, n, words, model, dim)
            build_s, build_mb, _ = measured([sys.executable, "stages/lexical.py", "--docstore",
                                             str(root / "docstore.parquet"), "--out", str(root / "lexical")])
        search = [sys.executable, "-m", "faclip", "search", "--model", str(model), "--vision", str(vision),
                  "--index", str(root / "index"), "--docstore", str(root / "docstore.parquet"), "--image", str(photo)]
        runs = {"ask": [], "photo": []}
        measured(search + ["--text", QUESTION]), measured(search)  # warm-up: the page cache, not the query
        for _ in range(args.repeats):  # alternated, so a change in the machine's load hits both alike
            runs["ask"].append(measured(search + ["--text", QUESTION]))
            runs["photo"].append(measured(search))
        (ask_s, ask_mb), (photo_s, photo_mb) = ((statistics.median(r[0] for r in runs[key]),
                                                 statistics.median(r[1] for r in runs[key])) for key in ("ask", "photo"))
        print(f"| {n:,} | {build_s:.1f} | {build_mb:.0f} | {size_mb(root / 'lexical'):.0f} | {ask_s:.2f} | {photo_s:.2f} | "
              f"{ask_s - photo_s:+.2f} | {ask_mb:.0f} | {photo_mb:.0f} | {ask_mb - photo_mb:+.0f} |", flush=True)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
