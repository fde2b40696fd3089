"""Symmetric multi-positive InfoNCE (CLIP's loss, open_clip style), knowing nothing of config.

CLIP's loss takes the diagonal as the only positive. Here every in-batch pair with the same group id
is a positive, the target of each row spread uniformly over its positives. What a group is, the
caller decides (`faclip.train` maps the `positives` param to ids): the dish (a batch often holds
several pairs of one dish: one image with two passages, two photos of one dish; the default), the
image (the original project's grouping, which treats two photos of one dish as negatives and pushes
apart what the model should pull together), or the pair itself (plain CLIP: the diagonal only).
With frozen image vectors, grouping by image IS plain CLIP: two pairs of one photo have equal logits
rows, so a target split over both costs what one target each costs (tests/test_loss.py shows it).
"""

import math

import torch
import torch.nn.functional as F

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
LOGIT_SCALE_MAX = math.log(100)  # CLIP clamps the scale at 100 to keep training stable


def positive_targets(group_ids: torch.Tensor) -> torch.Tensor:
    """Soft targets (B, B): row i is uniform over the pairs j with group_ids[j] == group_ids[i]."""
    positives = (group_ids[:, None] == group_ids[None, :]).float()  # (B, B), symmetric, diagonal set
    return positives / positives.sum(dim=1, keepdim=True)


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, group_ids: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies, with all same-group pairs positive.

    `image_features`, `text_features`: L2-normalised (B, D); `group_ids`: int (B,), pairs sharing an
    id are positives of each other (distinct ids: CLIP's loss); `logit_scale`: the log inverse
    temperature (a scalar parameter).
    """
    logits_per_image = logit_scale.exp() * image_features @ text_features.T  # (B, B)
    logits_per_text = logits_per_image.T  # (B, B)
    # Positives are symmetric (same group both ways), so both directions share one target matrix.
    targets = positive_targets(group_ids)  # (B, B)
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
