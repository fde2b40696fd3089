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
