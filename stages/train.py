"""Stage `train`: fine-tune the text encoder against the frozen image embeddings (locked-image tuning).

Inputs: the base text model, the docstore, the training pairs, the cached image embeddings, and the
top-level training params (epochs, batch_size, learning_rate, weight_decay, warmup_steps,
max_text_len, seed). Outputs: the fine-tuned HF folder (+ faclip.json, README.md), the checkpoints
folder (persisted, for resuming), metrics/train.json and the dvclive plots folder.

On N GPUs: `accelerate launch --num_processes N stages/train.py <same arguments>` (or torchrun).
"""

import argparse
import os
from pathlib import Path

# Before torch loads OpenMP: worker threads that spin while waiting starve each other whenever another
# process shares the cores (the sample trained 4x slower on 2 busy cores); sleeping costs ~nothing here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from faclip.errors import run_main  # noqa: E402
from faclip.files import write_json  # noqa: E402
from faclip.models import save_finetuned  # noqa: E402
from faclip.params import load_params  # noqa: E402
from faclip.train import train_text_encoder  # noqa: E402


def main(argv=None):
    # 1. paths (given once, in dvc.yaml) and the training params
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, required=True, help="base text model folder")
    parser.add_argument("--docstore", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--image-embeddings", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, required=True, help="persisted folder for resuming")
    parser.add_argument("--out", type=Path, required=True, help="fine-tuned model folder")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True, help="dvclive folder (plots)")
    args = parser.parse_args(argv)
    params = load_params().train

    # 2. train (resumes from the last checkpoint when inputs and params are unchanged)
    result = train_text_encoder(
        text_dir=args.text, docstore=args.docstore, pairs=args.pairs, image_embeddings=args.image_embeddings,
        checkpoints=args.checkpoints, live_dir=args.live, params=params,
    )

    # 3. outputs, written once (by the main process when there are several)
    if result.is_main_process:
        save_finetuned(args.out, result.model, base_text_dir=args.text, params=params, metrics=result.metrics,
                       logit_scale=result.logit_scale, base_text_sha256=result.base_text_sha256,
                       vision_sha256=result.vision_sha256)
        write_json(args.metrics, result.metrics)
        # dvc.yaml declares the folder; `epochs: 0` (a baseline) trains nothing and saves no checkpoint.
        args.checkpoints.mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    run_main(main)
