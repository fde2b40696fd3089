"""embed: encode each distinct image of the training pairs once with the frozen vision encoder.

Inputs: --pairs (training_pairs.csv), --vision (base vision model folder), params data.root (where
the pairs' image paths are resolved), embed.batch_size and embed.num_workers (how it runs, not what
it computes). --cache is a persisted folder of vectors keyed by (vision model hash, decode, image
sha256), so a rerun encodes only images it has not seen.
Output: --out folder (embeddings.npy, image_sha256.txt, manifest.json).

On N processes: `accelerate launch --num_processes N stages/embed.py <same arguments>` (or torchrun):
each encodes its share of the new images; the main process writes the same bytes one process writes.
"""

import argparse
import logging

from accelerate import PartialState

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
    params = load_params()

    # 2. Encode the images the cache lacks (on every process, each its share); reuse the rest.
    pairs = load_pairs(args.pairs)
    embeddings, encoded = embed_images(pairs, data_root=params.data.root, vision_dir=args.vision,
                                       cache_dir=args.cache, batch_size=params.embed.batch_size,
                                       num_workers=params.embed.num_workers)
    if not PartialState().is_main_process:
        return

    # 3. Write the embeddings atomically (the main process).
    logger.info("%d distinct images: %d encoded, %d reused from the cache",
                len(embeddings.image_sha256), encoded, len(embeddings.image_sha256) - encoded)
    save_image_embeddings(args.out, embeddings)
    logger.info("wrote %s (%d x %d)", args.out, len(embeddings.image_sha256), embeddings.dim)


if __name__ == "__main__":
    run_main(main)
