"""Frozen image embeddings: one vector per distinct image, keyed by image_sha256.

On disk (`data/image_embeddings/`, and each cache folder): `embeddings.npy` float32 (N, D),
L2-normalised, rows in the order of `image_sha256.txt` (sorted hex shas, one a line), and
`manifest.json` {"vision_sha256", "dim", "count", "sha256": {file: sha256}}. The cache,
`cache_dir/<vision_sha256>-<DECODE>/`, has the same layout and grows run by run, so adding images to the
data encodes only the new ones; it is keyed by how images are decoded too (`faclip.encode.DECODE`), so
vectors of another decode never mix in. Every read checks both files against the manifest's sha256: a
damaged cache is discarded (and its images encoded again), damaged embeddings are a one-line error.

`embed_images` runs on every process that `accelerate launch` / `torchrun` starts (or on one): the images
not yet cached are cut into batches, process r encodes batches r, r + N, ..., and the vectors are
gathered to every process. A row's vector does not depend on the other rows of its batch, and the batches
are the same whatever N, so N processes write the bytes one process writes.
"""

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env

from faclip.encode import DECODE, encode_images
from faclip.errors import FaclipError
from faclip.files import (atomic_dir, remove_stale_temps, resolve_under_root, sha256_dir, sha256_file, write_json,
                          write_text)
from faclip.models import load_vision_model, require_model_folder

logger = logging.getLogger(__name__)

VECTORS = "embeddings.npy"
SHAS = "image_sha256.txt"
MANIFEST = "manifest.json"
MIN_IMAGES_FOR_WORKERS = 128  # below this, starting worker processes costs more than it saves
BATCH_SIZE = {"cpu": 32, "cuda": 256}  # embed.batch_size: auto, per process
MAX_WORKERS = 8  # embed.num_workers: auto = the cores each process has, up to this


@dataclass(frozen=True)
class ImageEmbeddings:
    """Image vectors (N, D) with their image_sha256 (sorted) and the vision model they came from."""

    image_sha256: list[str]
    vectors: np.ndarray
    vision_sha256: str
    _row: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        assert self.vectors.ndim == 2 and len(self.vectors) == len(self.image_sha256)
        assert self.image_sha256 == sorted(set(self.image_sha256)), "image_sha256 must be sorted and unique"
        object.__setattr__(self, "_row", {sha: i for i, sha in enumerate(self.image_sha256)})

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __contains__(self, sha: str) -> bool:
        return sha in self._row

    def lookup(self, shas) -> np.ndarray:
        """Vectors (len(shas), D) for the given image_sha256, in that order."""
        missing = [sha for sha in shas if sha not in self._row]
        if missing:
            raise FaclipError(f"image {missing[0]} ({len(missing)} in all) has no embedding for this vision "
                              f"model; run `dvc repro embed` after `prepare`")
        return self.vectors[[self._row[sha] for sha in shas]].reshape(len(shas), self.dim)

    def subset(self, shas) -> "ImageEmbeddings":
        """The embeddings of `shas` only (sorted)."""
        shas = sorted(set(shas))
        return ImageEmbeddings(shas, self.lookup(shas), self.vision_sha256)


def save_image_embeddings(path: str | Path, embeddings: ImageEmbeddings) -> None:
    """Write the folder (vectors, sorted shas, manifest with their sha256) atomically; byte-identical
    for equal inputs."""
    with atomic_dir(path) as tmp:
        np.save(tmp / VECTORS, np.ascontiguousarray(embeddings.vectors, dtype=np.float32), allow_pickle=False)
        write_text(tmp / SHAS, "".join(f"{sha}\n" for sha in embeddings.image_sha256))
        write_json(tmp / MANIFEST, {"vision_sha256": embeddings.vision_sha256, "dim": embeddings.dim,
                                    "count": len(embeddings.image_sha256),
                                    "sha256": {name: sha256_file(tmp / name) for name in (VECTORS, SHAS)}})


class DamagedEmbeddings(FaclipError):
    """An embeddings folder whose files do not match its manifest (or cannot be read at all)."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"the image embeddings in {path} are damaged ({what}); restore them with "
                         f"`dvc checkout {path}` or rebuild them with `dvc repro -f embed`")
        self.what = what


def load_image_embeddings(path: str | Path) -> ImageEmbeddings:
    """Load a folder written by `save_image_embeddings`, checking each file's sha256 against the
    manifest; anything damaged (a flipped byte, a truncated file, a garbage manifest) is a one-line
    DamagedEmbeddings."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise FaclipError(f"no image embeddings at {path}; run `dvc repro embed` to create them")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedEmbeddings(path, f"{MANIFEST} does not parse: {type(err).__name__}") from None
    expected = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not isinstance(expected, dict) or not all(isinstance(manifest.get(k), t) and not isinstance(manifest.get(k), bool)
                                                 for k, t in (("count", int), ("dim", int), ("vision_sha256", str))):
        raise DamagedEmbeddings(path, f"{MANIFEST} lacks count, dim, vision_sha256 or the files' sha256")
    for name in (VECTORS, SHAS):
        try:
            actual = sha256_file(path / name)
        except OSError as err:
            raise DamagedEmbeddings(path, f"{name}: {err.strerror}") from None
        if actual != expected.get(name):
            raise DamagedEmbeddings(path, f"{name} does not match the sha256 in {MANIFEST}")
    try:
        shas = (path / SHAS).read_text(encoding="utf-8").split()
        vectors = np.load(path / VECTORS, allow_pickle=False)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedEmbeddings(path, f"{type(err).__name__}: {err}") from None
    if vectors.shape != (manifest["count"], manifest["dim"]) or len(shas) != manifest["count"] \
            or vectors.dtype != np.float32 or shas != sorted(set(shas)):
        raise DamagedEmbeddings(path, f"{vectors.shape} {vectors.dtype} vectors and {len(shas)} shas for a "
                                      f"manifest of {manifest['count']} x {manifest['dim']}")
    if not np.isfinite(vectors).all():  # a NaN row would score nothing, silently
        raise DamagedEmbeddings(path, f"{VECTORS} holds NaN or infinite values")
    return ImageEmbeddings(shas, vectors, manifest["vision_sha256"])


def _distinct_images(pairs: pd.DataFrame, data_root: Path) -> dict[str, Path]:
    """image_sha256 -> file under data_root (the first path listed), checking every file exists."""
    for column in ("image_path", "image_sha256"):
        if column not in pairs.columns:
            raise FaclipError(f"training pairs have no {column!r} column (columns: {list(pairs.columns)}); "
                              f"rerun `dvc repro prepare`")
    if pairs.empty:
        raise FaclipError("the training pairs list no images; check data.root and rerun `dvc repro prepare`")
    first = pairs.drop_duplicates("image_sha256").sort_values("image_sha256")
    images = {sha: resolve_under_root(data_root, data_root, rel) for sha, rel in zip(first["image_sha256"], first["image_path"])}
    outside = [rel for rel, path in zip(first["image_path"], images.values()) if path is None]
    if outside:
        raise FaclipError(f"the training pairs name {len(outside)} image(s) outside data.root, e.g. {outside[0]!r}; "
                          f"rerun `dvc repro prepare` instead of editing the pairs by hand")
    missing = [str(p) for p in images.values() if not p.is_file()]
    if missing:
        raise FaclipError(f"{len(missing)} image(s) listed in the training pairs are missing, e.g. {missing[0]}; "
                          f"check data.root or rerun `dvc repro prepare`")
    return images


def _load_cache(folder: Path, vision_sha256: str) -> ImageEmbeddings | None:
    """The cached vectors of this vision model, or None: none yet, or damaged (discarded with a warning:
    its images are encoded again). Temp folders of an interrupted cache write are removed first, so
    DVC never commits them with the (persisted) cache output."""
    remove_stale_temps(folder.parent)
    if not (folder / MANIFEST).is_file():
        return None
    try:
        cached = load_image_embeddings(folder)
        if cached.vision_sha256 != vision_sha256:
            raise DamagedEmbeddings(folder, f"it holds the vectors of vision model {cached.vision_sha256[:12]}")
    except DamagedEmbeddings as err:
        logger.warning("discarding the damaged embedding cache %s (%s); its images are encoded again", folder,
                       err.what)
        return None
    return cached


def _auto_workers(images: int, processes: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(MAX_WORKERS, max(1, cores // processes)) if images >= MIN_IMAGES_FOR_WORKERS else 0


def embed_images(pairs: pd.DataFrame, data_root: str | Path, vision_dir: str | Path, cache_dir: str | Path, *,
                 batch_size: int | str = "auto", num_workers: int | str = "auto") -> tuple[ImageEmbeddings, int]:
    """Embed each distinct image of `pairs` once, reusing cached vectors; return (embeddings, number encoded).

    Vectors are cached by (vision model folder hash, decode, image sha256) under
    `cache_dir/<vision_sha256>-<DECODE>/`, merged and rewritten atomically each run (by the main process),
    so a rerun after adding images encodes only those. Under `accelerate launch` / `torchrun` each process
    encodes its share of the batches; every process returns the same result.
    """
    # The process group accelerate / torchrun set up, or a single process. PartialState reads
    # ACCELERATE_USE_CPU (`accelerate launch --cpu`) only when told, as Accelerator does.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    images = _distinct_images(pairs, Path(data_root))
    vision_sha256 = sha256_dir(require_model_folder(vision_dir))
    cache_folder = Path(cache_dir) / f"{vision_sha256}-{DECODE}"
    cached = _load_cache(cache_folder, vision_sha256)
    todo = [sha for sha in images if cached is None or sha not in cached]
    if todo:
        if batch_size == "auto":
            batch_size = BATCH_SIZE.get(state.device.type, BATCH_SIZE["cpu"])
        # Process r encodes batches r, r + N, ...: the same batches as one process, so the same bytes.
        batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
        mine = [sha for batch in batches[state.process_index::state.num_processes] for sha in batch]
        if num_workers == "auto":
            num_workers = _auto_workers(len(mine), state.num_processes)
        logger.info("encoding %d of %d distinct images (the others are cached) on %d process(es), batch %d, "
                    "%d decoding worker(s) each", len(todo), len(images), state.num_processes, batch_size, num_workers)
        model, processor = load_vision_model(vision_dir, device=state.device)
        start = time.perf_counter()
        vectors = encode_images(model, processor, [images[sha] for sha in mine], batch_size=batch_size,
                                num_workers=num_workers, progress=state.is_main_process)  # (len(mine), D)
        merged = dict(gather_object(list(zip(mine, vectors)))) if state.num_processes > 1 else dict(zip(mine, vectors))
        seconds = time.perf_counter() - start
        if state.is_main_process:  # wall time depends on the machine: logged, never written to an output
            logger.info("encoded %d images in %.1f s (%.1f images/s)", len(todo), seconds, len(todo) / max(seconds, 1e-9))
        if cached is not None:
            merged.update(zip(cached.image_sha256, cached.vectors))
        shas = sorted(merged)
        cached = ImageEmbeddings(shas, np.stack([merged[sha] for sha in shas]), vision_sha256)
        if state.is_main_process:
            save_image_embeddings(cache_folder, cached)
        state.wait_for_everyone()
    return cached.subset(images), len(todo)
