"""Peak memory of the `evaluate` stage as the pairs and dishes grow: (test images x dishes) must never be dense.

    python benchmarks/eval_memory.py                                  # 100k pairs over 20k dishes
    python benchmarks/eval_memory.py --dishes 200000 --images 5       # 1M pairs over 200k dishes
    python benchmarks/eval_memory.py --dishes 2000 --images 5 --keep /tmp/evalmem   # keep the inputs

Builds evaluate's inputs directly, skipping prepare / embed / train (their memory is not the point
here, and embedding 100k JPEGs takes minutes): a docstore of `--dishes` dishes x `--passages`
passages, pairs of `--images` images per dish x every passage of the dish (a fifth of each dish's
images in the test split, the rest train), image vectors drawn around one random direction per dish
(unit, 128-d, as the `tiny` vision model's), the `tiny` text model as both base and "fine-tuned"
model (max_text_len 128, as trained), and a Flat index over the passages. Then it runs
`stages/evaluate.py` as dvc.yaml does under `/usr/bin/time -v` and prints its wall time and peak RSS,
with the sizes that drive them. With `--keep DIR`, a second run reuses the inputs already in DIR.
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import load_average, machine_line  # noqa: E402
from synthetic import WORDS  # noqa: E402

from faclip.embed import ImageEmbeddings, save_image_embeddings  # noqa: E402
from faclip.index import build_passage_index  # noqa: E402
from faclip.models import TINY_WIDTH, materialise_base  # noqa: E402
from faclip.text import food_id_for, passage_id_for  # noqa: E402

TIME = "/usr/bin/time"
SIZES = "sizes.json"  # what a kept folder holds, so a second run reuses it
TEST_EVERY = 5  # image i of a dish is a test image when i % 5 == 0: a 0.2 test fraction, every dish in both splits


def write_inputs(folder: Path, dishes: int, images: int, passages: int, seed: int = 0) -> dict:
    """docstore.parquet, pairs.csv, image_embeddings/, models/text, index/ in `folder`; returns the sizes."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    titles = [f"غذای {' '.join(rng.choice(words, 2))} {d}" for d in range(dishes)]
    texts = [[f"{titles[d]}: {' '.join(rng.choice(words, rng.integers(12, 40)))} ({p})." for p in range(passages)]
             for d in range(dishes)]
    docstore = pd.DataFrame({
        "id": [passage_id_for(t) for dish in texts for t in dish],
        "food_id": [food_id_for(titles[d]) for d in range(dishes) for _ in range(passages)],
        "title": [titles[d] for d in range(dishes) for _ in range(passages)],
        "passage_text": [t for dish in texts for t in dish],
    })
    docstore.to_parquet(folder / "docstore.parquet", index=False)

    dish = np.repeat(np.arange(dishes), images)  # (I,) dish of each image
    shas = [hashlib.sha256(f"{d}/{i}".encode()).hexdigest() for d in range(dishes) for i in range(images)]
    split = np.where(np.tile(np.arange(images), dishes) % TEST_EVERY == 0, "test", "train")
    pairs = pd.DataFrame({
        "image_path": np.repeat([f"d{d}/{i}.jpg" for d in range(dishes) for i in range(images)], passages),
        "image_sha256": np.repeat(shas, passages),
        "passage_id": docstore["id"].to_numpy().reshape(dishes, passages)[dish].ravel(),
        "food_id": docstore["food_id"].to_numpy()[dish * passages].repeat(passages),
        "split": np.repeat(split, passages),
    })
    pairs.to_csv(folder / "pairs.csv", index=False)

    centres = rng.standard_normal((dishes, TINY_WIDTH)).astype(np.float32)
    vectors = centres[dish] + 0.8 * rng.standard_normal((len(dish), TINY_WIDTH)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = np.argsort(shas)
    save_image_embeddings(folder / "image_embeddings",
                          ImageEmbeddings([shas[i] for i in order], vectors[order], "v" * 64))

    corpus = docstore["passage_text"].head(5000).tolist() + titles[:5000]
    materialise_base("tiny", "tiny", lambda: corpus, folder / "models/text", folder / "models/vision")
    # The "fine-tuned" model: the base one, with the token budget training records (params.yaml's default).
    shutil.copytree(folder / "models/text", folder / "models/finetuned")
    info = json.loads((folder / "models/finetuned/faclip.json").read_text(encoding="utf-8"))
    (folder / "models/finetuned/faclip.json").write_text(json.dumps({**info, "params": {"max_text_len": 128}}))
    build_passage_index(folder / "models/finetuned", folder / "docstore.parquet", folder / "index", factory="Flat",
                        device="cpu")
    (folder / "params.yaml").write_text(yaml.safe_dump({"eval": {"k": [1, 5, 10]}}), encoding="utf-8")
    return {"pairs": len(pairs), "dishes": dishes, "passages": len(docstore), "images": len(shas),
            "test_images": int((split == "test").sum())}


def run_evaluate(folder: Path) -> dict:
    """Run the evaluate stage's dvc.yaml command (paths swapped for the inputs above) under /usr/bin/time -v."""
    argv = [sys.executable, str(REPO / "stages/evaluate.py"), "--index", "index", "--model", "models/finetuned",
            "--base-text", "models/text", "--docstore", "docstore.parquet", "--pairs", "pairs.csv",
            "--image-embeddings", "image_embeddings", "--metrics", "eval.json", "--plots", "eval_plots"]
    if Path(TIME).is_file():
        argv = [TIME, "-v", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (folder / "evaluate.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise SystemExit(f"`{shlex.join(argv)}` failed (exit {proc.returncode}):\n{tail}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"wall_s": wall, "peak_rss_mib": int(match.group(1)) / 1024 if match else float("nan")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dishes", type=int, default=20000)
    parser.add_argument("--images", type=int, default=5, help="images per dish")
    parser.add_argument("--passages", type=int, default=1, help="passages per dish (each image pairs with all)")
    parser.add_argument("--keep", type=Path, help="build the inputs in this folder and keep it")
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error("--images must be >= 2 (each dish needs a train and a test image)")
    print(machine_line())
    folder = args.keep or Path(tempfile.mkdtemp(prefix="faclip-evalmem-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        if (folder / SIZES).is_file():
            sizes = json.loads((folder / SIZES).read_text())
        else:
            sizes = write_inputs(folder, args.dishes, args.images, args.passages)
            (folder / SIZES).write_text(json.dumps(sizes))
        print(f"inputs: {sizes['pairs']} pairs, {sizes['dishes']} dishes, {sizes['passages']} passages, "
              f"{sizes['images']} images ({sizes['test_images']} test), built in {time.perf_counter() - start:.0f} s",
              flush=True)
        dense = sizes["test_images"] * sizes["dishes"] * 4 / 2**20
        print(f"a dense float32 (test images x dishes) matrix would be {dense:.0f} MiB", flush=True)
        result = run_evaluate(folder)
        print(f"evaluate: {result['wall_s']:.1f} s wall, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
