"""Locked-image text tuning (as in LiT): train the text encoder so that each passage lands on the
frozen image embeddings of its dish. Read `train_text_encoder` top to bottom.

- Data: train-split pairs only; the image side is the cached `data/image_embeddings` (no image is
  decoded here); passages are tokenised once and padded per batch.
- Multi-GPU through `accelerate`: every rank contrasts its text features against the global batch,
  so N processes compute what one process computes on the same global batch.
- Resume: an atomic checkpoint at every epoch end; a rerun resumes from it when the inputs and
  params fingerprint matches. Shuffling and dropout are seeded from (seed, epoch, rank) at each
  epoch start, so a resumed epoch draws exactly what the uninterrupted run drew (on every rank,
  which one saved RNG state would not give) and the final weights are identical.
"""

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from dvclive import Live
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from faclip.embeddings import load_image_embeddings
from faclip.encode import encode_texts, text_features, tokenize
from faclip.errors import FaclipError
from faclip.files import atomic_dir, sha256_dir, sha256_file, write_json, write_text
from faclip.loss import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, contrastive_loss
from faclip.evaluate import search_hits
from faclip.index import build_index
from faclip.metrics import metrics_from_hits
from faclip.models import FACLIP_JSON, load_text_model, read_model_info
from faclip.params import TrainParams
from faclip.tables import load_docstore, load_pairs

logger = logging.getLogger(__name__)

GRAD_CLIP = 1.0
RECALL_KS = (1, 5)
CHECKPOINT_VERSION = 1


# --- data ------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """What a step needs, in memory: each pair's passage and dish, the passages' token ids, image vectors."""
    passage_tokens: list[list[int]]  # token ids per docstore passage, tokenised once, unpadded
    passage_idx: torch.Tensor  # (N,) docstore row of each train pair
    image_emb: torch.Tensor  # (N, D) frozen, L2-normalised image vector of each train pair
    food_idx: torch.Tensor  # (N,) dish index of each train pair


@dataclass
class HeldOut:
    """The test split as retrieval queries: each test image against every docstore passage."""
    passages: list[str]  # (P,) docstore passage texts
    passage_food: np.ndarray  # (P,) dish index of each passage
    image_emb: np.ndarray  # (M, D) unique test images
    image_food: np.ndarray  # (M,) dish index of each test image


def load_data(*, docstore: Path, pairs: Path, image_embeddings: Path, tokenizer, max_len: int):
    """Read docstore, pairs and image embeddings into (TrainData, HeldOut, vision_sha256)."""
    passages = load_docstore(docstore)
    pairs_df = load_pairs(pairs)
    embeddings = load_image_embeddings(image_embeddings)
    dishes = sorted(set(passages["food_id"]) | set(pairs_df["food_id"]))
    dish_idx = {food_id: i for i, food_id in enumerate(dishes)}
    passage_row = {passage_id: i for i, passage_id in enumerate(passages["id"])}
    unknown = sorted(set(pairs_df["passage_id"]) - set(passage_row))
    if unknown:
        raise FaclipError(f"{pairs} names passage {unknown[0]} that {docstore} lacks; "
                          f"rerun `dvc repro prepare` so both come from one run")

    train = pairs_df[pairs_df["split"] == "train"]
    if len(train) < 2:
        raise FaclipError(f"{pairs} has {len(train)} train pairs; training needs at least 2 "
                          f"(add data, or lower data.test_fraction)")
    # Tokenised once: pairs share passages, so token ids are kept per passage, not per pair.
    tokens = tokenize(tokenizer, passages["passage_text"].tolist(), max_len, padding=False)["input_ids"]
    train_data = TrainData(
        passage_tokens=tokens,
        passage_idx=torch.tensor([passage_row[p] for p in train["passage_id"]]),
        image_emb=torch.from_numpy(np.ascontiguousarray(embeddings.lookup(train["image_sha256"].tolist()),
                                                        dtype=np.float32)),
        food_idx=torch.tensor([dish_idx[f] for f in train["food_id"]]),
    )

    test = pairs_df[pairs_df["split"] == "test"].drop_duplicates("image_sha256").sort_values("image_sha256")
    held_out = HeldOut(
        passages=passages["passage_text"].tolist(),
        passage_food=np.array([dish_idx[f] for f in passages["food_id"]]),
        image_emb=embeddings.lookup(test["image_sha256"].tolist()),
        image_food=np.array([dish_idx[f] for f in test["food_id"]]),
    )
    return train_data, held_out, embeddings.vision_sha256


def get_batch(data: TrainData, pair_idx: torch.Tensor, tokenizer):
    """The batch's distinct passages, padded to their longest, and each pair's row among them.

    Pairs share passages (every photo of a dish pairs with the same few texts), so each distinct
    passage is encoded once per step and its features are indexed out per pair: the same loss and
    gradients as encoding every pair's copy, for a fraction of the text encoder's work.
    Returns (input_ids (U, T), attention_mask (U, T), pair_to_unique (b,)).
    """
    passages, pair_to_unique = torch.unique(data.passage_idx[pair_idx], return_inverse=True)
    ids = [data.passage_tokens[i] for i in passages.tolist()]
    batch = tokenizer.pad({"input_ids": ids}, padding="longest", return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"], pair_to_unique


# --- schedule, evaluation, checkpoints -------------------------------------------------------


def lr_at(step: int, *, learning_rate: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then cosine decay towards 0."""
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def evaluate(model, tokenizer, held_out: HeldOut, max_len: int) -> dict[str, float]:
    """Image->passage recall@1/@5 on the test split: hit at k if any passage of the image's dish is in the top k."""
    # Exact search through a Flat index, top max(k) only: memory stays (images x 5), not (images x passages).
    dishes = max(held_out.image_food.max(initial=-1), held_out.passage_food.max(initial=-1)) + 1
    n_relevant = np.bincount(held_out.passage_food, minlength=dishes)[held_out.image_food]  # (M,)
    queries = np.flatnonzero(n_relevant > 0)
    if len(queries) == 0:
        return {}
    text_emb = encode_texts(model, tokenizer, held_out.passages, max_len=max_len)  # (P, D)
    query_food = held_out.image_food[queries]
    hits = search_hits(build_index(text_emb, "Flat"), held_out.image_emb[queries], max(RECALL_KS),
                       lambda q, p: query_food[q] == held_out.passage_food[p])  # (Q, 5)
    metrics = metrics_from_hits(hits, n_relevant[queries], RECALL_KS, ndcg=False)
    return {f"recall@{k}": metrics[f"recall@{k}"] for k in RECALL_KS}


def check_max_text_len(text_dir: Path, max_text_len: int) -> None:
    """max_text_len must fit the text model's position table (RoBERTa offsets positions by 2)."""
    config = Path(text_dir) / "config.json"
    if not config.is_file():
        return  # load_text_model says what is missing
    limit = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    if limit is not None and max_text_len > limit - 2:
        raise FaclipError(f"params.yaml: max_text_len={max_text_len} is too long for the text model in "
                          f"{text_dir} (max_position_embeddings={limit}); use at most {limit - 2}")


def fingerprint(*, base_text_sha256: str, docstore: Path, pairs: Path, image_embeddings: Path,
                params: TrainParams) -> dict:
    """What a checkpoint depends on (code, input hashes, params): a checkpoint resumes only an identical run.

    The faclip source is part of it: after a code change DVC reruns `train`, and that must train anew,
    not finish from a checkpoint the old code wrote.
    """
    code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py"))))
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


def _log(live: Live | None, step: int, row: dict) -> None:
    if live is None:
        return
    live.step = step
    for name, value in row.items():
        live.log_metric(name, value)


# --- the training loop ----------------------------------------------------------------------


@dataclass
class TrainResult:
    """The trained text encoder and what its model card and metrics report."""
    model: torch.nn.Module
    logit_scale: float
    metrics: dict
    counts: dict
    base_text_sha256: str
    vision_sha256: str
    is_main_process: bool


def train_text_encoder(*, text_dir: Path, docstore: Path, pairs: Path, image_embeddings: Path,
                       checkpoints: Path, live_dir: Path, params: TrainParams,
                       stop_after_epoch: int | None = None) -> TrainResult | None:
    """Fine-tune the text encoder against the frozen image embeddings; None when stopped by `stop_after_epoch` (tests)."""
    t0 = time.perf_counter()
    text_dir, checkpoints = Path(text_dir), Path(checkpoints)
    mixed_precision = "no"
    if torch.cuda.is_available():
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    accelerator = Accelerator(mixed_precision=mixed_precision)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process

    # 1. model, data and the global batch layout
    check_max_text_len(text_dir, params.max_text_len)
    model, tokenizer = load_text_model(text_dir)
    model = model.float().to(accelerator.device)  # fp32 master weights; autocast does bf16 on GPU
    data, held_out, vision_sha256 = load_data(docstore=docstore, pairs=pairs, image_embeddings=image_embeddings,
                                              tokenizer=tokenizer, max_len=params.max_text_len)
    if data.image_emb.shape[1] != model.config.hidden_size:
        raise FaclipError(f"image embeddings are {data.image_emb.shape[1]}-d but the text model in {text_dir} is "
                          f"{model.config.hidden_size}-d; rerun `dvc repro base embed` with a matching pair")
    n_pairs = len(data.food_idx)
    batch_size = min(params.batch_size, n_pairs)
    if batch_size < params.batch_size:
        logger.warning("only %d train pairs: batch_size %d lowered to %d", n_pairs, params.batch_size, batch_size)
    if batch_size % world:
        raise FaclipError(f"batch_size={batch_size} does not split over {world} processes; "
                          f"use a multiple of {world}")
    local_bs = batch_size // world
    # The last partial batch of each epoch is dropped: each rank needs an equal shard, each step its negatives.
    steps_per_epoch = n_pairs // batch_size
    total_steps = params.epochs * steps_per_epoch
    image_emb, food_idx = data.image_emb.to(accelerator.device), data.food_idx.to(accelerator.device)
    counts = {"train_pairs": n_pairs, "dishes": int(data.food_idx.unique().numel()),
              "passages": len(held_out.passages), "test_images": len(held_out.image_food)}
    logger.info("%d train pairs, batch %d on %d process(es), %d steps/epoch", n_pairs, batch_size, world,
                steps_per_epoch)

    # 2. optimizer: AdamW, no weight decay on biases, LayerNorm weights and the temperature
    logit_scale = torch.nn.Parameter(torch.tensor(LOGIT_SCALE_INIT, device=accelerator.device))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2] + [logit_scale]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": params.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=params.learning_rate, betas=(0.9, 0.98), eps=1e-6)
    # logit_scale stays outside DDP: every rank computes the same global loss, hence the same grad.
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    # 3. resume from the last checkpoint when it was made from the same inputs and params
    base_text_sha256 = sha256_dir(text_dir)
    inputs = fingerprint(base_text_sha256=base_text_sha256, docstore=docstore, pairs=pairs,
                         image_embeddings=image_embeddings, params=params)
    last = checkpoints / "last"
    state = read_checkpoint_state(last, inputs) if params.epochs > 0 else None
    if state is not None:
        load_checkpoint(last, model=raw_model, optimizer=optimizer, logit_scale=logit_scale)
    else:
        state = {"fingerprint": inputs, "epoch": 0, "step": 0, "steps": [], "epochs": [],
                 "untrained": evaluate(raw_model, tokenizer, held_out, params.max_text_len) if main else {}}
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) if main else None
    # Log the untrained model at step 0, then replay a resumed run's history: the plots cover the whole run.
    _log(live, 0, {f"test/{k}": v for k, v in state["untrained"].items()})
    for row in state["steps"] + state["epochs"]:
        _log(live, row["step"], {k: v for k, v in row.items() if k != "step"})

    # 4. train
    step, trained_pairs, train_s = state["step"], 0, 0.0
    for epoch in range(state["epoch"], params.epochs):
        # Seeded per (epoch, rank): a resumed epoch shuffles and drops out exactly like the original.
        order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(params.seed + epoch))
        torch.manual_seed(params.seed + 1000 * epoch + rank)
        batches = order[: steps_per_epoch * batch_size].view(steps_per_epoch, batch_size)  # global batches
        model.train()
        losses, t_epoch = [], time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{params.epochs}", unit="step", disable=not main)
        for batch in bar:
            lr = lr_at(step, learning_rate=params.learning_rate, warmup_steps=params.warmup_steps,
                       total_steps=total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            local = batch[rank * local_bs:(rank + 1) * local_bs]  # this rank's shard of the global batch
            input_ids, attention_mask, pair_to_unique = get_batch(data, local, tokenizer)
            features = text_features(model, input_ids.to(accelerator.device), attention_mask.to(accelerator.device))
            features = F.normalize(features.float(), dim=-1)[pair_to_unique.to(accelerator.device)]  # (b, D)
            if world > 1:
                # Everyone's features, in rank order; the local slice is swapped back in to keep its grad.
                gathered = accelerator.gather(features.detach())  # (B, D)
                features = torch.cat([gathered[:rank * local_bs], features, gathered[(rank + 1) * local_bs:]])
            batch = batch.to(accelerator.device)
            loss = contrastive_loss(image_emb[batch], features, food_idx[batch], logit_scale)  # global batch
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if world > 1:
                # DDP averages gradients over ranks, but each rank's backward reached only its own slice
                # of the global batch (the others were gathered without grad): the true gradient is their sum.
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(world)
            accelerator.clip_grad_norm_(list(model.parameters()) + [logit_scale], GRAD_CLIP)
            optimizer.step()
            with torch.no_grad():
                logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            step += 1
            losses.append(loss.item())  # a sync point, once per step: fine at this model size
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            row = {"train/loss": losses[-1], "train/lr": lr}
            state["steps"].append({"step": step, **row})
            _log(live, step, row)
        train_s += time.perf_counter() - t_epoch
        trained_pairs += steps_per_epoch * batch_size

        # 5. held-out signal, checkpoint
        epoch_row = {"epoch": epoch + 1, "train/epoch_loss": float(np.mean(losses)),
                     "train/logit_scale": logit_scale.item()}
        if main:
            epoch_row.update({f"test/{k}": v for k, v in evaluate(raw_model, tokenizer, held_out,
                                                                    params.max_text_len).items()})
            logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in epoch_row.items()))
            state["epochs"].append({"step": step, **epoch_row})
            _log(live, step, epoch_row)
            live.make_summary()
            state.update(epoch=epoch + 1, step=step)
            save_checkpoint(last, model=raw_model, optimizer=optimizer, logit_scale=logit_scale, state=state)
        accelerator.wait_for_everyone()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < params.epochs:
            logger.info("stopping after epoch %d (stop_after_epoch)", epoch + 1)
            if live is not None:
                live.end()
            return None

    # 6. summary
    if live is not None:
        live.end()
    final = state["epochs"][-1] if state["epochs"] else {}
    untrained = state["untrained"]
    metrics = {
        "epochs": params.epochs, "steps": step, "loss": final.get("train/epoch_loss"),
        "logit_scale": logit_scale.item(), "wall_s": round(time.perf_counter() - t0, 3),
        "pairs_per_s": round(trained_pairs / train_s, 1) if train_s > 0 else None,
        **{f"test_recall@{k}": final.get(f"test/recall@{k}", untrained.get(f"recall@{k}")) for k in RECALL_KS},
        **{f"untrained_test_recall@{k}": untrained.get(f"recall@{k}") for k in RECALL_KS},
        **counts,
    }
    return TrainResult(model=raw_model.cpu().eval(), logit_scale=logit_scale.item(),
                       metrics=metrics, counts=counts, base_text_sha256=base_text_sha256,
                       vision_sha256=vision_sha256, is_main_process=main)


# --- the result folder ------------------------------------------------------------------------


def model_card(result: TrainResult, params: TrainParams, base_source: str) -> str:
    """The finetuned folder's README.md: what it is, base models, data, metrics, how to load it."""
    m = result.metrics

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    return f"""---
library_name: transformers
language: fa
tags: [clip, persian, food, retrieval, faclip]
---
# faclip text encoder (fine-tuned)

A Persian text encoder tuned with frozen image embeddings (locked-image tuning, as in LiT) so that a
passage about a dish lands near photos of that dish. Pair it with the vision encoder whose folder
hash is `{result.vision_sha256}`: texts and images are compared by cosine similarity of the
L2-normalised pooled outputs.

## Base models
- text: `{base_source}` (base folder sha256 `{result.base_text_sha256}`)
- vision (frozen, used through cached image embeddings): folder sha256 `{result.vision_sha256}`

## Training data
{result.counts['train_pairs']} train (image, passage) pairs over {result.counts['dishes']} dishes;
{result.counts['passages']} passages in the docstore; {result.counts['test_images']} held-out test images.

## Training
{params.epochs} epochs, {m['steps']} steps, batch {params.batch_size}, AdamW lr {params.learning_rate}
(warmup {params.warmup_steps} steps, then cosine), weight decay {params.weight_decay},
max_text_len {params.max_text_len}, seed {params.seed}; symmetric InfoNCE with every same-dish pair
as a positive; learned logit_scale {result.logit_scale:.4f} (temperature {math.exp(-result.logit_scale):.4f}).

## Held-out results (image -> passage, test split)
| | recall@1 | recall@5 |
|---|---|---|
| untrained (base text model) | {fmt(m['untrained_test_recall@1'])} | {fmt(m['untrained_test_recall@5'])} |
| this model | {fmt(m['test_recall@1'])} | {fmt(m['test_recall@5'])} |

Final train loss: {fmt(m['loss'])}.

## How to load
```python
import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("models/finetuned")
model = AutoModel.from_pretrained("models/finetuned").eval()
batch = tokenizer(["قورمه سبزی"], padding=True, truncation=True, max_length={params.max_text_len}, return_tensors="pt")
with torch.no_grad():
    text_emb = torch.nn.functional.normalize(model(**batch).pooler_output, dim=-1)
```
Training fed texts through `faclip.text.normalize_text` (Persian letters for Arabic ones, no
diacritics, tidy ZWNJ/spaces); normalise queries the same way for the best match. `faclip.json` holds
the learned `logit_scale` (cosine similarities times exp(logit_scale) are CLIP logits).
"""


def save_finetuned(out_dir: Path, result: TrainResult, params: TrainParams, base_text_dir: Path) -> None:
    """Write the HF folder (safetensors + tokenizer), faclip.json and the model card, atomically."""
    base_source = read_model_info(base_text_dir).get("source", str(base_text_dir))
    with atomic_dir(out_dir) as tmp:
        result.model.save_pretrained(tmp, safe_serialization=True)
        # A fresh copy: tokenising stores truncation/padding state in tokenizer.json, which would make
        # the folder's bytes depend on the last call made.
        AutoTokenizer.from_pretrained(base_text_dir, local_files_only=True).save_pretrained(tmp)
        write_json(tmp / FACLIP_JSON, {"logit_scale": result.logit_scale,
                                       "base_text_sha256": result.base_text_sha256,
                                       "vision_sha256": result.vision_sha256,
                                       "params": dataclasses.asdict(params)})
        write_text(tmp / "README.md", model_card(result, params, base_source))
