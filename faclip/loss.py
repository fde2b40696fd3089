"""Symmetric multi-positive InfoNCE (CLIP's loss, open_clip style), knowing nothing of config.

CLIP's loss takes the diagonal as the only positive. Here a batch often holds several pairs of
one dish (one image with two passages, two photos of one dish), so every in-batch pair with the
same `food_id` is a positive: the target of each row is spread uniformly over its positives.
Treating same-dish pairs as negatives (as the original project did, grouping by image) would push
apart exactly what the model should pull together.
"""

import math

import torch
import torch.nn.functional as F

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
LOGIT_SCALE_MAX = math.log(100)  # CLIP clamps the scale at 100 to keep training stable


def positive_targets(food_ids: torch.Tensor) -> torch.Tensor:
    """Soft targets (B, B): row i is uniform over the pairs j with food_ids[j] == food_ids[i]."""
    positives = (food_ids[:, None] == food_ids[None, :]).float()  # (B, B), symmetric, diagonal set
    return positives / positives.sum(dim=1, keepdim=True)


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, food_ids: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies, with all same-dish pairs positive.

    `image_features`, `text_features`: L2-normalised (B, D); `food_ids`: int (B,) dish indices;
    `logit_scale`: the log inverse temperature (a scalar parameter).
    """
    logits_per_image = logit_scale.exp() * image_features @ text_features.T  # (B, B)
    logits_per_text = logits_per_image.T  # (B, B)
    # Positives are symmetric (same dish both ways), so both directions share one target matrix.
    targets = positive_targets(food_ids)  # (B, B)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


# --- several processes: one global batch --------------------------------------------------------


def gather_features(features: torch.Tensor, accelerator) -> torch.Tensor:
    """Every rank's features (B, D) in rank order, this rank's own slice keeping its gradient.

    `accelerator.gather` returns tensors without grad; swapping the local slice back in lets each
    rank's backward reach its own encoder pass, as open_clip's `gather_features` does.
    """
    if accelerator.num_processes == 1:
        return features
    local, rank = len(features), accelerator.process_index
    gathered = accelerator.gather(features.detach())  # (B, D)
    return torch.cat([gathered[:rank * local], features, gathered[(rank + 1) * local:]])


def sum_gathered_grads(model: torch.nn.Module, world: int) -> None:
    """Undo DDP's gradient mean after a loss over gathered features: the true gradient is the sum.

    Each rank's backward reached only its own slice of the global batch (the others were gathered
    without grad), and DDP averages over ranks, so multiplying by `world` restores the global gradient.
    """
    if world == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(world)
