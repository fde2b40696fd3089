"""The docstore, training-pairs and questions tables that `prepare` writes: their columns, and checked loading.

Every reader goes through `load_docstore` / `load_pairs` / `load_questions`, which refuse a damaged or hand-edited table in
one line (a missing column, a null or non-text cell, a duplicate passage id, a split other than
train/test) rather than let it return other passages than asked for.
"""

import hashlib
import re
from pathlib import Path

import pandas as pd

from faclip.errors import FaclipError, outputs_hint

DOCSTORE_COLUMNS = ["id", "food_id", "title", "passage_text"]
PAIRS_COLUMNS = ["image_path", "image_sha256", "passage_id", "food_id", "split"]
# One row per (image, passage, question): the question a record asked about the photo, answered by the passage.
QUESTIONS_COLUMNS = ["image_path", "image_sha256", "question", "passage_id", "food_id", "split"]
SPLITS = ("train", "test")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _damaged(path: Path, what: str, stage: str = "prepare") -> FaclipError:
    return FaclipError(f"{path} is damaged ({what}); restore it with `dvc checkout {path}` or rebuild it with "
                       f"`dvc repro {stage}`")


def _check_columns(table: pd.DataFrame, path: Path, columns: list[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise FaclipError(f"{path} lacks columns {missing} (has {list(table.columns)}); run `dvc repro prepare`")
    for column in columns:
        bad = [i for i, value in enumerate(table[column]) if not isinstance(value, str) or not value]
        if bad:
            raise _damaged(path, f"row {bad[0]} ({len(bad)} in all) has {table[column].iloc[bad[0]]!r} for "
                                 f"{column!r}, not a text")
    return table


def check_unique_ids(ids: list[str], path: str | Path, column: str = "id") -> None:
    """Passage ids must be unique: the index maps its rows to passages by id."""
    seen = pd.Series(ids)
    duplicated = seen[seen.duplicated()]
    if not duplicated.empty:
        raise _damaged(Path(path), f"{column} {duplicated.iloc[0]!r} is on {int((seen == duplicated.iloc[0]).sum())} "
                                   f"rows; {len(duplicated)} duplicate(s) in all")


def _read(path: Path, read) -> pd.DataFrame:
    try:
        return read(path)
    except Exception as err:  # pyarrow and the csv parser raise many kinds on a garbage file
        raise _damaged(path, f"it does not parse: {type(err).__name__}") from None


def load_docstore(path: str | Path) -> pd.DataFrame:
    """Read the docstore parquet (id, food_id, title, passage_text: text, ids unique), checking it."""
    path = Path(path)
    if not path.is_file():
        raise FaclipError(f"docstore {path} not found; {outputs_hint()}")
    docstore = _check_columns(_read(path, pd.read_parquet), path, DOCSTORE_COLUMNS)
    if docstore.empty:
        raise FaclipError(f"docstore {path} has no passages; run `dvc repro prepare` on a data.root with records")
    check_unique_ids(docstore["id"].tolist(), path)
    return docstore.reset_index(drop=True)


def load_pairs(path: str | Path) -> pd.DataFrame:
    """Read training_pairs.csv as strings (a dish called 'NA' stays 'NA'), checking its columns and cells."""
    path = Path(path)
    if not path.is_file():
        raise FaclipError(f"training pairs {path} not found; run `dvc repro prepare`")
    pairs = _read(path, lambda p: pd.read_csv(p, dtype=str, keep_default_na=False))
    pairs = _check_columns(pairs, path, PAIRS_COLUMNS)
    bad_split = pairs.loc[~pairs["split"].isin(SPLITS), "split"]
    if not bad_split.empty:
        raise _damaged(path, f"split {bad_split.iloc[0]!r} is neither train nor test")
    bad_sha = pairs.loc[~pairs["image_sha256"].str.fullmatch(_SHA256), "image_sha256"]
    if not bad_sha.empty:
        raise _damaged(path, f"image_sha256 {bad_sha.iloc[0][:80]!r} is not 64 hex digits")
    return pairs


def load_questions(path: str | Path) -> pd.DataFrame:
    """Read questions.csv as strings, checking its columns (it may have no rows: questions are optional)."""
    path = Path(path)
    if not path.is_file():
        raise FaclipError(f"questions table {path} not found; run `dvc repro prepare`")
    return _check_columns(_read(path, lambda p: pd.read_csv(p, dtype=str, keep_default_na=False)), path,
                          QUESTIONS_COLUMNS)


def passage_ids_sha256(passage_ids: list[str]) -> str:
    """sha256 of the ordered passage ids (one a line): row i of the passage index (and of the lexical index) is
    passage_ids[i], so an edited or reordered list would silently return other passages; both manifests record it
    and readers check it."""
    return hashlib.sha256("".join(f"{passage_id}\n" for passage_id in passage_ids).encode("utf-8")).hexdigest()
