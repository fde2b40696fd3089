"""prepare: raw JSON records + images under data.root -> docstore, training pairs, skip report, counts.

Outputs: --docstore (parquet, one row per unique passage), --pairs (csv, one row per image/passage
with its train/test split), --skips (csv, every skipped record with its reason), --metrics (json).
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
    parser.add_argument("--skips", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    # 1. params
    params = load_params().data

    # 2. scan, validate, normalise, dedupe, split
    prepared = prepare_dataset(params.root, test_fraction=params.test_fraction)

    # 3. write the four outputs as one set: all replaced, or (a full disk, say) none
    with atomic_paths(args.docstore, args.pairs, args.skips, args.metrics) as (docstore, pairs, skips, metrics):
        prepared.docstore.to_parquet(docstore, index=False)
        prepared.pairs.to_csv(pairs, index=False, lineterminator="\n")
        prepared.skips.to_frame().to_csv(skips, index=False, lineterminator="\n")
        metrics.write_text(json_text(prepared.stats), encoding="utf-8")
    stats = prepared.stats
    logger.info("%d pairs, %d passages, %d dishes, %d/%d train/test images; %d records skipped %s",
                stats["pairs"], stats["passages"], stats["dishes"], stats["train_images"],
                stats["test_images"], stats["skipped_total"], stats["skipped"] or "")


if __name__ == "__main__":
    run_main(main)
