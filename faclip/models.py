"""Base models: build the offline `tiny` pair, or load a hub id / local folder, and save as HF folders.

Every model folder faclip writes is a plain `save_pretrained` folder (safetensors + tokenizer or
image processor) loadable by transformers alone, plus a small `faclip.json` with provenance.

Images are preprocessed by `CLIPImageProcessorPil`, the PIL backend of `CLIPImageProcessor`, named
explicitly: the default backend switches to torchvision when that is installed, and its slightly
different resizing would make cached image vectors disagree with freshly encoded queries.
"""

import json
import logging
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from PIL import Image
from tokenizers import ByteLevelBPETokenizer
from transformers import (AutoModel, AutoTokenizer, CLIPImageProcessorPil, CLIPVisionConfig,
                          CLIPVisionModel, RobertaConfig, RobertaModel, RobertaTokenizerFast)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from faclip.encode import encode_images, encode_texts
from faclip.errors import FaclipError
from faclip.files import atomic_dir, write_json
from faclip.params import TINY
from faclip.text import normalize_text

logger = logging.getLogger(__name__)

FACLIP_JSON = "faclip.json"
TINY_SEED = 0
TINY_WIDTH = 128  # both tiny encoders output this width, as the real CLIPfa pair both output 768
TINY_MAX_LEN = 512  # fixed, so editing max_text_len never reruns `base`; training truncates further
TINY_IMAGE_SIZE = 64
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


# --- tiny models, built offline from configs -------------------------------------------------


def tiny_corpus(docstore: pd.DataFrame) -> list[str]:
    """The BPE training corpus: the docstore's distinct titles and its passages, normalised as encoders read them."""
    for column in ("title", "passage_text"):
        if column not in docstore.columns:
            raise FaclipError(f"the docstore has no {column!r} column (columns: {list(docstore.columns)}); "
                              f"rerun `dvc repro prepare`")
    titles = sorted(set(docstore["title"]))
    return [normalize_text(text) for text in [*titles, *docstore["passage_text"]]]


def build_tiny_tokenizer(corpus: list[str], vocab_size: int = 3000) -> RobertaTokenizerFast:
    """A RoBERTa byte-level BPE tokenizer trained on `corpus` (ZWNJ kept: it is just bytes here)."""
    if not any(text.strip() for text in corpus):
        raise FaclipError("the tiny text model needs a corpus, but the docstore has no passages; "
                          "run `dvc repro prepare` on a data.root with records")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    state = json.loads(bpe._tokenizer.to_str())["model"]
    # transformers 5 ignores vocab_file/merges_file given to the constructor: pass the tables.
    tokenizer = RobertaTokenizerFast(vocab=state["vocab"], merges=[tuple(m) for m in state["merges"]],
                                     model_max_length=TINY_MAX_LEN)
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    return tokenizer


def build_tiny_text(corpus: list[str]) -> tuple[RobertaModel, RobertaTokenizerFast]:
    """A small, seeded RobertaModel (with pooler) and its BPE tokenizer trained on `corpus`."""
    tokenizer = build_tiny_tokenizer(corpus)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_WIDTH, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=TINY_MAX_LEN + 2,  # RoBERTa offsets positions by pad+1
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, type_vocab_size=1,
    )
    torch.manual_seed(TINY_SEED)
    model = RobertaModel(config, add_pooling_layer=True).eval()
    return model, tokenizer


def build_tiny_vision() -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    """A small, seeded CLIPVisionModel (64 px, patch 8) and a processor resizing to 64 with CLIP mean/std."""
    config = CLIPVisionConfig(image_size=TINY_IMAGE_SIZE, patch_size=8, hidden_size=TINY_WIDTH,
                              num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    torch.manual_seed(TINY_SEED)
    model = CLIPVisionModel(config).eval()
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
    )
    return model, processor


# --- hub ids and local folders: one code path, only the download differs --------------------


def _from_pretrained(load: Callable, source: str, key: str):
    try:
        return load(source)
    except (OSError, ValueError) as err:
        if Path(source).is_dir():
            where = "the local folder"
        elif source.startswith((".", "/", "~")):
            where = "a local folder (there is none at that path)"
        else:
            where = "the Hugging Face hub (it is offline, or has no such id)"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        raise FaclipError(f"{key}={source!r}: cannot load it from {where}: {reason}; pass the path of a "
                          f"local folder holding a save_pretrained model, or 'tiny'") from None


def load_text_source(source: str, corpus_fn: Callable[[], list[str]]):
    """The text encoder named by model.text: (model, tokenizer); `corpus_fn` is only called for 'tiny'."""
    if source == TINY:
        return build_tiny_text(corpus_fn())
    # fp32 weights: training keeps fp32 masters whatever dtype the checkpoint was saved in.
    model = _from_pretrained(lambda s: AutoModel.from_pretrained(s, dtype=torch.float32), source, "model.text")
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, source, "model.text")
    return model.eval(), tokenizer


def load_vision_source(source: str):
    """The vision encoder named by model.vision: (CLIPVisionModel, image processor)."""
    if source == TINY:
        return build_tiny_vision()
    model = _from_pretrained(lambda s: CLIPVisionModel.from_pretrained(s, dtype=torch.float32), source,
                             "model.vision")
    processor = _from_pretrained(CLIPImageProcessorPil.from_pretrained, source, "model.vision")
    return model.eval(), processor


def text_width(model, tokenizer) -> int:
    """Width of the text encoder's pooled output, measured through the real encode path."""
    return encode_texts(model, tokenizer, ["سلام"], max_len=16).shape[1]


def vision_width(model, processor) -> int:
    """Width of the vision encoder's pooled output, measured through the real encode path."""
    return encode_images(model, processor, [Image.new("RGB", (32, 32), (128, 128, 128))]).shape[1]


def save_model(model, preprocessor, out_dir: str | Path, *, source: str, kind: str, dim: int) -> None:
    """Write `model` + tokenizer/processor as a save_pretrained folder with faclip.json, atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        preprocessor.save_pretrained(tmp)
        write_json(tmp / FACLIP_JSON, {"source": source, "kind": kind, "dim": dim})


def materialise_base(text_source: str, vision_source: str, corpus_fn: Callable[[], list[str]],
                     text_out: str | Path, vision_out: str | Path) -> int:
    """Build or load both base encoders, check they share one width, save both; return that width."""
    text_model, tokenizer = load_text_source(text_source, corpus_fn)
    vision_model, processor = load_vision_source(vision_source)
    text_dim, vision_dim = text_width(text_model, tokenizer), vision_width(vision_model, processor)
    if text_dim != vision_dim:
        raise FaclipError(f"model.text={text_source!r} outputs {text_dim}-d vectors but model.vision="
                          f"{vision_source!r} outputs {vision_dim}-d; pick a text/vision pair of one width")
    save_model(text_model, tokenizer, text_out, source=text_source, kind="text", dim=text_dim)
    save_model(vision_model, processor, vision_out, source=vision_source, kind="vision", dim=vision_dim)
    logger.info("base models: text %r and vision %r, width %d", text_source, vision_source, text_dim)
    return text_dim


# --- loading what `base` saved ---------------------------------------------------------------


def require_model_folder(path: str | Path, stage: str = "base") -> Path:
    """`path` as a Path if it holds a saved model (config.json), else a FaclipError naming the stage to run."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FaclipError(f"no model found at {path}; run `dvc repro {stage}` to create it")
    return path


def read_model_info(path: str | Path) -> dict:
    """A model folder's faclip.json (provenance, and for a fine-tuned model its logit_scale and params), or {}."""
    info = Path(path) / FACLIP_JSON
    return json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}


def load_text_model(path: str | Path, device: torch.device | str = "cpu"):
    """Load a saved text encoder folder: (model in eval mode on `device`, tokenizer)."""
    path = require_model_folder(path, "base")
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def load_vision_model(path: str | Path, device: torch.device | str = "cpu"):
    """Load a saved vision encoder folder: (CLIPVisionModel in eval mode on `device`, image processor)."""
    path = require_model_folder(path, "base")
    model = CLIPVisionModel.from_pretrained(path, local_files_only=True).to(device).eval()
    processor = CLIPImageProcessorPil.from_pretrained(path, local_files_only=True)
    return model, processor
