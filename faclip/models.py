"""Model folders: build the offline `tiny` pair or load a hub id / local folder (the `base` stage),
load saved folders, read their facts (weights hash, token budget, the vision model a text model was
tuned against), encode passages with a saved text model, and write the fine-tuned folder + card.

Every model folder faclip writes is a plain `save_pretrained` folder (safetensors + tokenizer or
image processor) loadable by transformers alone, plus a small `faclip.json` with provenance.

Images are preprocessed by `CLIPImageProcessorPil`, the PIL backend of `CLIPImageProcessor`, named
explicitly: the default backend switches to torchvision when that is installed, and its slightly
different resizing would make cached image vectors disagree with freshly encoded queries.
"""

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tokenizers import ByteLevelBPETokenizer
from transformers import (AutoConfig, AutoModel, AutoTokenizer, CLIPImageProcessorPil, CLIPVisionConfig,
                          CLIPVisionModel, RobertaConfig, RobertaModel, RobertaTokenizerFast)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from faclip.encode import encode_images, encode_texts, pick_device
from faclip.errors import FaclipError
from faclip.files import atomic_dir, sha256_file, write_json, write_text
from faclip.params import ROBERTA_POSITION_OFFSET, TINY, TINY_WIDTH, TrainParams, position_limit
from faclip.text import normalize_text

logger = logging.getLogger(__name__)

FACLIP_JSON = "faclip.json"
TINY_SEED = 0
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
        intermediate_size=256, max_position_embeddings=TINY_MAX_LEN + ROBERTA_POSITION_OFFSET,
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

# No model folder runs code: every from_pretrained gets trust_remote_code=False, so a folder whose
# config.json or tokenizer_config.json names its own Python classes (`auto_map`) is refused at once;
# transformers would otherwise ask on stdin whether to run them, and a `y` there would.
NO_REMOTE_CODE = {"trust_remote_code": False}


def _asks_to_run_code(err: Exception) -> bool:
    return isinstance(err, ValueError) and "trust_remote_code" in str(err)


def _runs_code_reason(where) -> str:
    return (f"{where} holds custom Python code (an `auto_map` in its config) that transformers would have to "
            f"run, and faclip never runs a model folder's code")


def _from_pretrained(load: Callable, source: str, key: str):
    try:
        return load(source)
    except (OSError, ValueError) as err:
        if _asks_to_run_code(err):
            raise FaclipError(f"{key}={source!r}: {_runs_code_reason('it')}; use a model of a standard "
                              f"transformers class, saved with save_pretrained, or 'tiny'") from None
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
    model = _from_pretrained(lambda s: AutoModel.from_pretrained(s, dtype=torch.float32, **NO_REMOTE_CODE), source,
                             "model.text")
    tokenizer = _from_pretrained(lambda s: AutoTokenizer.from_pretrained(s, **NO_REMOTE_CODE), source, "model.text")
    return model.eval(), tokenizer


def load_vision_source(source: str):
    """The vision encoder named by model.vision: (CLIPVisionModel, image processor)."""
    if source == TINY:
        return build_tiny_vision()
    model = _from_pretrained(lambda s: CLIPVisionModel.from_pretrained(s, dtype=torch.float32, **NO_REMOTE_CODE),
                             source, "model.vision")
    processor = _from_pretrained(lambda s: CLIPImageProcessorPil.from_pretrained(s, **NO_REMOTE_CODE), source,
                                 "model.vision")
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


# The fields of faclip.json a reader uses, and their types (base folders: source, kind, dim; fine-tuned: the rest).
MODEL_INFO_FIELDS = {"source": str, "kind": str, "dim": int, "logit_scale": (int, float), "base_text_source": str,
                     "base_text_sha256": str, "vision_sha256": str, "params": dict}


def read_model_info(path: str | Path) -> dict:
    """A model folder's faclip.json (provenance, and for a fine-tuned model its logit_scale and params), or {}
    when there is none (a folder saved by other tools); a damaged one is a one-line error."""
    info = Path(path) / FACLIP_JSON
    if not info.is_file():
        return {}
    fix = f"restore it with `dvc checkout {path}` or rebuild it with `dvc repro base` / `dvc repro train`"
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FaclipError(f"{info} is damaged (not JSON: {type(err).__name__}); {fix}") from None
    if not isinstance(data, dict):
        raise FaclipError(f"{info} is damaged (a JSON {type(data).__name__}, not an object); {fix}")
    for key, kind in MODEL_INFO_FIELDS.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            raise FaclipError(f"{info} is damaged ({key!r} is {data[key]!r}, not a {getattr(kind, '__name__', 'number')}); "
                              f"{fix}")
    if "logit_scale" in data and not math.isfinite(data["logit_scale"]):
        raise FaclipError(f"{info} is damaged (logit_scale is {data['logit_scale']}); {fix}")
    max_len = data.get("params", {}).get("max_text_len")
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1):
        raise FaclipError(f"{info} is damaged (params.max_text_len is {max_len!r}); {fix}")
    return data


def load_folder(cls, path: str | Path, **kwargs):
    """`cls.from_pretrained` on a local model folder, never running code from it: a folder that asks to
    is one line naming it."""
    try:
        return cls.from_pretrained(path, local_files_only=True, **NO_REMOTE_CODE, **kwargs)
    except ValueError as err:
        if not _asks_to_run_code(err):
            raise
        raise FaclipError(f"cannot load the model folder {path}: {_runs_code_reason('it')}; point to a folder "
                          f"that `dvc repro base` or `train` wrote") from None


def load_text_model(path: str | Path, device: torch.device | str = "cpu"):
    """Load a saved text encoder folder: (model in eval mode on `device`, tokenizer)."""
    path = require_model_folder(path, "base")
    model = load_folder(AutoModel, path).to(device).eval()
    tokenizer = load_folder(AutoTokenizer, path)
    return model, tokenizer


def load_vision_model(path: str | Path, device: torch.device | str = "cpu"):
    """Load a saved vision encoder folder: (CLIPVisionModel in eval mode on `device`, image processor)."""
    path = require_model_folder(path, "base")
    model = load_folder(CLIPVisionModel, path).to(device).eval()
    processor = load_folder(CLIPImageProcessorPil, path)
    return model, processor


# --- facts about a saved folder ---------------------------------------------------------------


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 of the model weights: model.safetensors, or all *.safetensors shards in name order."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FaclipError(f"no *.safetensors weights in {model_dir}; run `dvc repro train`")
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def check_max_text_len(text_dir: str | Path, max_text_len: int) -> None:
    """max_text_len must fit the position table of the text model in `text_dir`."""
    limit = position_limit(load_folder(AutoConfig, require_model_folder(text_dir)))
    if limit is not None and max_text_len > limit:
        raise FaclipError(f"params.yaml: max_text_len={max_text_len} is too long for the text model in "
                          f"{text_dir}; use at most {limit}")


def trained_max_len(model_dir: str | Path) -> int | None:
    """The max_text_len a fine-tuned model was trained with (faclip.json params), or None."""
    max_len = read_model_info(model_dir).get("params", {}).get("max_text_len")
    return int(max_len) if max_len else None


def text_max_len(model_dir: str | Path, tokenizer, model) -> int:
    """Token budget for passages: what training used, else the tokenizer's and position table's limit."""
    trained = trained_max_len(model_dir)
    if trained:
        return trained
    limits = [tokenizer.model_max_length, position_limit(model.config)]
    return int(min(limit for limit in limits if limit))


def check_same_vision(model_dir: str | Path, vision_sha256: str, what: str) -> None:
    """A text model only makes sense against the vision model it was tuned with (faclip.json's vision_sha256)."""
    expected = read_model_info(model_dir).get("vision_sha256")
    if expected and expected != vision_sha256:
        raise FaclipError(f"{what} come from another vision model than {model_dir} was trained against; "
                          "run `dvc repro` (base, embed, train, index) so they match")


def embed_passages(model_dir: str | Path, texts: list[str], *, max_len: int | None = None,
                   batch_size: int = 64, progress: bool = True, device=None) -> np.ndarray:
    """Load the text model in `model_dir` and encode `texts` (N, D), L2-normalised float32.

    `max_len` defaults to `text_max_len` of that model; `device` to `pick_device()`.
    """
    model, tokenizer = load_text_model(model_dir, device=device or pick_device())
    max_len = max_len or text_max_len(model_dir, tokenizer, model)
    logger.info("encoding %d passages with %s (max_len %d)", len(texts), model_dir, max_len)
    return encode_texts(model, tokenizer, texts, max_len=max_len, batch_size=batch_size, progress=progress)


# --- the fine-tuned folder ---------------------------------------------------------------------


def model_card(*, params: TrainParams, metrics: dict, logit_scale: float, base_source: str,
               base_text_sha256: str, vision_sha256: str) -> str:
    """The fine-tuned folder's README.md: what it is, base models, data, metrics, how to load it."""
    m = metrics

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
hash is `{vision_sha256}`: texts and images are compared by cosine similarity of the
L2-normalised pooled outputs.

## Base models
- text: `{base_source}` (base folder sha256 `{base_text_sha256}`)
- vision (frozen, used through cached image embeddings): folder sha256 `{vision_sha256}`

## Training data
{m['train_pairs']} train (image, passage) pairs over {m['dishes']} dishes;
{m['passages']} passages in the docstore; {m['test_images']} held-out test images.

## Training
{params.epochs} epochs, {m['steps']} steps, batch {params.batch_size}, AdamW lr {params.learning_rate}
(warmup {params.warmup_steps} steps, then cosine), weight decay {params.weight_decay},
max_text_len {params.max_text_len}, seed {params.seed}; symmetric InfoNCE with every same-dish pair
as a positive; learned logit_scale {logit_scale:.4f} (temperature {math.exp(-logit_scale):.4f}).

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

tokenizer = AutoTokenizer.from_pretrained("models/finetuned", trust_remote_code=False)
model = AutoModel.from_pretrained("models/finetuned", trust_remote_code=False).eval()  # never a folder's code
batch = tokenizer(["قورمه سبزی"], padding=True, truncation=True, max_length={params.max_text_len}, return_tensors="pt")
with torch.no_grad():
    text_emb = torch.nn.functional.normalize(model(**batch).pooler_output, dim=-1)
```
Training fed texts through `faclip.text.normalize_text` (Persian letters for Arabic ones, no
diacritics, tidy ZWNJ/spaces); normalise queries the same way for the best match. `faclip.json` holds
the learned `logit_scale` (cosine similarities times exp(logit_scale) are CLIP logits).
"""


def save_finetuned(out_dir: str | Path, model, *, base_text_dir: str | Path, params: TrainParams, metrics: dict,
                   logit_scale: float, base_text_sha256: str, vision_sha256: str) -> None:
    """Write the HF folder (safetensors + tokenizer), faclip.json and the model card, atomically."""
    base_source = read_model_info(base_text_dir).get("source", str(base_text_dir))
    card = model_card(params=params, metrics=metrics, logit_scale=logit_scale, base_source=base_source,
                      base_text_sha256=base_text_sha256, vision_sha256=vision_sha256)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        # A fresh copy: tokenising stores truncation/padding state in tokenizer.json, which would make
        # the folder's bytes depend on the last call made.
        load_folder(AutoTokenizer, base_text_dir).save_pretrained(tmp)
        write_json(tmp / FACLIP_JSON, {"logit_scale": logit_scale, "base_text_source": base_source,
                                       "base_text_sha256": base_text_sha256, "vision_sha256": vision_sha256,
                                       "params": dataclasses.asdict(params)})
        write_text(tmp / "README.md", card)
