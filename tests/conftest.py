"""Shared fixtures: a tiny raw dataset in the seed's layout, built in tmp_path (fast, no fonts)."""

import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# (title, passages): short Persian dishes; colours/shapes below make images of one dish alike.
DISHES = [
    ("قورمه سبزی", ["قورمه سبزی خورشی با سبزی سرخ‌شده، لوبیا قرمز و گوشت است.",
                    "لیمو عمانی به قورمه سبزی طعم ترش می‌دهد."]),
    ("کباب کوبیده", ["کباب کوبیده از گوشت چرخ‌کرده و پیاز روی سیخ درست می‌شود.",
                     "کباب کوبیده را با نان و گوجه کبابی می‌خورند."]),
    ("زرشک پلو", ["زرشک پلو با مرغ غذای مجلسی ایرانی است.",
                  "زرشک و زعفران به این پلو رنگ و طعم می‌دهند."]),
    ("آش رشته", ["آش رشته با رشته، حبوبات و سبزی پخته می‌شود.",
                 "روی آش رشته کشک و نعناع داغ می‌ریزند."]),
]
COLOURS = [(200, 40, 40), (40, 160, 60), (50, 70, 200), (220, 180, 30), (150, 60, 170), (30, 170, 170)]


def draw_dish_image(dish: int, variant: int, size: int = 64) -> Image.Image:
    """A small picture whose colour and shape identify the dish; position and shade vary."""
    rng = random.Random(dish * 1000 + variant)
    image = Image.new("RGB", (size, size), (235, 230, 220))
    draw = ImageDraw.Draw(image)
    r, g, b = COLOURS[dish % len(COLOURS)]
    shade = rng.randint(-20, 20)
    colour = tuple(max(0, min(255, c + shade)) for c in (r, g, b))
    x, y = rng.randint(4, 16), rng.randint(4, 16)
    box = (x, y, x + size // 2 + rng.randint(0, 8), y + size // 2 + rng.randint(0, 8))
    (draw.ellipse if dish % 2 == 0 else draw.rectangle)(box, fill=colour)
    return image


def make_raw_dataset(root: Path, n_dishes: int = 4, images_per_dish: int = 4) -> Path:
    """Write a raw dataset: one folder per dish, a JSON list of records, one JPEG per image."""
    for d in range(n_dishes):
        title, passages = DISHES[d % len(DISHES)]
        if d >= len(DISHES):
            title = f"{title} {d}"
            passages = [f"{p} ({d})" for p in passages]
        folder = root / f"dish_{d:02d}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        records = []
        for v in range(images_per_dish):
            name = f"images/{v:02d}.jpg"
            draw_dish_image(d, v).save(folder / name, quality=90)
            records += [{"title": title, "response": p, "image_path": name} for p in passages]
        (folder / "records.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture
def raw_root(tmp_path) -> Path:
    """A small valid raw dataset: 4 dishes x 4 images x 2 passages."""
    return make_raw_dataset(tmp_path / "raw")


def dishes_corpus() -> list[str]:
    """Titles and passages of DISHES: the tokenizer corpus of the tiny test models."""
    return [title for title, _ in DISHES] + [p for _, passages in DISHES for p in passages]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(text_dir, vision_dir): saved tiny base models (width 128), built once per test session."""
    from faclip.models import materialise_base

    root = tmp_path_factory.mktemp("tiny_models")
    materialise_base("tiny", "tiny", dishes_corpus, root / "text", root / "vision")
    return root / "text", root / "vision"
