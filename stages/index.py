"""index: fine-tuned text model + docstore -> FAISS index of every passage, with its manifest.

Inputs: --model (fine-tuned text folder), --docstore, and --pairs + --image-embeddings, whose train-split
images are the held-out queries the search knob is tuned and recall_vs_exact@10 measured on.
Outputs: --out folder with passages.faiss (row i = manifest passage_ids[i]) and manifest.json
(factory and why, search_params, recall_vs_exact@10, dim, count, passage-id order, sha256 of the
docstore, model weights and index file).
Params: index.factory (auto or a FAISS factory string), index.max_memory_mb, index.recall_target,
index.nprobe, index.efSearch.
"""

import argparse
import logging

from faclip.errors import run_main
from faclip.index import build_passage_index, held_out_queries
from faclip.params import load_params

logger = logging.getLogger("stages.index")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="text model folder, e.g. models/finetuned")
    parser.add_argument("--docstore", required=True)
    parser.add_argument("--pairs", help="training_pairs.csv (with --image-embeddings: held-out queries)")
    parser.add_argument("--image-embeddings", help="image embeddings folder")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    # 1. params, and the queries the search knob is tuned on (the indexed passages themselves without them)
    params = load_params().index
    queries = held_out_queries(args.pairs, args.image_embeddings) if args.pairs and args.image_embeddings else None

    # 2. embed every passage, choose (auto), build, train and tune the index, write it with its manifest
    manifest = build_passage_index(args.model, args.docstore, args.out, factory=params.factory,
                                   max_memory_mb=params.max_memory_mb, recall_target=params.recall_target,
                                   nprobe=params.nprobe, efSearch=params.efSearch, queries=queries,
                                   queries_label="train-split images")

    # 3. report
    logger.info("wrote %s: %d passages, dim %d, factory %s (%s), %s, recall_vs_exact@10 %s", args.out,
                manifest["count"], manifest["dim"], manifest["factory"], manifest["factory_reason"],
                manifest["search_params"] or "no search knob", manifest["recall_vs_exact@10"])


if __name__ == "__main__":
    run_main(main)
