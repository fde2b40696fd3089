"""evaluate: index + fine-tuned and base text models + image vectors -> retrieval, zero-shot and ceiling metrics.

Outputs: --metrics json {finetuned, base, ceiling, gain, chance: {image_to_text, text_to_image: {recall@k,
mrr, ndcg@10}}, ceiling.finetuned_share_of_recall@k, zero_shot: {finetuned, base: {acc@1, acc@5,
mean_per_class_recall}}, index: {recall_vs_exact@10}, counts, vqa (with --questions, when the test
split has questions and --lexical is given): {photo_weight, photo_only, question_only, together, chance,
best_on_train, counts}, text (the same): {text_weight, questions, dish_names, dish_names_in_sentence,
best_on_train, counts}};
--headline json: the few of them experiments are compared on (`faclip.evaluate.headline`, the only file
dvc.yaml declares as metrics); --plots folder with recall_at_k.csv (k, finetuned, base, ceiling) and
per_dish.csv (food_id, test_images, <model>_recall@1), image->passage; vqa_recall_at_k.csv (k, photo_only,
question_only, together, chance), vqa_photo_weight.csv (photo_weight, recall@1, mrr on the train split's
questions) and text_weight.csv (text_weight, recall@1, mrr: text queries, the train split's questions).
Params: eval.k, vqa.photo_weight, vqa.text_weight.
"""

import argparse
import logging

from faclip.errors import run_main
from faclip.evaluate import headline, run_evaluation
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
    parser.add_argument("--questions", help="questions.csv: photo + question retrieval (vqa) when given")
    parser.add_argument("--lexical", help="the lexical (BM25) index folder: with --questions, vqa and text queries")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--headline", required=True, help="the headline metrics json (what `dvc exp show` shows)")
    parser.add_argument("--plots", required=True)
    args = parser.parse_args(argv)

    # 1. params
    params = load_params()

    # 2. check the index is current, then evaluate both text encoders on the test split
    result = run_evaluation(index_dir=args.index, model_dir=args.model, base_text_dir=args.base_text,
                            docstore_path=args.docstore, pairs_path=args.pairs,
                            image_embeddings_path=args.image_embeddings, ks=params.eval.k,
                            questions_path=args.questions, lexical_dir=args.lexical,
                            photo_weight=params.vqa.photo_weight, text_weight=params.vqa.text_weight)

    # 3. write metrics and plot tables
    write_json(args.metrics, result.metrics)
    write_json(args.headline, headline(result.metrics), sort_keys=False)  # its order: the columns'
    with atomic_dir(args.plots) as tmp:
        result.recall_at_k.to_csv(tmp / "recall_at_k.csv", index=False, lineterminator="\n")
        result.per_dish.to_csv(tmp / "per_dish.csv", index=False, lineterminator="\n")
        result.vqa_recall_at_k.to_csv(tmp / "vqa_recall_at_k.csv", index=False, lineterminator="\n")
        result.vqa_photo_weight.to_csv(tmp / "vqa_photo_weight.csv", index=False, lineterminator="\n")
        result.text_weight.to_csv(tmp / "text_weight.csv", index=False, lineterminator="\n")
    k = f"recall@{params.eval.k[0]}"
    logger.info("image->passage %s: finetuned %.3f, base %.3f, ceiling %.3f (chance %.3f)", k,
                *(result.metrics[m]["image_to_text"][k] for m in ("finetuned", "base", "ceiling", "chance")))
    if "vqa" in result.metrics:
        vqa = result.metrics["vqa"]
        logger.info("photo + question -> its passage %s: photo only %.3f, question only %.3f, together %.3f "
                    "(photo_weight %g; chance %.3f)", k, vqa["photo_only"][k], vqa["question_only"][k],
                    vqa["together"][k], vqa["photo_weight"], vqa["chance"][k])


if __name__ == "__main__":
    run_main(main)
