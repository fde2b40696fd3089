"""base: materialise the two base encoders as save_pretrained folders.

Inputs: params model.text, model.vision ('tiny', a hub id, or a local folder); the docstore, whose
titles and passages are the tokenizer corpus when model.text is 'tiny' (otherwise it is not read).
Outputs: --text-out and --vision-out folders (weights, tokenizer / image processor, faclip.json).
"""

import argparse
import logging

from faclip.errors import run_main
from faclip.models import materialise_base, tiny_corpus
from faclip.params import load_params
from faclip.tables import load_docstore

logger = logging.getLogger("stages.base")


def main(argv=None):
    # 1. Paths come from dvc.yaml; params are read once, and only model.* is used here.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docstore", required=True)
    parser.add_argument("--text-out", required=True)
    parser.add_argument("--vision-out", required=True)
    args = parser.parse_args(argv)
    model = load_params().model

    # 2. Build ('tiny') or load (hub id / local folder) both encoders; check widths; save both.
    def corpus():
        return tiny_corpus(load_docstore(args.docstore))

    dim = materialise_base(text_source=model.text, vision_source=model.vision, corpus_fn=corpus,
                           text_out=args.text_out, vision_out=args.vision_out)
    logger.info("wrote %s and %s (width %d)", args.text_out, args.vision_out, dim)


if __name__ == "__main__":
    run_main(main)
