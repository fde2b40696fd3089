"""The `prepare` stage's logic: JSON records + images under data.root -> docstore, pairs, and a skip report.

A `*.json` or `*.jsonl` file is one object, a list of objects, or JSON Lines; a record is
`{"title", "response", "image_path"}` with the image path relative to the JSON file's folder, and an
optional `"question"` (the question its response answers; a bad one drops the question, not the pair).
Every bad record is skipped, counted by reason and named (file, position, detail); nothing bad
reaches the outputs, and nothing good is silently changed.
"""

import functools
import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from faclip.errors import FaclipError
from faclip.files import (MAX_IMAGE_BYTES, MAX_JSON_BYTES, RefusedFile, image_size_problem, read_regular_file,
                          resolve_under_root)
from faclip.tables import DOCSTORE_COLUMNS, PAIRS_COLUMNS, QUESTIONS_COLUMNS
from faclip.text import food_id_for, identity_key, invalid_character, is_blank, passage_id_for

logger = logging.getLogger(__name__)

LOGGED_PER_REASON = 20

LAYOUT_HINT = (
    "expected folders (any depth) of images and *.json / *.jsonl files, each record "
    '{"title": ..., "response": ..., "image_path": path relative to the JSON file}'
)

SKIP_COLUMNS = ["reason", "source", "position", "detail"]


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
    folders are not entered); a folder that cannot be listed is a `folder_unreadable` skip."""
    errors = []
    files = [Path(d) / f for d, _, names in os.walk(root, followlinks=False, onerror=errors.append) for f in names
             if f.lower().endswith(JSON_SUFFIXES)]
    for err in sorted(errors, key=lambda e: str(e.filename)):
        if skips is not None:
            skips.add("folder_unreadable", _relative(root, err.filename), detail=err.strerror or "")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


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


# A PIL message may name an in-memory object (`<_io.BytesIO object at 0x7f...>`): never in the skip report.
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|\s+at 0x[0-9a-fA-F]+")


def _error_detail(err: Exception) -> str:
    return _ADDRESS.sub("", str(err)).strip() or type(err).__name__


def check_image(path: str, root: str | None = None) -> ImageCheck:
    """Read (a regular file under `root`, bounded size), hash and fully decode one image, refusing
    bombs and extreme aspect ratios from the header. Never raises: a bad image is a reason."""
    try:
        data = read_regular_file(path, os.path.dirname(path) if root is None else root, MAX_IMAGE_BYTES)
    except RefusedFile as refused:
        return ImageCheck(path, None, f"image_{refused.kind}", refused.detail)
    try:
        with Image.open(io.BytesIO(data)) as image:
            problem = image_size_problem(*image.size)  # from the header; nothing decoded yet
            if problem is not None:
                return ImageCheck(path, None, f"image_{problem[0]}", problem[1])
            image.load()  # full decode: catches truncated and corrupt files
    except Image.DecompressionBombError as err:
        return ImageCheck(path, None, "image_too_large", _error_detail(err))
    except UnidentifiedImageError:
        return ImageCheck(path, None, "image_corrupt", "not an image format PIL can read")
    except Exception as err:  # a damaged file makes decoders raise all sorts; none may stop the run
        return ImageCheck(path, None, "image_corrupt", _error_detail(err))
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
    """image_sha256 -> 'train'|'test', from the image's own hash, so a split never moves when data is added.

    A dish with 2+ images gets at least one in each split: if the hash put all of them on one side,
    its lowest-scoring image goes to test (or its highest to train).
    """
    score = {sha: int(sha[:16], 16) / 2**64 for sha in image_food["image_sha256"].unique()}
    split = {sha: "test" if s < test_fraction else "train" for sha, s in score.items()}
    for _, shas in sorted(image_food.groupby("food_id")["image_sha256"]):
        ranked = sorted(set(shas), key=lambda sha: (score[sha], sha))
        if len(ranked) < 2:
            continue
        if all(split[sha] == "train" for sha in ranked):
            split[ranked[0]] = "test"
        elif all(split[sha] == "test" for sha in ranked):
            split[ranked[-1]] = "train"
    return split


def prepare_dataset(root: str | Path, test_fraction: float, workers: int | None = None) -> Prepared:
    """Scan root and build the docstore, the (image, passage) pairs with their split, skips and stats."""
    root = Path(root)
    if not root.is_dir():
        raise FaclipError(f"data root {root} does not exist or is not a folder; set data.root in params.yaml ({LAYOUT_HINT})")
    skips = Skips()
    records = []  # (source, position, title, response, image path under root, raw question or None)
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
            elif (image := resolve_under_root(root, path.parent, image_path.strip())) is None:
                skips.add("image_outside_root", source, position, image_path)
            else:
                records.append((source, position, title, response, image, item.get("question")))

    checked = check_images(sorted({str(r[4]) for r in records}), workers or min(4, os.cpu_count() or 1), str(root))
    rows, passages, asked = [], {}, []
    for source, position, title, response, image, raw_question in records:
        check = checked[str(image)]
        if check.sha256 is None:
            skips.add(check.reason, source, position, f"{image.relative_to(root).as_posix()}: {check.detail}")
            continue
        sha = check.sha256
        passage_id, food_id = passage_id_for(response), food_id_for(title)
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
    pairs["split"] = pairs["image_sha256"].map(split)
    pairs = pairs.sort_values(["image_path", "passage_id"], ignore_index=True)
    docstore = pd.DataFrame(sorted(passages.values()), columns=DOCSTORE_COLUMNS)

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
        "questions": len(questions),
        "train_questions": int((questions["split"] == "train").sum()),
        "test_questions": int((questions["split"] == "test").sum()),
        "skipped": skips.counts(),
        "skipped_total": len(skips.rows),
    }
    return Prepared(docstore=docstore, pairs=pairs, skips=skips, stats=stats, questions=questions)


def read_question(value, source: str, position: str, skips: Skips) -> str | None:
    """A record's optional question, as written (stripped), or None: absent or null is no question; one that
    is not a string, blank after normalisation or holds invalid characters is a `question_*` skip of the
    question alone (the pair is kept)."""
    if value is None:
        return None
    if not isinstance(value, str):
        skips.add("question_not_text", source, position, f"not a string ({type(value).__name__}); the pair is kept")
    elif is_blank(value):
        skips.add("question_blank", source, position, "blank after normalisation; the pair is kept")
    elif (where := invalid_character(value)) is not None:
        skips.add("question_invalid_characters", source, position, f"{where}; the pair is kept")
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
