"""Where `dvc repro` puts what search and serve read (the outs of dvc.yaml): the CLI's defaults.

Its own module, free of heavy imports, so `faclip --help` can name them without loading torch.
"""

DEFAULT_MODEL = "models/finetuned"
DEFAULT_VISION = "models/base/vision"
DEFAULT_INDEX = "models/index"
LEXICAL_DIR_NAME = "lexical"  # the BM25 index: beside the passage index by default (models/lexical)
DEFAULT_DOCSTORE = "data/docstore.parquet"
