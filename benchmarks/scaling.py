"""How each pipeline stage grows with the data: wall time and peak memory at ~1k, 10k and 50k pairs.

    python benchmarks/scaling.py --threads 1            # 1k, 10k, 50k pairs (~5 min on 2 cores)
    python benchmarks/scaling.py --sizes 1000 10000     # only some sizes
    python benchmarks/scaling.py --sizes 2000 --keep /tmp/scaling   # keep the run folders
    python benchmarks/scaling.py --shape 10 10 --sizes 10000 100000 1000000 --train-max-pairs 100000
                                                        # to 1M pairs; train's epoch only to 100k (~25 min)
    python benchmarks/scaling.py --models clipfa --sizes 1000 3000 --heldout   # CLIPfa-sized, one epoch

For each size it writes a synthetic raw dataset (benchmarks/synthetic.py: dishes x `--shape` images x
passages, 48 px JPEGs), then runs the stage commands of dvc.yaml, as dvc would but without dvc, in
a fresh folder holding only the data, a params.yaml (the repo's, with data.root pointed at the
synthetic data and `epochs: 1`) and a link to stages/. Each command runs under `/usr/bin/time -v`
when present (peak RSS of the largest process; DataLoader workers are separate processes), while a
sampler adds up the PSS (shared pages split between the processes sharing them) of the whole process
tree every 0.5 s. Train runs one epoch (none above `--train-max-pairs`: the stage then only loads,
tokenises, measures held-out recall once and saves the base model, so that index and evaluate can run);
its loop-only time comes from train's log line ("trained N pairs in X s of epochs"), the rest of its
wall time is loading, hashing, held-out recall and checkpointing. `--models clipfa` runs every stage
with CLIPfa-sized models built from configs with random weights (RoBERTa-base 12 x 768, ViT-B/32 at
224 px). The growth exponent b in time ~ pairs^b is printed between consecutive sizes (1 = linear).
"""

import argparse
import math
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from machine import load_average, machine_line  # noqa: E402
from synthetic import make_dataset  # noqa: E402

STAGES = ["prepare", "base", "embed", "train", "index", "evaluate"]
IMAGES_PER_DISH, PASSAGES_PER_DISH = 10, 2
TIME = "/usr/bin/time"


def stage_commands(dvc_yaml: Path) -> dict[str, str]:
    """Each stage's `cmd` from dvc.yaml, whitespace collapsed."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    return {name: " ".join(str(stage["cmd"]).split()) for name, stage in stages.items()}


def write_run_folder(folder: Path, raw: Path, epochs: int, models: tuple[Path, Path] | None = None) -> None:
    """params.yaml (the repo's, data.root -> raw, epochs and models overridden) and a link to the repo's stages/."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["root"] = str(raw)
    params["epochs"] = epochs
    if models is not None:
        params["model"] = {"text": str(models[0]), "vision": str(models[1])}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False),
                                        encoding="utf-8")
    (folder / "stages").symlink_to(REPO / "stages")


class TreePss:
    """Samples the summed PSS of a process and all its descendants in a thread; `.peak` in bytes.

    PSS splits each shared page between the processes mapping it, so forked DataLoader workers are not
    counted three times over (their RSS sum would be); 0.5 s apart, as reading smaps costs ~10 ms.
    """

    def __init__(self, pid: int, every: float = 0.5):
        self.peak, self._pid, self._every = 0, pid, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            root = psutil.Process(self._pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_stage(cmd: str, cwd: Path, log: Path) -> dict:
    """Run one stage command in `cwd`; wall s, CPU s, peak RSS of the largest process, peak tree PSS (MiB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    argv = shlex.split(cmd)
    if argv[0] == "python":
        argv[0] = sys.executable
    use_time = Path(TIME).is_file()
    if use_time:
        argv = [TIME, "-v", *argv]
    before = os.times()
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreePss(proc.pid)
        rc = proc.wait()
        tree_peak = sampler.stop()
    wall = time.perf_counter() - start
    after = os.times()
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise RuntimeError(f"`{cmd}` failed (exit {rc}) in {cwd}; log {log}:\n{tail}")
    if use_time:
        max_rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    else:  # the largest reaped child so far: right for the first stage, a lower bound after
        max_rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": wall, "cpu_s": cpu, "max_rss_mib": max_rss_kib / 1024, "tree_pss_mib": tree_peak / 2**20}


TRAIN_LINE = re.compile(r"trained (\d+) pairs in ([\d.]+) s of epochs \(([\d.]+) pairs/s\)")


def train_loop_timing(log_text: str) -> tuple[int, float, float] | None:
    """(pairs, seconds, pairs/s) of the epoch loops alone, from train's log line (timings stay out of the
    git-tracked metrics/train.json, as they depend on the machine)."""
    match = TRAIN_LINE.search(log_text)
    return (int(match.group(1)), float(match.group(2)), float(match.group(3))) if match else None


def train_loop_s(log: Path) -> float | None:
    """Seconds of the epoch loops alone, from the train stage's log."""
    timing = train_loop_timing(log.read_text(errors="replace"))
    return timing[1] if timing and timing[0] else None


def run_size(pairs: int, root: Path, commands: dict[str, str], epochs: int, shape: tuple[int, int] = (10, 2),
             models: tuple[Path, Path] | None = None) -> dict:
    images, passages = shape
    dishes = max(1, round(pairs / (images * passages)))
    folder = root / f"pairs_{pairs}"
    folder.mkdir(parents=True)
    start = time.perf_counter()
    records = make_dataset(folder / "raw", dishes, images, passages)
    print(f"\n== {records} pairs ({dishes} dishes x {images} images x {passages} passages), "
          f"data written in {time.perf_counter() - start:.1f} s, in {folder}; train epochs {epochs}", flush=True)
    write_run_folder(folder, folder / "raw", epochs, models)
    results = {"pairs": records, "epochs": epochs}
    for stage in STAGES:
        script = commands.get(stage, "").split()[1:2]
        if stage not in commands or not (REPO / script[0]).is_file():
            print(f"   {stage:<9} skipped: not in dvc.yaml or its script is missing", flush=True)
            break
        row = run_stage(commands[stage], folder, folder / f"{stage}.log")
        if stage == "train":
            row["loop_s"] = train_loop_s(folder / f"{stage}.log")
        results[stage] = row
        extra = f", epoch loop {row['loop_s']:.1f} s" if row.get("loop_s") else ""
        print(f"   {stage:<9} {row['wall_s']:7.1f} s wall, {row['cpu_s']:7.1f} s CPU, peak RSS "
              f"{row['max_rss_mib']:6.0f} MiB (tree PSS {row['tree_pss_mib']:6.0f} MiB){extra}", flush=True)
    return results


def growth(t1: float, t2: float, n1: int, n2: int) -> str:
    return f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}" if t1 > 0 and t2 > 0 else "-"


def print_summary(runs: list[dict]) -> None:
    sizes = [run["pairs"] for run in runs]
    print("\nwall seconds by stage (train: whole stage / epoch loop only); b = growth exponent between sizes")
    print(f"{'stage':<12}" + "".join(f"{n:>12}" for n in sizes)
          + "".join(f"{f'b {a}->{b}':>16}" for a, b in zip(sizes, sizes[1:])))
    print("train epochs:" + "".join(f"{run['epochs']:>12}" for run in runs))
    for stage in STAGES:
        for key, label in (("wall_s", stage), ("loop_s", "train loop")):
            if key == "loop_s" and stage != "train":
                continue
            values = [run.get(stage, {}).get(key) for run in runs]
            if all(v is None for v in values):
                continue
            cells = "".join(f"{v:>12.1f}" if v is not None else f"{'-':>12}" for v in values)
            exps = "".join(f"{growth(a, b, n1, n2) if a and b else '-':>16}"
                           for a, b, n1, n2 in zip(values, values[1:], sizes, sizes[1:]))
            print(f"{label:<12}{cells}{exps}")
    print("\npeak memory MiB by stage: RSS of the largest process (PSS of the whole process tree)")
    print(f"{'stage':<12}" + "".join(f"{n:>18}" for n in sizes))
    for stage in STAGES:
        rows = [run.get(stage) for run in runs]
        if all(r is None for r in rows):
            continue
        cells = [f"{r['max_rss_mib']:.0f} ({r['tree_pss_mib']:.0f})" if r else "-" for r in rows]
        print(f"{stage:<12}" + "".join(f"{cell:>18}" for cell in cells))


def heldout_check(counts: list[int]) -> None:
    """Time and numpy peak memory of the train stage's per-epoch held-out recall (`faclip.train.held_out_recall`)
    for M test images x M passages (M/2 dishes), with a tiny text model and random image vectors."""
    import numpy as np
    import torch

    from faclip.models import build_tiny_text
    from faclip.testset import TestSet
    from faclip.train import held_out_recall
    from synthetic import WORDS

    rng = np.random.default_rng(0)
    passages = [" ".join(rng.choice(WORDS, size=20)) for _ in range(max(counts))]
    model, tokenizer = build_tiny_text(passages)
    warm_up = True
    print("\ntrain stage's held-out recall (faclip.train.held_out_recall, before training and after each epoch)")
    for count in [min(counts), *counts]:  # the first, untimed call warms up (allocator, thread pools)
        passage_dish = np.arange(count) // 2
        image_emb = rng.standard_normal((count, model.config.hidden_size)).astype(np.float32)
        held_out = TestSet(dishes=[f"{d:06d}" for d in range(passage_dish.max() + 1)],
                           image_sha256=[f"{i:064x}" for i in range(count)],
                           image_emb=image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True),
                           shown_image=np.arange(count), shown_dish=rng.permutation(passage_dish),
                           passage_dish=passage_dish)
        tracemalloc.start()
        start = time.perf_counter()
        with torch.no_grad():
            held_out_recall(model, tokenizer, held_out, passages[:count], max_len=128)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if warm_up:
            warm_up = False
            continue
        print(f"   {count:>6} test images x {count:>6} passages: {seconds:6.1f} s, numpy peak {peak / 2**20:6.0f} MiB",
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000], help="pairs per dataset")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (per-epoch time is the point)")
    parser.add_argument("--shape", type=int, nargs=2, default=[IMAGES_PER_DISH, PASSAGES_PER_DISH],
                        metavar=("IMAGES", "PASSAGES"), help="images and passages per dish (pairs = their product "
                                                             "x dishes); 10 10 keeps 1M pairs at 100k images")
    parser.add_argument("--train-max-pairs", type=int,
                        help="above this many pairs, train runs 0 epochs (loads, held-out recall, saves)")
    parser.add_argument("--models", choices=["tiny", "clipfa"], default="tiny",
                        help="clipfa: CLIPfa-sized models from configs, random weights (RoBERTa-base, ViT-B/32 224 px)")
    parser.add_argument("--heldout", type=int, nargs="*", default=[2500, 5000, 10000],
                        help="test images (= passages) for the held-out recall check; none to skip it")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the stages (default: unset, as dvc runs them)")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temp folder, removed)")
    args = parser.parse_args(argv)
    print(machine_line())
    print(f"/usr/bin/time: {'yes' if Path(TIME).is_file() else 'no (peak RSS from getrusage)'}")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # torch's and faiss's intra-op threads in each stage
    print(f"OMP_NUM_THREADS: {os.environ.get('OMP_NUM_THREADS', 'unset')}")
    commands = stage_commands(REPO / "dvc.yaml")
    root = args.keep or Path(tempfile.mkdtemp(prefix="faclip-scaling-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        models = None
        if args.models == "clipfa":
            from synthetic import WORDS, clipfa_sized_models

            models = clipfa_sized_models(root / "clipfa_models", [" ".join(WORDS)] * 50)
            print(f"models: CLIPfa-sized, random weights, in {root / 'clipfa_models'}", flush=True)
        runs = [run_size(n, root, commands,
                         0 if args.train_max_pairs is not None and n > args.train_max_pairs else args.epochs,
                         tuple(args.shape), models) for n in sorted(args.sizes)]
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print_summary(runs)
    if args.heldout:
        heldout_check(sorted(args.heldout))
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
