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
from safetensors.torch import load_file, save_model

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


# What a resumable state.json holds, and the type of each.
STATE_FIELDS = {"fingerprint": dict, "epoch": int, "step": int, "steps": list, "epochs": list, "untrained": dict}
CHECKPOINT_FILES = ("model.safetensors", "trainer.pt", "state.json")


def read_checkpoint_state(folder: Path, fingerprint: dict) -> dict | None:
    """The checkpoint's state when it was made from the same inputs and params, else None (logged why).

    A damaged checkpoint (a file missing, state.json not JSON or not a state) is ignored with a warning:
    training starts fresh and overwrites it, rather than stop until someone deletes the folder."""
    path = folder / "state.json"
    if not folder.is_dir() or not any((folder / name).exists() for name in CHECKPOINT_FILES):
        logger.info("no checkpoint in %s: starting fresh", folder)
        return None
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        logger.warning("ignoring the damaged checkpoint in %s (%s missing): starting fresh", folder, ", ".join(missing))
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        logger.warning("ignoring the damaged checkpoint in %s (state.json: %s): starting fresh", folder,
                       type(err).__name__)
        return None
    wrong = [key for key, kind in STATE_FIELDS.items()
             if not isinstance(state, dict) or not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)]
    if wrong:
        logger.warning("ignoring the damaged checkpoint in %s (state.json: %s missing or of the wrong type): "
                       "starting fresh", folder, wrong[0])
        return None
    saved = state["fingerprint"]
    changed = sorted(k for k in fingerprint.keys() | saved.keys() if saved.get(k) != fingerprint.get(k))
    if changed:
        logger.info("checkpoint in %s was made with another %s: starting fresh", folder, ", ".join(changed))
        return None
    logger.info("resuming from the checkpoint in %s (epoch %d, step %d)", folder, state["epoch"], state["step"])
    return state


def load_checkpoint(folder: Path, *, model, optimizer, logit_scale) -> bool:
    """Load the weights, optimizer state and logit_scale saved by save_checkpoint, in place; False (with a
    warning, nothing changed) when a file is damaged (truncated, not what save_checkpoint writes)."""
    try:  # read and check both files whole before touching the model: a failure leaves it as it was
        weights = load_file(str(folder / "model.safetensors"))
        trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
        if not (isinstance(trainer, dict) and isinstance(trainer.get("optimizer"), dict)
                and isinstance(trainer.get("logit_scale"), torch.Tensor) and trainer["logit_scale"].numel() == 1):
            raise ValueError("trainer.pt lacks the optimizer state or logit_scale")
        expected = model.state_dict()
        misfit = sorted(set(weights) ^ (set(expected) - _tied(model)))
        misfit += [key for key in weights if key in expected and weights[key].shape != expected[key].shape]
        if misfit:
            raise ValueError(f"model.safetensors does not fit the model ({misfit[0]}, {len(misfit)} in all)")
        optimizer.load_state_dict(trainer["optimizer"])  # checks the groups' sizes before it changes anything
        model.load_state_dict(weights, strict=False)  # the tied copies are filled by their originals
    except Exception as err:  # safetensors, pickle and torch raise many kinds on a damaged file
        logger.warning("ignoring the damaged checkpoint in %s (%s: %s): starting fresh", folder,
                       type(err).__name__, str(err).splitlines()[0][:160] if str(err) else "")
        return False
    with torch.no_grad():
        logit_scale.copy_(trainer["logit_scale"].reshape(logit_scale.shape))
    return True


def _tied(model) -> set[str]:
    """Names of parameters save_model left out as copies of another (tied weights)."""
    seen, tied = {}, set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = tensor.data_ptr()
        if key in seen:
            tied.add(name)
        seen.setdefault(key, name)
    return tied
