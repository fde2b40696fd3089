"""prepare: raw JSON records + images under data.root -> docstore, training pairs, questions, skip report, counts.

Outputs: --docstore (parquet, one row per unique passage), --pairs (csv, one row per image/passage
with its train/test split), --questions (csv, one row per image/passage/question, with the split; no
rows when no record has a question), --skips (csv, every skipped record or question with its reason),
--metrics (json).
Params: data.root, data.test_fraction.
"""

import argparse
import logging

from faclip.errors import run_main
from faclip.files import atomic_paths, json_text
from faclip.params import load_params
from faclip.prepare import prepare_dataset

logger = logging.getLogger("stages.prepare")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docstore", required=True)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--questions", help="where to write the questions table (dvc.yaml always gives it)")
    parser.add_argument("--skips", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    # 1. params
    params = load_params().data

    # 2. scan, validate, normalise, dedupe, split
    prepared = prepare_dataset(params.root, test_fraction=params.test_fraction)

    # 3. write the outputs as one set: all replaced, or (a full disk, say) none
    outputs = [args.docstore, args.pairs, args.skips, args.metrics] + ([args.questions] if args.questions else [])
    with atomic_paths(*outputs) as (docstore, pairs, skips, metrics, *questions):
        prepared.docstore.to_parquet(docstore, index=False)
        prepared.pairs.to_csv(pairs, index=False, lineterminator="\n")
        for path in questions:
            prepared.questions.to_csv(path, index=False, lineterminator="\n")
        prepared.skips.to_frame().to_csv(skips, index=False, lineterminator="\n")
        metrics.write_text(json_text(prepared.stats), encoding="utf-8")
    stats = prepared.stats
    logger.info("%d pairs, %d passages, %d dishes, %d/%d train/test images, %d questions; %d skipped %s",
                stats["pairs"], stats["passages"], stats["dishes"], stats["train_images"],
                stats["test_images"], stats["questions"], stats["skipped_total"], stats["skipped"] or "")


if __name__ == "__main__":
    run_main(main)
