"""evaluate: index + fine-tuned and base text models + test-split image vectors -> retrieval metrics and plots.

Outputs: --metrics json {finetuned, base, gain, chance: {image_to_text, text_to_image: {recall@k, mrr,
ndcg@10}}, counts}; --plots folder with recall_at_k.csv (k, finetuned, base) and per_dish.csv
(food_id, test_images, finetuned_recall@1, base_recall@1), image->passage.
Params: eval.k.
"""

import argparse
import logging

from faclip.errors import run_main
from faclip.evaluate import run_evaluation
from faclip.files import atomic_dir, write_json
from faclip.params import load_params

logger = logging.getLogger("stages.evaluate")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--model", required=True, help="fine-tuned text model folder")
    parser.add_argument("--base-text", required=True, help="untrained base text model folder")
    parser.add_argument("--docstore", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--image-embeddings", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--plots", required=True)
    args = parser.parse_args(argv)

    # 1. params
    params = load_params().eval

    # 2. check the index is current, then evaluate both text encoders on the test split
    result = run_evaluation(index_dir=args.index, model_dir=args.model, base_text_dir=args.base_text,
                            docstore_path=args.docstore, pairs_path=args.pairs,
                            image_embeddings_path=args.image_embeddings, ks=params.k)

    # 3. write metrics and plot tables
    write_json(args.metrics, result.metrics)
    with atomic_dir(args.plots) as tmp:
        result.recall_at_k.to_csv(tmp / "recall_at_k.csv", index=False, lineterminator="\n")
        result.per_dish.to_csv(tmp / "per_dish.csv", index=False, lineterminator="\n")
    i2t = result.metrics["finetuned"]["image_to_text"], result.metrics["base"]["image_to_text"]
    logger.info("image->passage recall@%d: finetuned %.3f, base %.3f (chance %.3f)", params.k[0],
                i2t[0][f"recall@{params.k[0]}"], i2t[1][f"recall@{params.k[0]}"],
                result.metrics["chance"]["image_to_text"][f"recall@{params.k[0]}"])


if __name__ == "__main__":
    run_main(main)
