"""The only text and image encoding in faclip: batched, L2-normalised float32 vectors.

`text_features` / `image_features` are the differentiable pooled outputs (training uses them);
`encode_texts` / `encode_images` wrap them for inference (no grad, batches, progress bar).
"""

import contextlib
import logging
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from faclip.errors import FaclipError
from faclip.images import ImageSource, load_rgb  # the one image decoder (search and the CLI import it from here)
from faclip.text import normalize_text

logger = logging.getLogger(__name__)

# How encode_images decodes: JPEGs at a reduced DCT scale (Pillow's `draft`, 1/2 to 1/8) that keeps the
# shorter side >= 2x the model's input, so the processor's own resize still does the last step. A 12 MP
# photo then decodes several times faster (BENCHMARKS.md, "Photo-sized images"). Vectors differ from a full
# decode's by a cosine > 0.99, so cached vectors are keyed by DECODE: another decode never mixes in.
# "-v2": 32-bit and float greys are scaled by their range, transparency keys composited, and every format
# reduced by a whole factor down to 2x the model's input as a JPEG's draft is (faclip.images).
JPEG_DRAFT = True
DECODE = ("jpeg-draft-2x" if JPEG_DRAFT else "full") + "-v2"


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    # bf16 on GPU halves memory traffic; CPU stays in fp32 (bf16 on CPU is slow and inexact).
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@contextlib.contextmanager
def _eval_mode(model):
    # Inference must not leave a model that is being trained in eval mode (dropout off) afterwards.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# Text runs 2-6 characters a token, so cutting it at 64 a token before normalising and tokenising
# leaves its first max_len tokens as they were, and a 50 MB passage costs what a page does.
CHARS_PER_TOKEN_BOUND = 64


def tokenize(tokenizer, texts: Sequence[str], max_len: int, padding: bool = True):
    """Normalise and tokenise texts, truncated to max_len; padded to the longest when `padding`."""
    return tokenizer(
        [normalize_text(t[: max_len * CHARS_PER_TOKEN_BOUND]) for t in texts],
        truncation=True,
        max_length=max_len,
        padding="longest" if padding else False,
        return_tensors="pt" if padding else None,
    )


def text_features(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Pooled text embedding (B, D): the pooler output, or the masked token mean if the model has none."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    if getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # (B, T, 1)
    return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pooled image embedding (B, D): the pooler output, or the CLS token if the model has none."""
    out = model(pixel_values=pixel_values)
    if getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    return out.last_hidden_state[:, 0]


def decode_min_side(processor) -> int | None:
    """The shorter side a JPEG may be decoded down to for this processor (2x its input), or None (full decode)."""
    if not JPEG_DRAFT:
        return None
    sizes = [getattr(processor, "size", None), getattr(processor, "crop_size", None)]
    sides = [value for size in sizes if size is not None
             for value in (dict(size).get(key) for key in ("shortest_edge", "height", "width")) if value]
    return 2 * max(sides) if sides else None


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], *, max_len: int, batch_size: int = 64,
                 progress: bool = False) -> np.ndarray:
    """Encode texts to L2-normalised float32 vectors (N, D), in input order."""
    device = next(model.parameters()).device
    # Longest first keeps padding per batch small; results go back to input order.
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = []
    with _eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc="encode texts", disable=not progress,
                          unit="batch"):
            batch = tokenize(tokenizer, [texts[i] for i in order[start:start + batch_size]], max_len).to(device)
            with _autocast(device):
                feats = text_features(model, batch["input_ids"], batch["attention_mask"])  # (B, D)
            chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
    if not chunks:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    vectors = torch.cat(chunks).numpy()
    out = np.empty_like(vectors)
    out[order] = vectors
    return out


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses one image per item, so DataLoader workers overlap it with encoding."""

    def __init__(self, sources: Sequence[ImageSource], processor):
        self.sources = sources
        self.processor = processor
        self.min_side = decode_min_side(processor)

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i) -> torch.Tensor | str:
        try:
            image = load_rgb(self.sources[i], self.min_side)
        except FaclipError as err:
            return str(err)  # raised in a worker it would reach us as traceback text: pass the message as data
        return preprocess_image(self.processor, image)  # (3, H, W)


def _collate_pixels(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    """A batch of pixel tensors (B, 3, H, W), or the first image's error message."""
    errors = [item for item in items if isinstance(item, str)]
    return errors[0] if errors else torch.stack(items)


@torch.no_grad()
def encode_images(model, processor, sources: Sequence[ImageSource], *, batch_size: int = 32,
                  num_workers: int = 0, progress: bool = False) -> np.ndarray:
    """Encode images to L2-normalised float32 vectors (N, D), in input order."""
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        _ImageDataset(sources, processor), batch_size=batch_size, num_workers=num_workers,
        collate_fn=_collate_pixels, pin_memory=device.type == "cuda",
    )
    chunks = []
    for pixels in tqdm(loader, desc="encode images", disable=not progress, unit="batch"):
        if isinstance(pixels, str):
            raise FaclipError(pixels)
        chunks.append(encode_pixels(model, pixels))
    if not chunks:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.concatenate(chunks)


def preprocess_image(processor, image: Image.Image) -> torch.Tensor:
    """One decoded RGB image as the model's input (3, H, W): the processor's resize, crop and normalisation."""
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


@torch.no_grad()
def encode_pixels(model, pixels: torch.Tensor) -> np.ndarray:
    """One batch of preprocessed images (B, 3, H, W) to L2-normalised float32 vectors (B, D)."""
    device = next(model.parameters()).device
    with _eval_mode(model), _autocast(device):
        feats = image_features(model, pixels.to(device))  # (B, D)
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
