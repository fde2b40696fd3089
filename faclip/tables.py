"""The docstore, training-pairs and questions tables that `prepare` writes: their columns, and checked loading."""

from pathlib import Path

import pandas as pd

from faclip.errors import FaclipError

DOCSTORE_COLUMNS = ["id", "food_id", "title", "passage_text"]
PAIRS_COLUMNS = ["image_path", "image_sha256", "passage_id", "food_id", "split"]
# One row per (image, passage, question): the question a record asked about the photo, answered by the passage.
QUESTIONS_COLUMNS = ["image_path", "image_sha256", "question", "passage_id", "food_id", "split"]


def _check_columns(table: pd.DataFrame, path: Path, columns: list[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise FaclipError(f"{path} lacks columns {missing} (has {list(table.columns)}); run `dvc repro prepare`")
    return table


def load_docstore(path: str | Path) -> pd.DataFrame:
    """Read the docstore parquet (id, food_id, title, passage_text), checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise FaclipError(f"docstore {path} not found; run `dvc repro prepare`")
    docstore = _check_columns(pd.read_parquet(path), path, DOCSTORE_COLUMNS)
    if docstore.empty:
        raise FaclipError(f"docstore {path} has no passages; run `dvc repro prepare` on a data.root with records")
    return docstore.reset_index(drop=True)


def load_pairs(path: str | Path) -> pd.DataFrame:
    """Read training_pairs.csv as strings (a dish called 'NA' stays 'NA'), checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise FaclipError(f"training pairs {path} not found; run `dvc repro prepare`")
    return _check_columns(pd.read_csv(path, dtype=str, keep_default_na=False), path, PAIRS_COLUMNS)


def load_questions(path: str | Path) -> pd.DataFrame:
    """Read questions.csv as strings, checking its columns (it may have no rows: questions are optional)."""
    path = Path(path)
    if not path.is_file():
        raise FaclipError(f"questions table {path} not found; run `dvc repro prepare`")
    return _check_columns(pd.read_csv(path, dtype=str, keep_default_na=False), path, QUESTIONS_COLUMNS)
