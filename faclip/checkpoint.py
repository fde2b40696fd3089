"""Training checkpoints: what a run depends on (its fingerprint), and saving / resuming the last epoch.

`models/checkpoints/last/` holds `model.safetensors` (text encoder weights), `trainer.pt` (optimizer
state and `logit_scale`, loadable with `weights_only=True`) and `state.json` (epoch, step, the history
the plots replay, and the fingerprint). A rerun resumes only when the fingerprint is identical.
"""

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from faclip.files import atomic_dir, sha256_dir, sha256_file, write_json
from faclip.params import TrainParams

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def fingerprint(*, code_files: list[Path], base_text_sha256: str, docstore: Path, pairs: Path,
                image_embeddings: Path, params: TrainParams) -> dict:
    """What a checkpoint depends on (code, input hashes, params): a checkpoint resumes only an identical run.

    `code_files` are the Python files training executes: after a code change DVC reruns `train`, and
    that must train anew, not finish from a checkpoint the old code wrote.
    """
    code = hashlib.sha256()
    for file in sorted(code_files):
        code.update(Path(file).read_bytes())
    return {"version": CHECKPOINT_VERSION, "code_sha256": code.hexdigest(), "base_text_sha256": base_text_sha256,
            "docstore_sha256": sha256_file(docstore), "pairs_sha256": sha256_file(pairs),
            "image_embeddings_sha256": sha256_dir(image_embeddings),
            **{f"params.{k}": v for k, v in dataclasses.asdict(params).items()}}


def save_checkpoint(folder: Path, *, model, optimizer, logit_scale, state: dict) -> None:
    """Write weights (safetensors), optimizer + logit_scale (torch, weights-only loadable) and state (JSON), atomically."""
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "logit_scale": logit_scale.detach().cpu()},
                   tmp / "trainer.pt")
        write_json(tmp / "state.json", state)


def read_checkpoint_state(folder: Path, fingerprint: dict) -> dict | None:
    """The checkpoint's state when it was made from the same inputs and params, else None (logged why)."""
    path = folder / "state.json"
    if not path.is_file():
        logger.info("no checkpoint in %s: starting fresh", folder)
        return None
    state = json.loads(path.read_text(encoding="utf-8"))
    saved = state.get("fingerprint", {})
    changed = sorted(k for k in fingerprint.keys() | saved.keys() if saved.get(k) != fingerprint.get(k))
    if changed:
        logger.info("checkpoint in %s was made with another %s: starting fresh", folder, ", ".join(changed))
        return None
    logger.info("resuming from the checkpoint in %s (epoch %d, step %d)", folder, state["epoch"], state["step"])
    return state


def load_checkpoint(folder: Path, *, model, optimizer, logit_scale) -> None:
    """Load the weights, optimizer state and logit_scale saved by save_checkpoint, in place."""
    load_model(model, str(folder / "model.safetensors"), device=str(next(model.parameters()).device))
    trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    with torch.no_grad():
        logit_scale.copy_(trainer["logit_scale"])
