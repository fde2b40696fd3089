"""Photo-sized images: what `embed` spends per 1600x1200 JPEG, and what decoding at reduced size changes.

    python benchmarks/embed_photos.py                    # ~3 min on 2 cores
    python benchmarks/embed_photos.py --sample-metrics   # + the sample's eval metrics, full vs reduced decode (~6 min)

Photos: the bundled sample's 192 JPEGs (128 px) upscaled to 1600x1200 (bicubic, plus Gaussian noise of
sigma 6 so that the JPEG carries texture like a camera's), saved at quality 90 (~0.5 MB each).

Printed, per vision model (the `tiny` one, 64 px input; a CLIPfa-sized ViT-B/32 at 224 px with random
weights, built from its config):
- per image, one thread: decoding (full, and Pillow's JPEG `draft` at >= 2x the model input, as
  `faclip.encode.load_rgb` does), the CLIP processor on the decoded image, the vision model;
- `embed`'s own path (`faclip.encode.encode_images`, batch 32) in images/s, 0 and 2 DataLoader workers;
- cosine between the reduced-decode and the full-decode embedding of each photo (min / mean).
With --sample-metrics: the pipeline (`dvc repro`, tiny models) on the upscaled sample in a temp copy of
the repository, once as committed (reduced decode) and once with `JPEG_DRAFT = False`, and the eval
metrics side by side.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import faclip.encode as encode  # noqa: E402
from faclip.encode import decode_min_side, encode_images, image_features, load_rgb  # noqa: E402
from machine import load_average, machine_line  # noqa: E402
from synthetic import clipfa_sized_vision  # noqa: E402

SIZE = (1600, 1200)


def make_photos(src_root: Path, out_root: Path, limit: int | None = None) -> list[Path]:
    """Copy the tree of `src_root`, every JPEG upscaled to 1600x1200 with texture; returns the JPEG paths."""
    rng = np.random.default_rng(0)
    shutil.copytree(src_root, out_root)
    photos = sorted(out_root.rglob("*.jpg"))[:limit]
    for path in sorted(out_root.rglob("*.jpg")):
        image = Image.open(path).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (SIZE[1], SIZE[0], 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return photos


def per_image_ms(fn, items, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return 1000 * (time.perf_counter() - start) / (repeat * len(items))


def bench_model(name: str, model, processor, photos: list[Path]) -> None:
    side = decode_min_side(processor)
    some = photos[:40]
    full = [load_rgb(p) for p in some[:10]]
    drafted = [load_rgb(p, side) for p in some[:10]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"\n{name}: input {processor.crop_size['height']} px, reduced decode keeps the shorter side >= {side} px "
          f"(1600x1200 -> {drafted[0].size[0]}x{drafted[0].size[1]})")
    print("per image, one thread:        full decode   reduced decode")
    print(f"  decode (load_rgb)         {per_image_ms(load_rgb, some):9.1f} ms   "
          f"{per_image_ms(lambda p: load_rgb(p, side), some):9.1f} ms")
    print(f"  CLIP processor            {per_image_ms(lambda im: processor(images=im, return_tensors='pt'), full):9.1f} ms"
          f"   {per_image_ms(lambda im: processor(images=im, return_tensors='pt'), drafted):9.1f} ms")
    pixels = processor(images=full[:8], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        model_ms = per_image_ms(lambda _: image_features(model, pixels), [0]) / len(pixels)
    print(f"  vision model (batch 8)    {model_ms:9.1f} ms   {model_ms:9.1f} ms")
    torch.set_num_threads(threads)

    results = {}
    for draft in (False, True):
        encode.JPEG_DRAFT = draft
        for workers in (0, 2):
            encode_images(model, processor, photos[:4], batch_size=4, num_workers=0)  # warm up
            start = time.perf_counter()
            vectors = encode_images(model, processor, photos, batch_size=32, num_workers=workers)
            rate = len(photos) / (time.perf_counter() - start)
            results[(draft, workers)] = vectors
            print(f"  encode_images, {'reduced' if draft else 'full   '} decode, {workers} workers: {rate:7.1f} images/s")
    encode.JPEG_DRAFT = True
    cos = (results[(True, 0)] * results[(False, 0)]).sum(axis=1)
    print(f"  cosine(reduced, full) over {len(photos)} photos: min {cos.min():.6f}, mean {cos.mean():.6f} "
          f"(1 - mean {1 - cos.mean():.1e})")
    std = np.asarray(processor.image_std, dtype=np.float32)[:, None, None] * 255  # back to 0..255 levels
    delta = [np.abs(processor(images=a, return_tensors="np")["pixel_values"][0]
                    - processor(images=b, return_tensors="np")["pixel_values"][0]) * std for a, b in zip(drafted, full)]
    print(f"  the model's input pixels, reduced vs full decode: mean |difference| {np.mean(delta):.2f}, "
          f"99th percentile {np.percentile(np.concatenate([d.ravel() for d in delta]), 99):.1f} (0-255 levels)")


def sample_metrics(workdir: Path) -> None:
    """The pipeline on the upscaled sample, reduced vs full decode, in a temp copy of the repo."""
    sys.path.insert(0, str(REPO / "tests"))
    from repo_utils import copy_repo, dvc

    repo = copy_repo(workdir / "repo")
    make_photos(REPO / "data" / "sample", repo / "data" / "photos")
    params = (repo / "params.yaml").read_text(encoding="utf-8")
    (repo / "params.yaml").write_text(params.replace("root: data/sample", "root: data/photos"), encoding="utf-8")
    rows = {}
    for label in ("reduced decode", "full decode"):
        if label == "full decode":
            path = repo / "faclip" / "encode.py"
            path.write_text(path.read_text(encoding="utf-8").replace("JPEG_DRAFT = True", "JPEG_DRAFT = False"),
                            encoding="utf-8")
        start = time.perf_counter()
        dvc(repo, "repro")
        print(f"  dvc repro ({label}): {time.perf_counter() - start:.0f} s", flush=True)
        rows[label] = json.loads((repo / "metrics" / "eval.json").read_text(encoding="utf-8"))
    print("\nthe sample upscaled to 1600x1200, tiny models, eval metrics (image_to_text):")
    print(f"{'metric':<28}{'reduced decode':>16}{'full decode':>14}")
    for model in ("finetuned", "base"):
        for key, value in rows["reduced decode"][model]["image_to_text"].items():
            other = rows["full decode"][model]["image_to_text"][key]
            print(f"{model + ' ' + key:<28}{value:>16.4f}{other:>14.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=96, help="photos to encode per configuration")
    parser.add_argument("--sample-metrics", action="store_true", help="also run the pipeline twice (~3 min more)")
    args = parser.parse_args(argv)
    print(machine_line())
    from faclip.models import build_tiny_vision

    with tempfile.TemporaryDirectory(prefix="faclip-photos-") as tmp:
        photos = make_photos(REPO / "data" / "sample", Path(tmp) / "photos", limit=args.photos)
        print(f"{len(photos)} photos 1600x1200, {np.mean([p.stat().st_size for p in photos]) / 1e6:.2f} MB each")
        bench_model("tiny vision model", *build_tiny_vision(), photos)
        bench_model("CLIPfa-sized ViT-B/32 (random weights)", *clipfa_sized_vision(), photos)
        if args.sample_metrics:
            sample_metrics(Path(tmp))
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
