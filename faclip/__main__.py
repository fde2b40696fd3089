"""`python -m faclip search --image PHOTO | --text "…" [--k 5] [--json]`: passages for a photo or a text.

`python -m faclip serve [--host 127.0.0.1] [--port 8000]`: the same search as a JSON service and a web page.
"""

import argparse
import os
import sys

# Idle OpenMP threads sleep instead of spinning (BENCHMARKS.md): read when torch loads, so set before it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
    find.add_argument("--per-dish", type=int, default=None, metavar="N",
                      help="keep at most N passages per dish (food_id), e.g. 1 for the top k dishes")
    find.add_argument("--json", action="store_true", help="print the hits as JSON")
    add_artifact_arguments(find)
    serve = commands.add_parser("serve", help="serve search as a JSON API and a web page (FastAPI on uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo accepted, in MB (default 10)")
    serve.add_argument("--threads", type=int, default=None,
                       help="torch threads for encoding queries (default: the CPU cores this process may use)")
    serve.add_argument("--max-batch", type=int, default=32, metavar="N",
                       help="encode up to N concurrent queries in one forward pass (default 32; 1: no batching)")
    serve.add_argument("--max-wait-ms", type=float, default=2.0, metavar="MS",
                       help="how long a batch waits for more queries once the model is free (default 2 ms)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let a web page on ORIGIN (e.g. http://localhost:3000) call the API; repeatable")
    add_artifact_arguments(serve)
    return parser


def add_artifact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"text model folder (default {DEFAULT_MODEL})")
    parser.add_argument("--vision", default=DEFAULT_VISION, help=f"vision model folder (default {DEFAULT_VISION})")
    parser.add_argument("--index", default=DEFAULT_INDEX, help=f"index folder (default {DEFAULT_INDEX})")
    parser.add_argument("--docstore", default=DEFAULT_DOCSTORE, help=f"docstore (default {DEFAULT_DOCSTORE})")


def search_command(args: argparse.Namespace) -> None:
    # A bad query fails before the models load (seconds for a real model), not after.
    if args.image is not None:
        load_rgb(args.image)
    else:
        check_text_query(args.text)
    if args.k < 1:
        raise FaclipError(f"--k {args.k} is invalid; ask for at least 1 passage")
    if args.per_dish is not None and args.per_dish < 1:
        raise FaclipError(f"--per-dish {args.per_dish} is invalid; keep at least 1 passage per dish, or leave it out")
    transformers.utils.logging.disable_progress_bar()  # the CLI's output is the hits, not loading bars
    retriever = Retriever(args.model, args.vision, args.index, args.docstore)
    # The photo goes in by path, so the Retriever decodes it as `embed` decodes (a JPEG at reduced size).
    if args.image is not None:
        hits = retriever.by_image(args.image, k=args.k, per_dish=args.per_dish)
    else:
        hits = retriever.by_text(args.text, k=args.k, per_dish=args.per_dish)
    sys.stdout.write(format_hits(hits, as_json=args.json) + "\n")


def serve_command(args: argparse.Namespace) -> None:
    from faclip.serve import serve  # FastAPI and uvicorn load only for this command

    transformers.utils.logging.disable_progress_bar()
    serve(model_dir=args.model, vision_dir=args.vision, index_dir=args.index, docstore_path=args.docstore,
          host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, threads=args.threads,
          cors_origins=tuple(args.cors_origin), max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)


def main(argv=None) -> None:
    """CLI entry point (`python -m faclip`, or the `faclip` script): a FaclipError is one line, exit 2."""
    args = build_parser().parse_args(argv)
    command = {"search": search_command, "serve": serve_command}[args.command]
    run_main(lambda: command(args))


if __name__ == "__main__":
    main()
