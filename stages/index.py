"""index: fine-tuned text model + docstore -> FAISS index of every passage, with its manifest.

Outputs: --out folder with passages.faiss (row i = manifest passage_ids[i]) and manifest.json
(factory, dim, count, passage-id order, sha256 of the docstore, model weights and index file).
Params: index.factory.
"""

import argparse
import logging

from faclip.errors import run_main
from faclip.index import build_passage_index
from faclip.params import load_params

logger = logging.getLogger("stages.index")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="text model folder, e.g. models/finetuned")
    parser.add_argument("--docstore", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    # 1. params
    params = load_params().index

    # 2. embed every passage, build and train the index, write it with its manifest
    manifest = build_passage_index(args.model, args.docstore, args.out, factory=params.factory)

    # 3. report
    logger.info("wrote %s: %d passages, dim %d, factory %s", args.out, manifest["count"], manifest["dim"],
                manifest["factory"])


if __name__ == "__main__":
    run_main(main)
