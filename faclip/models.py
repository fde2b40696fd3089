"""Base models: build the offline `tiny` pair, or load a hub id / local folder, and save as HF folders.

Every model folder faclip writes is a plain `save_pretrained` folder (safetensors + tokenizer or
image processor) loadable by transformers alone, plus a small `faclip.json` with provenance.
"""

import logging
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from faclip.errors import FaclipError

logger = logging.getLogger(__name__)


def _require_folder(path: str | Path, stage: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FaclipError(f"no model found at {path}; run `dvc repro {stage}` to create it")
    return path


def load_text_model(path: str | Path, device: torch.device | str = "cpu"):
    """Load a saved text encoder folder: (model in eval mode on `device`, tokenizer)."""
    path = _require_folder(path, "base")
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def load_vision_model(path: str | Path, device: torch.device | str = "cpu"):
    """Load a saved vision encoder folder: (CLIPVisionModel in eval mode on `device`, image processor)."""
    path = _require_folder(path, "base")
    model = CLIPVisionModel.from_pretrained(path, local_files_only=True).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    return model, processor
