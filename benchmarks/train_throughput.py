"""Training throughput: the original project's design against faclip's train loop, same data, same models.

    python benchmarks/train_throughput.py                          # the bundled sample (~1 min)
    python benchmarks/train_throughput.py --profile                # + where faclip's training time goes
    python benchmarks/train_throughput.py --synthetic 40 8 2 --image-size 512   # photo-sized JPEGs

(a) "original": a minimal re-implementation of the original project's design (its `ImageTextPairs`
    dataset + `FaCLIPTextTrainer`): a DataLoader that opens and preprocesses every image from disk at
    every step, and the frozen vision encoder run on each batch (no grad) before the text step.
(b) "faclip": the `embed` stage's work once (`faclip.embed.embed_images`, counted), then the
    train stage's loop (`faclip.train.train_text_encoder`) on the cached image vectors, with all it
    does per run (hashing inputs for resume, per-epoch held-out recall, checkpoint, dvclive).

Both start from the same saved tiny base models, use the same train pairs, batch size, optimizer
settings, loss (`faclip.loss.contrastive_loss`) and tokenisation (`faclip.encode.tokenize`); only the
data path differs. Throughput = train pairs seen / wall seconds, from model loading to the end of the
last epoch. (a) is timed at the end of epoch 1 and of epoch N in one run; (b) runs once per epoch count
(a fresh checkpoint folder each time, so nothing resumes). Each side runs `--repeat` times,
interleaved, and the fastest run counts; CPU seconds are printed too. Torch runs on one thread by
default (see --threads). The original's time is also split into setup / loading batches (images from
disk + tokenising) / vision encoder / text step, which bounds the ratio: caching removes only the
middle two, so ratio(E epochs) <= E * (loading + vision + text) / (embed + E * text).
"""

import argparse
import cProfile
import io
import logging
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from faclip.embed import embed_images, save_image_embeddings  # noqa: E402
from faclip.encode import image_features, load_rgb, text_features, tokenize  # noqa: E402
from faclip.loss import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, contrastive_loss  # noqa: E402
from faclip.models import load_text_model, load_vision_model, materialise_base, tiny_corpus  # noqa: E402
from faclip.params import TrainParams  # noqa: E402
from faclip.prepare import prepare_dataset  # noqa: E402
from faclip.train import train_text_encoder  # noqa: E402
from machine import load_average, machine_line  # noqa: E402
from scaling import train_loop_timing  # noqa: E402
from synthetic import make_dataset  # noqa: E402


class Clock:
    """Wall and CPU seconds since creation; CPU = this process's threads + its reaped children (workers).

    On a shared machine wall time includes time spent waiting for a core; CPU time does not, so the
    two together tell a slow step from a busy machine.
    """

    def __init__(self):
        self.wall0, self.cpu0 = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall0, self._cpu() - self.cpu0


# --- (a) the original design, re-implemented minimally -------------------------------------


class OriginalPairs(torch.utils.data.Dataset):
    """The original `ImageTextPairs`: one (pixel_values, passage, dish) per pair, the image read from disk each time."""

    def __init__(self, pairs: pd.DataFrame, passages: dict[str, str], dish_idx: dict[str, int], data_root: Path,
                 processor):
        self.rows = list(zip(pairs["image_path"], pairs["passage_id"], pairs["food_id"]))
        self.passages, self.dish_idx, self.data_root, self.processor = passages, dish_idx, data_root, processor

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        image_path, passage_id, food_id = self.rows[i]
        image = load_rgb(self.data_root / image_path)
        pixel_values = self.processor(images=image, return_tensors="pt")["pixel_values"][0]  # (3, H, W)
        return pixel_values, self.passages[passage_id], self.dish_idx[food_id]


def tick(split: dict, name: str, since: float) -> float:
    now = time.perf_counter()
    split[name] = split.get(name, 0.0) + now - since
    return now


def train_original(*, text_dir: Path, vision_dir: Path, train_pairs: pd.DataFrame, docstore: pd.DataFrame,
                   data_root: Path, params: TrainParams, workers: int, split: dict) -> list[tuple[float, float]]:
    """Train as the original did; returns (wall s, CPU s) at each epoch end, from model loading.

    Adds wall seconds by part (setup, loading batches, vision encoder, text step) into `split`.
    """
    clock = Clock()
    text_model, tokenizer = load_text_model(text_dir)
    vision_model, processor = load_vision_model(vision_dir)
    vision_model.requires_grad_(False)
    dish_idx = {f: i for i, f in enumerate(sorted(set(docstore["food_id"]) | set(train_pairs["food_id"])))}
    dataset = OriginalPairs(train_pairs, dict(zip(docstore["id"], docstore["passage_text"])), dish_idx, data_root,
                            processor)

    def collate(items):
        pixel_values, texts, dishes = zip(*items)
        batch = tokenize(tokenizer, texts, params.max_text_len)
        return torch.stack(pixel_values), batch["input_ids"], batch["attention_mask"], torch.tensor(dishes)

    loader = torch.utils.data.DataLoader(dataset, batch_size=params.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(params.seed))
    logit_scale = torch.nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
    optimizer = torch.optim.AdamW(list(text_model.parameters()) + [logit_scale], lr=params.learning_rate,
                                  weight_decay=params.weight_decay, betas=(0.9, 0.98), eps=1e-6)
    text_model.train()
    epoch_ends = []
    split["setup"] += time.perf_counter() - clock.wall0
    for _ in range(params.epochs):
        t = time.perf_counter()
        for pixel_values, input_ids, attention_mask, dishes in loader:
            t = tick(split, "loading batches", t)  # images from disk + tokenising
            with torch.no_grad():  # the frozen vision encoder, run again on every batch of every epoch
                image_emb = F.normalize(image_features(vision_model, pixel_values), dim=-1)  # (B, D)
            t = tick(split, "vision encoder", t)
            text_emb = F.normalize(text_features(text_model, input_ids, attention_mask), dim=-1)  # (B, D)
            loss = contrastive_loss(image_emb, text_emb, dishes, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(text_model.parameters()) + [logit_scale], 1.0)
            optimizer.step()
            with torch.no_grad():
                logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            loss.item()
            t = tick(split, "text step", t)
        epoch_ends.append(clock.read())
    return epoch_ends


# --- (b) faclip: embed once, then the train stage's loop --------------------------------------


def run_embed(pairs: pd.DataFrame, data_root: Path, vision_dir: Path, out: Path) -> tuple[float, float]:
    """The embed stage's work from an empty cache into `out`: (wall s, CPU s)."""
    clock = Clock()
    embeddings, _ = embed_images(pairs, data_root=data_root, vision_dir=vision_dir, cache_dir=out.with_name("cache"))
    save_image_embeddings(out, embeddings)
    return clock.read()


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run_faclip_train(*, work: Path, tag: str, text_dir: Path, docstore: Path, pairs: Path, image_embeddings: Path,
                     params: TrainParams) -> tuple[tuple[float, float], dict]:
    """One train-stage run from scratch (fresh checkpoint folder): ((wall s, CPU s), its metrics + loop pairs_per_s).

    The loop's own pairs/s comes from train's log line (timings are kept out of metrics/train.json)."""
    lines, train_logger = _Lines(), logging.getLogger("faclip.train")
    train_logger.addHandler(lines)
    level = train_logger.level
    train_logger.setLevel(logging.INFO)
    clock = Clock()
    try:
        result = train_text_encoder(text_dir=text_dir, docstore=docstore, pairs=pairs,
                                    image_embeddings=image_embeddings, checkpoints=work / f"checkpoints_{tag}",
                                    live_dir=work / f"live_{tag}", params=params)
    finally:
        train_logger.removeHandler(lines)
        train_logger.setLevel(level)
    times = clock.read()
    loop = train_loop_timing("\n".join(lines.lines))
    return times, {**result.metrics, "pairs_per_s": loop[2] if loop else float("nan")}


# --- the comparison ---------------------------------------------------------------------------


def prepare_inputs(data_root: Path, work: Path) -> dict:
    """Prepare the raw data and build the tiny base models once, into `work`."""
    prepared = prepare_dataset(data_root, test_fraction=0.2)
    docstore, pairs = work / "docstore.parquet", work / "training_pairs.csv"
    prepared.docstore.to_parquet(docstore, index=False)
    prepared.pairs.to_csv(pairs, index=False)
    materialise_base("tiny", "tiny", lambda: tiny_corpus(prepared.docstore), work / "text", work / "vision")
    return {"docstore": docstore, "pairs": pairs, "text_dir": work / "text", "vision_dir": work / "vision",
            "pairs_df": prepared.pairs, "docstore_df": prepared.docstore}


def best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The repeat with the least wall time: the one least disturbed by other processes."""
    return min(runs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "sample", help="raw data root")
    parser.add_argument("--synthetic", type=int, nargs=3, metavar=("DISHES", "IMAGES", "PASSAGES"),
                        help="use a synthetic dataset (benchmarks/synthetic.py) instead of --data")
    parser.add_argument("--image-size", type=int, default=48, help="side of the synthetic JPEGs, pixels")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers of the original design (0 was its fastest on 2 cores)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, 0 = torch's default (one per core); 1 by default: on a shared 2-core "
                             "machine two threads made each step 3-5x slower (waiting at OpenMP barriers)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side, interleaved; the fastest counts")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed runs, profile one more faclip train run (torch.profiler + cProfile)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = TrainParams(epochs=args.epochs, batch_size=args.batch_size)
    epoch_counts = sorted({1, args.epochs})
    print(machine_line())

    with tempfile.TemporaryDirectory(prefix="faclip-bench-") as tmp:
        work = Path(tmp)
        data_root = args.data
        if args.synthetic:
            data_root = work / "raw"
            make_dataset(data_root, *args.synthetic, size=args.image_size)
        inputs = prepare_inputs(data_root, work)
        train_pairs = inputs["pairs_df"][inputs["pairs_df"]["split"] == "train"]
        n_images = inputs["pairs_df"]["image_sha256"].nunique()
        per_epoch = (len(train_pairs) // params.batch_size) * params.batch_size  # both drop the last partial batch
        print(f"data: {data_root} -> {len(train_pairs)} train pairs ({per_epoch} per epoch in full batches of "
              f"{params.batch_size}), {n_images} distinct images; tiny models (width 128, vision 64 px); "
              f"torch threads {torch.get_num_threads()}, original DataLoader workers {args.workers}")

        embed_runs, ours, original, profiler = [], {e: [] for e in epoch_counts}, [], None
        split = {"setup": 0.0}
        for r in range(args.repeat):
            # (b): the one-off embed from an empty cache, then one train run per epoch count.
            embed_runs.append(run_embed(inputs["pairs_df"], data_root, inputs["vision_dir"],
                                        work / f"r{r}" / "image_embeddings"))
            for epochs in epoch_counts:
                clock_metrics = run_faclip_train(
                    work=work / f"r{r}", tag=f"e{epochs}", text_dir=inputs["text_dir"], docstore=inputs["docstore"],
                    pairs=inputs["pairs"], image_embeddings=work / f"r{r}" / "image_embeddings",
                    params=TrainParams(epochs=epochs, batch_size=params.batch_size))
                ours[epochs].append(clock_metrics)
            # (a): one run, read at every epoch end.
            original.append(train_original(text_dir=inputs["text_dir"], vision_dir=inputs["vision_dir"],
                                           train_pairs=train_pairs, docstore=inputs["docstore_df"],
                                           data_root=data_root, params=params, workers=args.workers,
                                           split=split))

        if args.profile:  # one more run, not timed: op level (torch.profiler) and faclip functions (cProfile)
            profiler = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]), cProfile.Profile())
            with profiler[0]:
                profiler[1].enable()
                run_faclip_train(work=work / "profile", tag="p", text_dir=inputs["text_dir"],
                                 docstore=inputs["docstore"], pairs=inputs["pairs"],
                                 image_embeddings=work / "r0" / "image_embeddings", params=params)
                profiler[1].disable()

    embed_wall, embed_cpu = best(embed_runs)
    print(f"\nbest of {args.repeat} interleaved runs; wall seconds (CPU seconds in brackets)")
    print(f"faclip embed, one-off ({n_images} images): {embed_wall:.2f} s ({embed_cpu:.2f})")
    print(f"{'epochs':>6} | {'original s':>14} {'pairs/s':>8} | {'faclip embed+train s':>24} {'pairs/s':>8} "
          f"{'loop-only':>9} | {'ratio':>6} {'CPU ratio':>9}")
    for epochs in epoch_counts:
        seen = per_epoch * epochs
        orig_wall, orig_cpu = best([run[epochs - 1] for run in original])
        (train_wall, train_cpu), metrics = min(ours[epochs], key=lambda run: run[0])
        ours_wall, ours_cpu = embed_wall + train_wall, embed_cpu + train_cpu
        print(f"{epochs:>6} | {orig_wall:>7.2f} ({orig_cpu:>5.1f}) {seen / orig_wall:>8.1f} | "
              f"{f'{embed_wall:.2f}+{train_wall:.2f}':>13} ({ours_cpu:>7.1f}) {seen / ours_wall:>8.1f} "
              f"{metrics['pairs_per_s']:>9.1f} | {orig_wall / ours_wall:>5.2f}x {orig_cpu / ours_cpu:>8.2f}x")
    print("loop-only: faclip's own pairs/s over its epoch loops alone (train's log line \"trained N pairs in X s\")")
    total = sum(split.values())
    print(f"original's {args.epochs}-epoch wall time by part (all runs): "
          + ", ".join(f"{name} {100 * v / total:.0f}%" for name, v in split.items()))
    print(f"load average at the end: {load_average()}")

    if profiler is not None:
        print(f"\ntorch.profiler, one more {args.epochs}-epoch faclip train run (not timed above), top ops by total CPU:")
        print(profiler[0].key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=40))
        out = io.StringIO()
        pstats.Stats(profiler[1], stream=out).sort_stats("cumulative").print_stats(r"faclip/|accelerate/optimizer|"
                                                                                    r"autograd/__init__|dvclive/live", 20)
        print(f"cProfile of the same run, faclip functions (cumulative):\n{out.getvalue()}")


if __name__ == "__main__":
    main()
