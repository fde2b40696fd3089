"""embed: encode each distinct image of the training pairs once with the frozen vision encoder.

Inputs: --pairs (training_pairs.csv), --vision (base vision model folder), param data.root (where
the pairs' image paths are resolved). --cache is a persisted folder of vectors keyed by (vision model
hash, image sha256), so a rerun encodes only images it has not seen.
Output: --out folder (embeddings.npy, image_sha256.txt, manifest.json).
"""

import argparse
import logging

from faclip.embed import embed_images, save_image_embeddings
from faclip.errors import run_main
from faclip.params import load_params
from faclip.tables import load_pairs

logger = logging.getLogger("stages.embed")


def main(argv=None):
    # 1. Paths come from dvc.yaml; only data.root is read from params.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--vision", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    data_root = load_params().data.root

    # 2. Encode the images the cache lacks; reuse the rest.
    pairs = load_pairs(args.pairs)
    embeddings, encoded = embed_images(pairs, data_root=data_root, vision_dir=args.vision, cache_dir=args.cache)
    logger.info("%d distinct images: %d encoded, %d reused from the cache",
                len(embeddings.image_sha256), encoded, len(embeddings.image_sha256) - encoded)

    # 3. Write the embeddings atomically.
    save_image_embeddings(args.out, embeddings)
    logger.info("wrote %s (%d x %d)", args.out, len(embeddings.image_sha256), embeddings.dim)


if __name__ == "__main__":
    run_main(main)
