"""Locked-image text tuning (as in LiT): train the text encoder so that each passage lands on the
frozen image embeddings of its dish. Read `train_text_encoder` top to bottom.

- Data: train-split pairs only; the image side is the cached `data/image_embeddings` (no image is
  decoded here); passages are tokenised once and padded per batch.
- Multi-GPU through `accelerate`: every rank contrasts its text features against the global batch
  (`faclip.loss.gather_features`), so N processes compute what one process computes on the same
  global batch.
- Resume (`faclip.checkpoint`): an atomic checkpoint at every epoch end; a rerun resumes from it when
  the code, inputs and params fingerprint matches. Shuffling and dropout are seeded from (seed, epoch, rank) at each
  epoch start, so a resumed epoch draws exactly what the uninterrupted run drew (on every rank,
  which one saved RNG state would not give) and the final weights are identical.
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from dvclive import Live
from tqdm.auto import tqdm

from faclip.checkpoint import fingerprint, load_checkpoint, read_checkpoint_state, save_checkpoint
from faclip.code import import_closure
from faclip.embed import load_image_embeddings
from faclip.encode import encode_texts, text_features, tokenize
from faclip.errors import FaclipError
from faclip.files import sha256_dir
from faclip.index import build_index
from faclip.loss import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, contrastive_loss, gather_features, sum_gathered_grads
from faclip.metrics import metrics_from_hits
from faclip.models import check_max_text_len, load_text_model
from faclip.params import TrainParams
from faclip.tables import load_docstore, load_pairs
from faclip.testset import TestSet, image_to_text_hits, load_test_set

logger = logging.getLogger(__name__)

GRAD_CLIP = 1.0
RECALL_KS = (1, 5)


# --- data ------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """What a step needs, in memory: each pair's passage and dish, the passages' token ids, image vectors."""
    passage_tokens: list[list[int]]  # token ids per docstore passage, tokenised once, unpadded
    passage_idx: torch.Tensor  # (N,) docstore row of each train pair
    image_emb: torch.Tensor  # (N, D) frozen, L2-normalised image vector of each train pair
    food_idx: torch.Tensor  # (N,) dish index of each train pair
    image_idx: torch.Tensor  # (N,) distinct-image index of each train pair


def load_data(*, docstore: Path, pairs: Path, image_embeddings: Path, tokenizer, max_len: int):
    """Read docstore, pairs and image embeddings into (TrainData, held-out TestSet, passage texts, vision_sha256)."""
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
        image_idx=torch.from_numpy(pd.factorize(train["image_sha256"], sort=True)[0]),
    )

    held_out = load_test_set(pairs_df, passages, embeddings)
    return train_data, held_out, passages["passage_text"].tolist(), embeddings.vision_sha256


def group_ids(data: TrainData, positives: str) -> torch.Tensor:
    """The loss's group id of each train pair (N,): pairs sharing one are positives (`positives` param)."""
    return {"dish": data.food_idx, "image": data.image_idx, "pair": torch.arange(len(data.food_idx))}[positives]


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


def held_out_recall(model, tokenizer, held_out: TestSet, passages: list[str], max_len: int) -> dict[str, float]:
    """Image->passage recall@1/@5 on the test split (the `evaluate` stage's test set), exact search."""
    if not held_out.image_sha256:
        return {}
    text_emb = encode_texts(model, tokenizer, passages, max_len=max_len)  # (P, D)
    hits = image_to_text_hits(held_out, build_index(text_emb, "Flat"), max(RECALL_KS))  # (M, 5)
    metrics = metrics_from_hits(hits, held_out.relevant_passages, RECALL_KS, ndcg=False)
    return {f"recall@{k}": metrics[f"recall@{k}"] for k in RECALL_KS}


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
    metrics: dict  # reproducible figures only (metrics/train.json is in git); timings go to the log
    base_text_sha256: str
    vision_sha256: str
    is_main_process: bool


def train_text_encoder(*, text_dir: Path, docstore: Path, pairs: Path, image_embeddings: Path,
                       checkpoints: Path, live_dir: Path, params: TrainParams) -> TrainResult:
    """Fine-tune the text encoder against the frozen image embeddings, resuming an interrupted identical run."""
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
    data, held_out, passages, vision_sha256 = load_data(docstore=docstore, pairs=pairs,
                                                        image_embeddings=image_embeddings, tokenizer=tokenizer,
                                                        max_len=params.max_text_len)
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
    image_emb, groups = data.image_emb.to(accelerator.device), group_ids(data, params.positives).to(accelerator.device)
    counts = {"train_pairs": n_pairs, "dishes": int(data.food_idx.unique().numel()),
              "passages": len(passages), "test_images": len(held_out.image_sha256)}
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
    inputs = fingerprint(code_files=import_closure(__file__), base_text_sha256=base_text_sha256, docstore=docstore,
                         pairs=pairs, image_embeddings=image_embeddings, params=params)
    last = checkpoints / "last"
    state = read_checkpoint_state(last, inputs) if params.epochs > 0 else None
    if state is not None and not load_checkpoint(last, model=raw_model, optimizer=optimizer, logit_scale=logit_scale):
        state = None  # damaged: warned, and training starts fresh (the next epoch end overwrites it)
    if state is None:
        state = {"fingerprint": inputs, "epoch": 0, "step": 0, "steps": [], "epochs": [],
                 "untrained": held_out_recall(raw_model, tokenizer, held_out, passages, params.max_text_len)
                 if main else {}}
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
            features = gather_features(features, accelerator)  # (B, D): the global batch, in rank order
            batch = batch.to(accelerator.device)
            loss = contrastive_loss(image_emb[batch], features, groups[batch], logit_scale)  # global batch
            losses.append(loss.item())  # a sync point, once per step: fine at this model size
            if not math.isfinite(losses[-1]):  # the same global loss on every rank: all stop here, nothing written
                raise FaclipError(f"the training loss became {losses[-1]} at step {step + 1} (epoch {epoch + 1}, "
                                  f"learning rate {lr:.3g}): training diverged; lower learning_rate in params.yaml "
                                  f"(now {params.learning_rate})")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            sum_gathered_grads(model, world)
            accelerator.clip_grad_norm_(list(model.parameters()) + [logit_scale], GRAD_CLIP)
            optimizer.step()
            with torch.no_grad():
                logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            step += 1
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
            recall = held_out_recall(raw_model, tokenizer, held_out, passages, params.max_text_len)
            epoch_row.update({f"test/{k}": v for k, v in recall.items()})
            logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in epoch_row.items()))
            state["epochs"].append({"step": step, **epoch_row})
            _log(live, step, epoch_row)
            live.make_summary()
            state.update(epoch=epoch + 1, step=step)
            save_checkpoint(last, model=raw_model, optimizer=optimizer, logit_scale=logit_scale, state=state)
        accelerator.wait_for_everyone()

    # 6. summary
    if live is not None:
        live.end()
    final = state["epochs"][-1] if state["epochs"] else {}
    untrained = state["untrained"]
    # Wall time and throughput depend on the machine: logged, never in the git-tracked metrics.
    logger.info("trained %d pairs in %.1f s of epochs (%.1f pairs/s); %.1f s in all", trained_pairs, train_s,
                trained_pairs / train_s if train_s > 0 else 0.0, time.perf_counter() - t0)
    metrics = {
        "epochs": params.epochs, "steps": step, "loss": final.get("train/epoch_loss"),
        "logit_scale": logit_scale.item(),
        **{f"test_recall@{k}": final.get(f"test/recall@{k}", untrained.get(f"recall@{k}")) for k in RECALL_KS},
        **{f"untrained_test_recall@{k}": untrained.get(f"recall@{k}") for k in RECALL_KS},
        **counts,
    }
    return TrainResult(model=raw_model.cpu().eval(), logit_scale=logit_scale.item(),
                       metrics=metrics, base_text_sha256=base_text_sha256,
                       vision_sha256=vision_sha256, is_main_process=main)
