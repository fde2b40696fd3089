"""GPU check: CLIPfa-sized models (random weights) through the real `embed` and `train` stages, on one GPU
and, when there are several, on all of them through `accelerate launch`.

    python benchmarks/gpu_check.py                  # on a GPU machine (~5 min on one H100)
    python benchmarks/gpu_check.py --pairs 40000    # more data
    python benchmarks/gpu_check.py --dry-run        # CPU: tiny models, a few hundred pairs, 2 CPU processes (~2 min)

Builds a synthetic dataset (benchmarks/synthetic.py, 256 px JPEGs, dishes x 10 images x 2 passages) and
CLIPfa-sized models from configs (RoBERTa-base 12 x 768, ViT-B/32 at 224 px; benchmarks/synthetic.py),
then runs the stage commands of dvc.yaml in a temp folder (benchmarks/scaling.py's runner):
prepare, base, embed, train (one epoch) on GPU 0; then, with N >= 2 GPUs, embed (from an empty cache)
and train again on all N via `accelerate launch --multi_gpu --num_processes N`. faclip uses bf16
autocast on CUDA (encoders) and accelerate's bf16 mixed precision (train) by itself.

Printed per run: images/s (embed's log line), pairs/s (train's log line), wall seconds, peak GPU memory
(nvidia-smi, sampled every 0.2 s, the largest GPU), and whether training learns: held-out recall@5
after the epoch must be above the untrained model's (metrics/train.json); the script exits 1 otherwise.
Never part of CI. --dry-run checks the script itself on CPU (tiny models, 2 CPU processes via torchrun).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from machine import load_average, machine_line  # noqa: E402
from scaling import run_stage, stage_commands, train_loop_timing, write_run_folder  # noqa: E402
from synthetic import WORDS, clipfa_sized_models, make_dataset  # noqa: E402

EMBED_LINE = re.compile(r"encoded (\d+) images in ([\d.]+) s \(([\d.]+) images/s\)")
TRAIN_OUTPUTS = ["models/finetuned", "models/checkpoints", "metrics/train", "metrics/train.json"]


class GpuMemory:
    """Peak memory used on any GPU (MiB), sampled from nvidia-smi in a thread; 0 without nvidia-smi."""

    def __init__(self, every: float = 0.2):
        self.peak, self._every = 0, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        if shutil.which("nvidia-smi") is None:
            return
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            self.peak = max([self.peak, *[int(v) for v in out.split() if v.isdigit()]])
            self._stop.wait(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def launcher(processes: int, cpu: bool) -> list[str]:
    """The command prefix that starts a stage on `processes` processes (none for one GPU / CPU process)."""
    if processes == 1:
        return []
    if cpu:  # `accelerate launch --cpu` starts one process on some machines: torchrun, as the tests do
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--mixed_precision", "bf16"]


def run(name: str, cmd: str, folder: Path, processes: int, cpu: bool) -> dict:
    argv = cmd.split()
    if processes > 1:
        cmd = " ".join([*launcher(processes, cpu), *argv[1:]])
    memory = GpuMemory()
    try:
        row = run_stage(cmd, folder, folder / f"{name}.log")
    finally:
        row_gpu = memory.stop()
    text = (folder / f"{name}.log").read_text(errors="replace")
    row["gpu_mib"] = row_gpu
    if (match := EMBED_LINE.search(text)) is not None:
        row["images_per_s"] = float(match.group(3))
    if (timing := train_loop_timing(text)) is not None:
        row["pairs_per_s"] = timing[2]
    return row


def report(label: str, row: dict) -> None:
    rate = (f"{row['images_per_s']:8.1f} images/s" if "images_per_s" in row
            else f"{row['pairs_per_s']:8.1f} pairs/s " if "pairs_per_s" in row else " " * 17)
    print(f"  {label:<26} {rate}  {row['wall_s']:7.1f} s wall  peak GPU {row['gpu_mib']:6d} MiB  "
          f"peak RSS {row['max_rss_mib']:6.0f} MiB", flush=True)


def learned(folder: Path) -> tuple[bool, str]:
    metrics = json.loads((folder / "metrics" / "train.json").read_text(encoding="utf-8"))
    before, after = metrics["untrained_test_recall@5"], metrics["test_recall@5"]
    return after > before, f"held-out recall@5 {before:.3f} untrained -> {after:.3f} trained"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000, help="synthetic pairs (dishes x 10 images x 2 passages)")
    parser.add_argument("--batch-size", type=int, default=256, help="train batch size (global)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, few pairs: checks this script only")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    import torch

    gpus = torch.cuda.device_count()
    print(machine_line())
    if args.dry_run:
        gpus, args.pairs, args.batch_size = 0, min(args.pairs, 400), min(args.batch_size, 32)
        os.environ["ACCELERATE_USE_CPU"] = "true"  # the N-process leg runs on CPU (gloo)
        print("dry run: CPU, tiny models, 2 CPU processes for the N-process leg; figures are not GPU figures")
    elif gpus == 0:
        print("no CUDA GPU here: nothing to check (use --dry-run to test the script on CPU)")
        return 2
    else:
        print(f"GPUs: {gpus} x {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="faclip-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    failures = 0
    try:
        folder = root / "run"
        folder.mkdir()
        dishes = max(2, args.pairs // 20)
        make_dataset(folder / "raw", dishes, 10, 2, size=256)
        models = None if args.dry_run else clipfa_sized_models(root / "models", [" ".join(WORDS)] * 50)
        write_run_folder(folder, folder / "raw", epochs=5 if args.dry_run else 1, models=models)
        params = yaml.safe_load((folder / "params.yaml").read_text(encoding="utf-8"))
        params.update(batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_steps=10)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        commands = stage_commands(REPO / "dvc.yaml")
        print(f"{dishes * 20} pairs, {dishes * 10} images (256 px JPEGs); models: "
              f"{'tiny' if models is None else 'CLIPfa-sized, random weights'}; batch {args.batch_size}")

        legs = [(1, "one GPU" if gpus else "one CPU process")]
        if gpus >= 2 or args.dry_run:
            legs.append((max(gpus, 2), f"{gpus} GPUs (accelerate launch)" if gpus else "2 CPU processes (torchrun)"))
        for stage in ("prepare", "base"):
            run_stage(commands[stage], folder, folder / f"{stage}.log")
        for processes, label in legs:
            print(f"{label}:")
            for path in ["data/embed_cache", "data/image_embeddings", *TRAIN_OUTPUTS]:  # from scratch each leg
                if (folder / path).is_dir():
                    shutil.rmtree(folder / path)
                (folder / path).unlink(missing_ok=True)
            for stage in ("embed", "train"):
                row = run(f"{stage}_{processes}", commands[stage], folder, processes, cpu=gpus == 0)
                report(f"{stage}", row)
            ok, line = learned(folder)
            failures += not ok
            print(f"  learns: {'yes' if ok else 'NO'}: {line}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"load average at the end: {load_average()}")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
