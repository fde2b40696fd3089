"""params.yaml, parsed once into frozen, validated dataclasses (one per stage's concern).

Training keys are top-level so that `dvc exp run --set-param epochs=5` works as users type it.
Every bad value, and every key faclip does not know (a typo such as `epoch` or `data.rooot`), is a
one-line FaclipError naming the key and what is allowed. The file is read with the YAML rules DVC
reads it with (ruamel.yaml, YAML 1.2), so a value DVC writes (`dvc exp run -S learning_rate=0.00003`
writes `3e-05`) means here what it means to DVC: a number.
"""

import dataclasses
import difflib
import math
import reprlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

from faclip.errors import FaclipError

TINY = "tiny"
TINY_WIDTH = 128  # both tiny encoders output this width, as the real CLIPfa pair both output 768
ROBERTA_POSITION_OFFSET = 2  # RoBERTa numbers token positions from padding_idx + 1
# The loss's positives: pairs of the same dish, pairs sharing the image (the original project), or
# each pair alone (plain CLIP).
POSITIVES = ("dish", "image", "pair")


# What the gate reads: params.yaml is read only this far (the committed file is ~2.5 KB), values nest only
# this deep (the schema's deepest is 3: a section, a key, a list), and a value is at most this long (a
# path's limit, PATH_MAX; it also keeps an integer's digits under Python's int-string limit, 4300).
MAX_BYTES = 65_536
MAX_DEPTH = 8
MAX_CHARS = 4096


class _Shown(reprlib.Repr):
    """A value's repr capped in length, depth and items: what an error message may print of it."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 2, 80, 80, 40

    def repr_int(self, x, level):
        if x.bit_length() > 128:  # repr() of a huge int is slow or refused (Python's int-string limit)
            return f"<an integer of ~{round(x.bit_length() * math.log10(2))} digits>"
        return super().repr_int(x, level)


shown = _Shown().repr


def _key_name(key) -> str:
    """A mapping key as an error names it: a string as it is, anything else (an int...) as `shown` shows it."""
    return key if isinstance(key, str) else shown(key)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise FaclipError(f"params.yaml: {key}={shown(value)} is invalid; {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (YAML's .inf and .nan are floats: they would train a NaN model)."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _is_text(value: Any) -> bool:
    """A non-blank string of at most MAX_CHARS without control characters (a NUL, a newline...): a path,
    a model id or a FAISS factory, which no library reads past a NUL and no one-line message may split."""
    return isinstance(value, str) and value.strip() != "" and len(value) <= MAX_CHARS and \
        not any(unicodedata.category(char) == "Cc" for char in value)


# torch.manual_seed takes [-2**63, 2**64), numpy's legacy seeds and random [0, 2**32): one range all accept,
# with room for train's per-epoch and per-rank offsets (seed + 1000 * epoch + rank).
SEED_MAX = 2**32 - 1
# Search knobs beyond these buy nothing and cost memory: HNSW holds efSearch candidates per query (efSearch
# 1e9 asked for 4.4 GB, then bad_alloc), and no IVF index here has more than 2**20 lists to probe.
EF_SEARCH_LIMIT = 65_536
NPROBE_LIMIT = 2**20
MAX_MEMORY_MB_MAX = 2**24  # 16 TiB
NUM_WORKERS_MAX = 256  # decode processes per embed process
# evaluate ranks every query this deep (and deeper for a larger k: (queries x k) hits, and chance recall@k
# as a ratio of binomials C(N, k), which for k ~ N / 2 of a large docstore takes minutes per query).
EVAL_K_LIMIT = 1000


def position_limit(config) -> int | None:
    """The longest token sequence a text model's position table holds (None if it has no table), from its
    config (a transformers config, or config.json as a SimpleNamespace: the gate checks max_text_len by it)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    return positions - ROBERTA_POSITION_OFFSET if getattr(config, "model_type", "") == "roberta" else positions


@dataclass(frozen=True)
class DataParams:
    root: str = "data/sample"
    test_fraction: float = 0.2

    def __post_init__(self):
        _check(_is_text(self.root), "data.root", self.root,
               "give the folder of raw JSON files and images, e.g. data/sample")
        _check(_is_number(self.test_fraction) and 0 < self.test_fraction < 1, "data.test_fraction",
               self.test_fraction, "use a number strictly between 0 and 1, e.g. 0.2")


@dataclass(frozen=True)
class ModelParams:
    text: str = TINY
    vision: str = TINY

    def __post_init__(self):
        for key, value in (("model.text", self.text), ("model.vision", self.vision)):
            _check(_is_text(value), key, value, "use 'tiny', a Hugging Face hub id, or a local model folder")


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    max_text_len: int = 128
    seed: int = 42
    positives: str = "dish"  # which in-batch pairs are positives: one of POSITIVES

    def __post_init__(self):
        _check(_is_int(self.epochs) and self.epochs >= 0, "epochs", self.epochs,
               "use a whole number >= 0 (0 keeps the base text model)")
        _check(_is_int(self.batch_size) and self.batch_size >= 2, "batch_size", self.batch_size,
               "use a whole number >= 2 (a contrastive batch needs negatives)")
        _check(_is_number(self.learning_rate) and 0 < self.learning_rate <= 1, "learning_rate",
               self.learning_rate, "use a number in (0, 1], e.g. 5e-4 (beyond 1 AdamW diverges)")
        _check(_is_number(self.weight_decay) and 0 <= self.weight_decay <= 1, "weight_decay",
               self.weight_decay, "use a number from 0 to 1, e.g. 0.01")
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps",
               self.warmup_steps, "use a whole number >= 0")
        _check(_is_int(self.max_text_len) and 8 <= self.max_text_len <= 512, "max_text_len",
               self.max_text_len, "use a whole number from 8 to 512")
        _check(_is_int(self.seed) and 0 <= self.seed <= SEED_MAX, "seed", self.seed,
               f"use a whole number from 0 to {SEED_MAX} (2**32 - 1: what torch, numpy and random all accept)")
        _check(self.positives in POSITIVES, "positives", self.positives,
               "use dish (same-dish pairs, the default), image (pairs sharing the photo) or pair (plain CLIP)")


@dataclass(frozen=True)
class IndexParams:
    factory: str = "auto"  # 'auto' (chosen from passages, dim, max_memory_mb) or a FAISS index_factory string
    max_memory_mb: int = 4096  # what the index may take in memory; 'auto' picks PQ codes only beyond it
    recall_target: float = 0.95  # 'auto' tunes nprobe / efSearch until recall_vs_exact@10 reaches this
    nprobe: int | None = None  # IVF lists searched per query; None: tuned ('auto') or faclip's default
    efSearch: int | None = None  # HNSW search depth; None: tuned ('auto') or faclip's default

    def __post_init__(self):
        _check(_is_text(self.factory), "index.factory",
               self.factory, "use auto or a FAISS index_factory string such as Flat, HNSW32 or IVF64,Flat")
        _check(_is_int(self.max_memory_mb) and 1 <= self.max_memory_mb <= MAX_MEMORY_MB_MAX, "index.max_memory_mb",
               self.max_memory_mb, f"use a whole number of MiB from 1 to {MAX_MEMORY_MB_MAX}, e.g. 4096")
        _check(_is_number(self.recall_target) and 0 < self.recall_target <= 1, "index.recall_target",
               self.recall_target, "use a number in (0, 1], e.g. 0.95")
        for key, value, high in (("index.nprobe", self.nprobe, NPROBE_LIMIT), ("index.efSearch", self.efSearch,
                                                                               EF_SEARCH_LIMIT)):
            _check(value is None or (_is_int(value) and 1 <= value <= high), key, value,
                   f"use a whole number from 1 to {high}, or null to tune it (factory auto) or keep faclip's default")


@dataclass(frozen=True)
class EmbedParams:
    """How `embed` runs (not what it computes: a row's vector does not depend on its batch)."""
    batch_size: int | str = "auto"  # images per forward pass; auto: 32 on CPU, 256 on GPU
    num_workers: int | str = "auto"  # DataLoader decode workers per process; auto: up to 8, by cores per process

    def __post_init__(self):
        for key, value, low, high in (("embed.batch_size", self.batch_size, 1, 65_536),
                                      ("embed.num_workers", self.num_workers, 0, NUM_WORKERS_MAX)):
            _check(value == "auto" or (_is_int(value) and low <= value <= high), key, value,
                   f"use auto or a whole number from {low} to {high}")


@dataclass(frozen=True)
class EvalParams:
    k: tuple[int, ...] = (1, 5, 10)

    def __post_init__(self):
        ok = isinstance(self.k, (list, tuple)) and len(self.k) > 0 and \
            all(_is_int(k) and 1 <= k <= EVAL_K_LIMIT for k in self.k)
        _check(ok, "eval.k", self.k, f"use a non-empty list of whole numbers from 1 to {EVAL_K_LIMIT}, e.g. [1, 5, 10]")
        object.__setattr__(self, "k", tuple(sorted(set(self.k))))


@dataclass(frozen=True)
class VqaParams:
    """The dense half's weight in each hybrid ranking (`faclip.vqa`): a photo and a question (`Retriever.ask`),
    a text query (`Retriever.by_text`). Each: evaluate's best on the train split."""
    photo_weight: float = 0.8  # a photo + a question: w·photo + (1 − w)·BM25(question), each min-max normalised
    text_weight: float = 0.1  # a text query: w·text encoder + (1 − w)·BM25, each min-max normalised

    def __post_init__(self):
        _check(_is_number(self.photo_weight) and 0 <= self.photo_weight <= 1, "vqa.photo_weight",
               self.photo_weight, "use a number from 0 (the question alone) to 1 (the photo alone), e.g. 0.5")
        _check(_is_number(self.text_weight) and 0 <= self.text_weight <= 1, "vqa.text_weight",
               self.text_weight, "use a number from 0 (BM25 alone) to 1 (the text encoder alone), e.g. 0.5")


@dataclass(frozen=True)
class Params:
    data: DataParams
    model: ModelParams
    train: TrainParams
    index: IndexParams
    eval: EvalParams
    embed: EmbedParams = EmbedParams()
    vqa: VqaParams = VqaParams()


SECTIONS = {"data": DataParams, "model": ModelParams, "embed": EmbedParams, "index": IndexParams,
            "eval": EvalParams, "vqa": VqaParams}


def _unknown_key(key, known: list[str], where: str, also: str = "") -> FaclipError:
    name = f"{where}{_key_name(key)}"
    close = difflib.get_close_matches(name[:MAX_CHARS], [f"{where}{k}" for k in known], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return FaclipError(f"params.yaml: unknown key {shown(name)}{hint}; the known {where.rstrip('.') or 'top-level'} "
                       f"keys are {', '.join(f'{where}{k}' for k in known)}{also}")


def _build(cls, values: dict, where: str, also: str = ""):
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted((k for k in values if k not in known), key=_key_name)
    if unknown:
        raise _unknown_key(unknown[0], known, where, also)
    return cls(**values)


def parse_params(raw: dict) -> Params:
    """Validate a params mapping (as read from params.yaml) into Params; every key must be known."""
    if not isinstance(raw, dict):
        raise FaclipError("params.yaml must be a mapping of keys to values; see the README for the schema")
    top = {k: v for k, v in raw.items() if k not in SECTIONS}
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name)
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise FaclipError(f"params.yaml: {name} must be a mapping of keys, got {shown(values)}")
        sections[name] = _build(cls, values, f"{name}.")
    also = f", and the sections {', '.join(SECTIONS)}"
    return Params(train=_build(TrainParams, top, "", also), **sections)


def _check_shape(yaml: YAML, text: str, path: Path) -> None:
    """Refuse, from the parse events (before any value is built), what would cost unbounded time or memory
    to build or show: nesting beyond MAX_DEPTH (RecursionError), a value beyond MAX_CHARS, and aliases
    (`*name`: a few lines of them expand to a billion values)."""
    depth = 0
    for event in yaml.parse(text):
        line = f"{path} line {event.start_mark.line + 1}"
        if isinstance(event, AliasEvent):
            raise FaclipError(f"{line}: a YAML alias (*{event.anchor[:40]}); faclip's params are plain "
                              f"values, so write the value itself")
        if isinstance(event, ScalarEvent) and len(event.value) > MAX_CHARS:
            raise FaclipError(f"{line}: a value of {len(event.value)} characters; no param takes more than "
                              f"{MAX_CHARS}, so shorten it")
        depth += isinstance(event, CollectionStartEvent) - isinstance(event, CollectionEndEvent)
        if depth > MAX_DEPTH:
            raise FaclipError(f"{line}: values nested more than {MAX_DEPTH} deep; params.yaml's deepest value "
                              f"is a list in a section (eval.k), so flatten it")


def read_yaml(path: Path):
    """A YAML file as DVC reads it (ruamel.yaml's safe loader, YAML 1.2); an empty file is {}. Its size,
    nesting and value lengths are bounded and aliases refused, so reading it takes bounded time and memory."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise FaclipError(f"{path} is larger than {MAX_BYTES} bytes (the committed one is ~2.5 KB); "
                              f"faclip reads no further: keep only the params in it")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FaclipError(f"cannot read {path} ({err}); it must be a UTF-8 text file") from None
    yaml = YAML(typ="safe")
    try:
        _check_shape(yaml, text, path)
        return yaml.load(text) or {}
    except YAMLError as err:
        if isinstance(err, MarkedYAMLError) and err.problem_mark is not None:
            where = f"line {err.problem_mark.line + 1}: {err.problem}"
        else:
            where = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FaclipError(f"{path} is not valid YAML ({where[:200]}); fix the syntax") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise FaclipError(f"{path} not found; run from the repository root, where params.yaml lives")
    return parse_params(read_yaml(path))
