"""A synthetic raw dataset in faclip's layout, for scaling benchmarks: N dishes x M images, tiny JPEGs.

    python benchmarks/synthetic.py OUT_DIR --dishes 500 --images 20 --passages 2

Each image is paired with every passage of its dish, so pairs = dishes * images * passages.
"""

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

WORDS = ("برنج گوشت سبزی زعفران لوبیا گردو انار پیاز سیر نعناع کشک بادمجان مرغ ماهی عدس نخود رشته "
         "خورش پلو کباب آش دوغ نان ماست لیمو زردچوبه دارچین گلاب پسته بادام کره روغن").split()


def make_image(rng: random.Random, colour: tuple, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (235, 230, 220))
    x, y = rng.randint(2, size // 4), rng.randint(2, size // 4)
    ImageDraw.Draw(image).ellipse((x, y, x + size // 2, y + size // 2),
                                  fill=tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in colour))
    return image


def make_dataset(out: Path, dishes: int, images: int, passages: int, size: int = 48, seed: int = 0) -> int:
    """Write the dataset; returns the number of (image, passage) records."""
    rng = random.Random(seed)
    records_written = 0
    for d in range(dishes):
        folder = out / f"group_{d // 100:03d}" / f"dish_{d:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        title = f"غذای {' '.join(rng.sample(WORDS, 2))} {d}"
        texts = [f"{title}: " + " ".join(rng.choices(WORDS, k=rng.randint(12, 40))) + "." for _ in range(passages)]
        records = []
        for i in range(images):
            name = f"{i:04d}.jpg"
            make_image(rng, colour, size).save(folder / name, quality=80)
            records += [{"title": title, "response": t, "image_path": name} for t in texts]
        (folder / "records.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        records_written += len(records)
    return records_written


def clipfa_sized_vision():
    """A ViT-B/32 at 224 px (CLIPfa's vision tower: 12 x 768) with seeded random weights, and its processor."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=224, patch_size=32)
    torch.manual_seed(0)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return CLIPVisionModel(config).eval(), processor


def clipfa_sized_models(out: Path, corpus: list[str]) -> tuple[Path, Path]:
    """save_pretrained folders `out`/text (RoBERTa-base: 12 x 768, CLIPfa's text tower, with a BPE tokenizer
    trained on `corpus`) and `out`/vision (`clipfa_sized_vision`), random weights: for model.text / model.vision."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    from faclip.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(corpus)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072, max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, type_vocab_size=1)
    torch.manual_seed(0)
    RobertaModel(config, add_pooling_layer=True).save_pretrained(out / "text")
    tokenizer.save_pretrained(out / "text")
    vision, processor = clipfa_sized_vision()
    vision.save_pretrained(out / "vision")
    processor.save_pretrained(out / "vision")
    return out / "text", out / "vision"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dishes", type=int, default=100)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--passages", type=int, default=1)
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args(argv)
    n = make_dataset(args.out, args.dishes, args.images, args.passages, args.size)
    print(f"wrote {n} records ({args.dishes} dishes x {args.images} images x {args.passages} passages) to {args.out}")


if __name__ == "__main__":
    main()
