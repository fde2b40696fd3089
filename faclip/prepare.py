"""The `prepare` stage's logic: JSON records + images under data.root -> docstore, pairs, and a skip report.

A `*.json` or `*.jsonl` file is one object, a list of objects, or JSON Lines; a record is
`{"title", "response", "image_path"}` with the image path relative to the JSON file's folder, and an
optional `"question"` (the question its response answers; a bad one drops the question, not the pair).
Every bad record is skipped, counted by reason and named (file, position, detail); nothing bad
reaches the outputs, and nothing good is silently changed.
"""

import functools
import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from faclip.errors import FaclipError
from faclip.files import (MAX_IMAGE_BYTES, MAX_JSON_BYTES, NON_UTF8_FIX, RefusedFile, escaped_path, is_utf8_name,
                          read_regular_file, resolve_under_root)
from faclip.images import ImageRefused, decode_image
from faclip.tables import DOCSTORE_COLUMNS, PAIRS_COLUMNS, QUESTIONS_COLUMNS, check_unique_ids
from faclip.text import food_id_for, identity_key, invalid_character, is_blank, passage_id_for

logger = logging.getLogger(__name__)

LOGGED_PER_REASON = 20

LAYOUT_HINT = (
    "expected folders (any depth) of images and *.json / *.jsonl files, each record "
    '{"title": ..., "response": ..., "image_path": path relative to the JSON file}'
)

SKIP_COLUMNS = ["reason", "source", "position", "detail"]

# No dish is named in more than a line: the longest names (a dish, its variety and its garnish, «خورش قیمه بادمجان
# با سیب‌زمینی سرخ‌کرده و لیمو عمانی») are about 50 characters. A longer title is a paragraph pasted into the
# wrong field, and would become a food_id of that length.
MAX_TITLE_CHARS = 200  # of the food_id, after normalisation
# The longest query `serve` accepts (serve.MAX_TEXT_CHARS), so every stored question can be asked as written.
MAX_QUESTION_CHARS = 2000  # as written (stripped), as it is stored and asked


@dataclass
class Skips:
    """Skipped records, by reason, with where each came from."""

    rows: list = field(default_factory=list)
    by_reason: Counter = field(default_factory=Counter)

    def add(self, reason: str, source: str, position: str = "", detail: str = "") -> None:
        self.rows.append((reason, source, position, detail))
        self.by_reason[reason] += 1
        if self.by_reason[reason] <= LOGGED_PER_REASON:
            logger.warning("skipped (%s) %s%s%s", reason, source, f" [{position}]" if position else "",
                           f": {detail}" if detail else "")

    def counts(self) -> dict[str, int]:
        return dict(sorted(self.by_reason.items()))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=SKIP_COLUMNS)


@dataclass
class Prepared:
    docstore: pd.DataFrame
    pairs: pd.DataFrame
    skips: Skips
    stats: dict
    questions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=QUESTIONS_COLUMNS))


JSON_SUFFIXES = (".json", ".jsonl")  # either suffix may hold any of the three forms


def find_json_files(root: Path, skips: Skips | None = None) -> list[Path]:
    """Every *.json / *.jsonl file under root, in a sorted, machine-independent order (symlinked
    folders are not entered); a folder that cannot be listed is a `folder_unreadable` skip, and a file
    whose path under root is not valid UTF-8 (its name or a folder's) a `non_utf8_name` skip."""
    errors = []
    files = [Path(d) / f for d, _, names in os.walk(root, followlinks=False, onerror=errors.append) for f in names
             if f.lower().endswith(JSON_SUFFIXES)]
    for err in sorted(errors, key=lambda e: escaped_path(e.filename)):
        if skips is not None:
            skips.add("folder_unreadable", escaped_path(_relative(root, err.filename)), detail=err.strerror or "")
    named = [path for path in files if is_utf8_name(path.relative_to(root))]
    for path in sorted(set(files) - set(named), key=lambda p: escaped_path(p.relative_to(root))):
        if skips is not None:
            skips.add("non_utf8_name", escaped_path(path.relative_to(root).as_posix()),
                      detail=f"the name is not UTF-8; {NON_UTF8_FIX}")
    return sorted(named, key=lambda p: p.relative_to(root).as_posix())


def _relative(root: Path, path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


class _TooDeep(Exception):
    pass


def _loads(text: str):
    """json.loads; a document nested deeper than Python's recursion allows raises _TooDeep."""
    try:
        return json.loads(text)
    except RecursionError:
        raise _TooDeep() from None


def read_json_objects(path: Path, source: str, skips: Skips, root: Path | None = None) -> list[tuple[str, object]]:
    """(position, item) for each item of a JSON object / list / JSON Lines file; bad files and lines are skipped.

    The file is read only if it is a regular file under `root` of at most MAX_JSON_BYTES: a FIFO, a
    device, a symlink loop or a symlink out of the root is a skip, never a hang or a crash.
    """
    try:
        data = read_regular_file(path, path.parent if root is None else root, MAX_JSON_BYTES)
    except RefusedFile as refused:
        skips.add(f"json_{refused.kind}", source, detail=refused.detail)
        return []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        skips.add("non_utf8_file", source, detail=f"byte {err.start}; save the file as UTF-8")
        return []
    try:
        document = _loads(text)
    except _TooDeep:
        skips.add("json_too_deep", source, detail="nested deeper than Python's recursion limit")
        return []
    except ValueError as err:  # JSONDecodeError, or an integer of over 4300 digits
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        parsed = []
        for n, line in lines:
            try:
                parsed.append((n, _loads(line)))
            except _TooDeep:
                parsed.append((n, _TooDeep))
            except ValueError:
                parsed.append((n, None))
        if len(lines) < 2 or not any(isinstance(obj, dict) for _, obj in parsed):
            detail = f"line {err.lineno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else str(err)
            skips.add("malformed_json_file", source, detail=detail)
            return []
        items = []
        for n, obj in parsed:  # JSON Lines: each line stands alone
            if obj is None:
                skips.add("malformed_json_line", source, f"line {n}")
            elif obj is _TooDeep:
                skips.add("json_too_deep", source, f"line {n}", "nested deeper than Python's recursion limit")
            else:
                items.append((f"line {n}", obj))
        return items
    if isinstance(document, list):
        return [(f"item {i}", obj) for i, obj in enumerate(document)]
    return [("object", document)]


def _text_field(record: dict, key: str) -> tuple[str | None, str]:
    """(the field's text, "") when usable, else (None, why): absent, not a string, blank after normalisation."""
    if key not in record:
        return None, "absent"
    value = record[key]
    if not isinstance(value, str):
        return None, f"not a string ({type(value).__name__})"
    if is_blank(value):
        return None, "blank after normalisation" if value.strip() else "empty"
    return value.strip(), ""


def _invalid_characters(fields: dict[str, str]) -> str | None:
    for key, value in fields.items():
        where = invalid_character(value)
        if where is not None:
            return f"{key}: {where}"
    return None


@dataclass(frozen=True)
class ImageCheck:
    """What verifying one image found: its sha256, or the skip reason and detail."""

    path: str
    sha256: str | None
    reason: str = ""
    detail: str = ""


def check_image(path: str, root: str | None = None) -> ImageCheck:
    """Read (a regular file under `root`, bounded size), hash and decode one image with the decoder `embed`
    and search use (`faclip.images`), in full, so an image that passes here never fails in `embed`.
    Never raises: a bad image is a reason."""
    try:
        data = read_regular_file(path, os.path.dirname(path) if root is None else root, MAX_IMAGE_BYTES)
    except RefusedFile as refused:
        return ImageCheck(path, None, f"image_{refused.kind}", refused.detail)
    try:
        decode_image(data, path)
    except ImageRefused as refused:
        return ImageCheck(path, None, f"image_{refused.kind}", refused.detail)
    return ImageCheck(path, hashlib.sha256(data).hexdigest())


def check_images(paths: list[str], workers: int, root: str | None = None) -> dict[str, ImageCheck]:
    """Hash and verify images, in parallel worker processes when there are many."""
    check = functools.partial(check_image, root=root)
    if workers > 1 and len(paths) >= 256:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(check, paths, chunksize=64), total=len(paths),
                                desc="verify images", unit="img"))
    else:
        results = [check(p) for p in tqdm(paths, desc="verify images", unit="img")]
    return {result.path: result for result in results}


def split_images(image_food: pd.DataFrame, test_fraction: float) -> dict[str, str]:
    """image_sha256 -> 'train'|'test', from each image's own hash, so a split never moves when data is added.

    The rule: every dish with 2+ distinct images has at least one in each split, when that is possible. A
    photo shared by several dishes counts for each of them. When the hash put all of a dish's images on one
    side, one of them moves: the lowest-scoring one to test (or the highest to train) among those whose move
    leaves every other dish holding it with an image on each side. A move never breaks a dish, so each one
    fixes at least one more dish and the passes (in food_id order, until nothing moves) end. A dish whose
    every image is needed where it is by another dish stays on one side (`one_sided_dishes` names them): with
    shared photos, splitting every dish is not always possible (three dishes pairwise sharing three photos).
    """
    score = {sha: int(sha[:16], 16) / 2**64 for sha in image_food["image_sha256"].unique()}
    split = {sha: "test" if s < test_fraction else "train" for sha, s in score.items()}
    pairs = image_food.drop_duplicates(["food_id", "image_sha256"])
    dish_images = {food: sorted(set(shas), key=lambda sha: (score[sha], sha))
                   for food, shas in pairs.groupby("food_id")["image_sha256"]}
    dish_images = {food: ranked for food, ranked in sorted(dish_images.items()) if len(ranked) >= 2}
    image_dishes: dict[str, list[str]] = {}
    for food, ranked in dish_images.items():
        for sha in ranked:
            image_dishes.setdefault(sha, []).append(food)

    def one_sided(food: str) -> bool:
        return len({split[sha] for sha in dish_images[food]}) == 1

    def breaks_another(sha: str, food: str) -> bool:
        side = split[sha]
        return any(other != food and not one_sided(other) and
                   sum(split[s] == side for s in dish_images[other]) == 1 for other in image_dishes[sha])

    moved = True
    while moved:
        moved = False
        for food, ranked in dish_images.items():
            if not one_sided(food):
                continue
            side = split[ranked[0]]
            candidates = ranked if side == "train" else ranked[::-1]
            sha = next((sha for sha in candidates if not breaks_another(sha, food)), None)
            if sha is not None:
                split[sha] = "test" if side == "train" else "train"
                moved = True
    return split


def one_sided_dishes(image_food: pd.DataFrame, split: dict[str, str]) -> list[str]:
    """The dishes (food_id, sorted) with 2+ distinct images that are all in one split."""
    sides = image_food.drop_duplicates(["food_id", "image_sha256"]).assign(
        split=lambda frame: frame["image_sha256"].map(split)).groupby("food_id")
    return sorted(food for food, group in sides if len(group) >= 2 and group["split"].nunique() == 1)


def prepare_dataset(root: str | Path, test_fraction: float, workers: int | None = None) -> Prepared:
    """Scan root and build the docstore, the (image, passage) pairs with their split, skips and stats."""
    root = Path(root)
    if not root.is_dir():
        raise FaclipError(f"data root {root} does not exist or is not a folder; set data.root in params.yaml ({LAYOUT_HINT})")
    skips = Skips()
    records = []  # (source, position, title, food_id, response, image path under root, raw question or None)
    items_seen = 0
    json_files = find_json_files(root, skips)
    for path in tqdm(json_files, desc="read json", unit="file"):
        source = path.relative_to(root).as_posix()
        for position, item in read_json_objects(path, source, skips, root):
            items_seen += 1
            if not isinstance(item, dict):
                skips.add("not_an_object", source, position, f"got {type(item).__name__}")
                continue
            (title, no_title), (response, no_response) = _text_field(item, "title"), _text_field(item, "response")
            image_path = item.get("image_path")
            if title is None:
                skips.add("missing_title", source, position, no_title)
            elif response is None:
                skips.add("missing_response", source, position, no_response)
            elif not isinstance(image_path, str) or not image_path.strip():
                skips.add("missing_image_path", source, position)
            elif (bad := _invalid_characters({"title": title, "response": response, "image_path": image_path})):
                skips.add("invalid_characters", source, position, bad)
            elif len(food_id := food_id_for(title)) > MAX_TITLE_CHARS:
                skips.add("title_too_long", source, position, f"{len(food_id)} characters after normalisation "
                          f"(a dish name has at most {MAX_TITLE_CHARS}): {food_id[:40]}...")
            elif (image := resolve_under_root(root, path.parent, image_path.strip())) is None:
                skips.add("image_outside_root", source, position, image_path)
            else:
                records.append((source, position, title, food_id, response, image, item.get("question")))

    checked = check_images(sorted({str(r[5]) for r in records}), workers or min(4, os.cpu_count() or 1), str(root))
    rows, passages, asked = [], {}, []
    for source, position, title, food_id, response, image, raw_question in records:
        check = checked[str(image)]
        if check.sha256 is None:
            skips.add(check.reason, source, position, f"{image.relative_to(root).as_posix()}: {check.detail}")
            continue
        sha = check.sha256
        passage_id = passage_id_for(response)
        passages.setdefault(passage_id, (passage_id, food_id, title, response))
        rows.append((image.relative_to(root).as_posix(), sha, passage_id, food_id))
        if (question := read_question(raw_question, source, position, skips)) is not None:
            asked.append((rows[-1][0], sha, question, passage_id, food_id))

    if not rows:
        raise FaclipError(f"no valid (image, passage) pairs found under {root} ({len(json_files)} JSON files, "
                          f"{len(skips.rows)} records skipped, see the log); {LAYOUT_HINT}")
    pairs = pd.DataFrame(rows, columns=PAIRS_COLUMNS[:-1])
    seen = len(pairs)
    pairs = pairs.drop_duplicates(["image_sha256", "passage_id"], keep="first")
    duplicates = seen - len(pairs)
    split = split_images(pairs[["image_sha256", "food_id"]], test_fraction)
    one_sided = one_sided_dishes(pairs[["image_sha256", "food_id"]], split)
    if one_sided:
        logger.warning("%d dish(es) with 2+ images have all of them in one split, as every image is needed "
                       "where it is by another dish sharing it: %s", len(one_sided), ", ".join(one_sided[:20]))
    pairs["split"] = pairs["image_sha256"].map(split)
    pairs = pairs.sort_values(["image_path", "passage_id"], ignore_index=True)
    docstore = pd.DataFrame(sorted(passages.values()), columns=DOCSTORE_COLUMNS)
    check_unique_ids(docstore["id"].tolist(), "the docstore prepare built")  # the index maps rows by id

    questions = questions_table(asked, split)
    images = pairs.drop_duplicates("image_sha256")
    dishes_per_passage = pairs.groupby("passage_id")["food_id"].nunique()
    stats = {
        "json_files": len(json_files),
        "records_seen": items_seen,
        "pairs": len(pairs),
        "duplicate_pairs": duplicates,
        "passages": len(docstore),
        "passages_in_several_dishes": int((dishes_per_passage > 1).sum()),
        "dishes": int(pairs["food_id"].nunique()),
        "images": len(images),
        "train_images": int((images["split"] == "train").sum()),
        "test_images": int((images["split"] == "test").sum()),
        "train_pairs": int((pairs["split"] == "train").sum()),
        "test_pairs": int((pairs["split"] == "test").sum()),
        "dishes_in_one_split": len(one_sided),
        "questions": len(questions),
        "train_questions": int((questions["split"] == "train").sum()),
        "test_questions": int((questions["split"] == "test").sum()),
        "skipped": skips.counts(),
        "skipped_total": len(skips.rows),
    }
    return Prepared(docstore=docstore, pairs=pairs, skips=skips, stats=stats, questions=questions)


def read_question(value, source: str, position: str, skips: Skips) -> str | None:
    """A record's optional question, as written (stripped), or None: absent or null is no question; one that
    is not a string, blank after normalisation, holds invalid characters or is over MAX_QUESTION_CHARS is a
    `question_*` skip of the question alone (the pair is kept)."""
    if value is None:
        return None
    if not isinstance(value, str):
        skips.add("question_not_text", source, position, f"not a string ({type(value).__name__}); the pair is kept")
    elif is_blank(value):
        skips.add("question_blank", source, position, "blank after normalisation; the pair is kept")
    elif (where := invalid_character(value)) is not None:
        skips.add("question_invalid_characters", source, position, f"{where}; the pair is kept")
    elif len(value.strip()) > MAX_QUESTION_CHARS:
        skips.add("question_too_long", source, position, f"{len(value.strip())} characters (a question has at most "
                  f"{MAX_QUESTION_CHARS}, the longest query serve accepts); the pair is kept")
    else:
        return value.strip()
    return None


def questions_table(asked: list[tuple], split: dict[str, str]) -> pd.DataFrame:
    """(image_path, image_sha256, question, passage_id, food_id) rows -> the questions table, with each
    image's split; a question asked twice of one image and passage (same after normalisation) is kept once."""
    questions = pd.DataFrame(asked, columns=QUESTIONS_COLUMNS[:-1])
    questions["split"] = questions["image_sha256"].map(split).astype(object)
    key = questions["question"].map(identity_key)
    questions = questions[~pd.concat([questions[["image_sha256", "passage_id"]], key], axis=1).duplicated()]
    return questions.sort_values(["image_path", "passage_id", "question"], ignore_index=True)
