"""`python -m faclip search --image PHOTO | --text "…" [--k 5] [--json]`: passages for a photo or a text."""

import argparse
import sys

import transformers

from faclip.encode import load_rgb
from faclip.errors import FaclipError, run_main
from faclip.search import (DEFAULT_DOCSTORE, DEFAULT_INDEX, DEFAULT_MODEL, DEFAULT_VISION, Retriever, check_text_query,
                           format_hits)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faclip", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    find = commands.add_parser("search", help="retrieve passages for a food photo or a text")
    query = find.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="a food photo (JPEG/PNG/WebP)")
    query.add_argument("--text", help="a text query, e.g. a dish name")
    find.add_argument("--k", type=int, default=5, help="how many passages (default 5)")
    find.add_argument("--json", action="store_true", help="print the hits as JSON")
    find.add_argument("--model", default=DEFAULT_MODEL, help=f"text model folder (default {DEFAULT_MODEL})")
    find.add_argument("--vision", default=DEFAULT_VISION, help=f"vision model folder (default {DEFAULT_VISION})")
    find.add_argument("--index", default=DEFAULT_INDEX, help=f"index folder (default {DEFAULT_INDEX})")
    find.add_argument("--docstore", default=DEFAULT_DOCSTORE, help=f"docstore (default {DEFAULT_DOCSTORE})")
    return parser


def search_command(args: argparse.Namespace) -> None:
    # A bad query fails before the models load (seconds for a real model), not after.
    if args.image is not None:
        query = load_rgb(args.image)
    else:
        check_text_query(args.text)
    if args.k < 1:
        raise FaclipError(f"--k {args.k} is invalid; ask for at least 1 passage")
    transformers.utils.logging.disable_progress_bar()  # the CLI's output is the hits, not loading bars
    retriever = Retriever(args.model, args.vision, args.index, args.docstore)
    hits = retriever.by_image(query, k=args.k) if args.image is not None else retriever.by_text(args.text, k=args.k)
    sys.stdout.write(format_hits(hits, as_json=args.json) + "\n")


def main(argv=None) -> None:
    """CLI entry point (`python -m faclip`, or the `faclip` script): a FaclipError is one line, exit 2."""
    args = build_parser().parse_args(argv)
    run_main(lambda: search_command(args))


if __name__ == "__main__":
    main()
