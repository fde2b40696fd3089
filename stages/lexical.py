"""lexical: docstore -> BM25 index of every passage (the lexical half of text queries and questions).

Inputs: --docstore. Output: --out folder with bm25s's files (the score matrix as .npy arrays, the vocabulary)
and manifest.json (terms, count, vocabulary, postings, sha256 of the docstore, of its passage-id order and of
each file). Row i is docstore row i, as in the FAISS index. No params: the terms and BM25's k1 and b are
faclip.lexical's (BENCHMARKS.md, "The lexical half", says why).
"""

import argparse
import logging

from faclip.errors import run_main
from faclip.lexical import build_lexical_index

logger = logging.getLogger("stages.lexical")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docstore", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    # 1. tokenise every passage and build BM25 (bm25s), 2. write it with its manifest
    manifest = build_lexical_index(args.docstore, args.out)

    # 3. report
    logger.info("wrote %s: BM25 over %d passages, %d terms (%s), %d postings", args.out, manifest["count"],
                manifest["vocabulary"], manifest["terms"], manifest["postings"])


if __name__ == "__main__":
    run_main(main)
