"""`faclip search --image PHOTO | --text "…" [--k 5] [--json]`: passages for a photo, a text, or both
(a question about the photo: `--image PHOTO --text "…"`).

`faclip serve [--host 127.0.0.1] [--port 8000]`: the same search as a JSON service and a web page.
`faclip plots [--rev REV ...]`: every plot of dvc.yaml as one offline HTML page.

Only argparse and faclip's light modules load until a command runs, so `--help` and a bad argument
answer at once; torch, transformers, FAISS and pandas load with the command that needs them.
"""

import argparse
import math
import os
import socket
import sys

# Idle OpenMP threads sleep instead of spinning (BENCHMARKS.md): read when torch loads, so set before it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from faclip.artifacts import DEFAULT_DOCSTORE, DEFAULT_INDEX, DEFAULT_MODEL, DEFAULT_VISION, LEXICAL_DIR_NAME
from faclip.errors import FaclipError, outputs_hint, run_main
from faclip.text import MAX_QUERY_CHARS, query_text


class Parser(argparse.ArgumentParser):
    """argparse whose errors are faclip's: one line (control characters escaped), exit 2; the usage is in --help."""

    def error(self, message: str):
        message = "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)
        print(f"faclip error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="faclip", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    find = commands.add_parser("search", help="retrieve passages for a food photo, a text, or a question about a photo")
    find.add_argument("--image", help="a food photo (JPEG/PNG/WebP)")
    find.add_argument("--text", help="a text query, e.g. a dish name; with --image, a question about the photo")
    find.add_argument("--photo-weight", type=float, default=None, metavar="W",
                      help="with --image and --text: the photo's share of the score, 0..1 "
                           "(default vqa.photo_weight's default; see README)")
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
    serve.add_argument("--max-batch-tokens", type=int, default=2048, metavar="T",
                       help="at most T padded tokens in one forward pass of texts (default 2048)")
    serve.add_argument("--max-wait-ms", type=float, default=0.0, metavar="MS",
                       help="how long a batch waits for more queries once the model is free (default 0: it "
                            "takes what is waiting)")
    serve.add_argument("--max-queue-wait", type=float, default=2.0, metavar="S",
                       help="refuse a query at once (503, Retry-After) when those already admitted need more than "
                            "S seconds of encoding (default 2)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let a web page on ORIGIN (e.g. http://localhost:3000) call the API; repeatable")
    add_artifact_arguments(serve)
    plots = commands.add_parser("plots", help="draw every plot of dvc.yaml into one offline HTML page (inline SVG)")
    plots.add_argument("--rev", action="append", default=[], metavar="REV",
                       help="compare the workspace with a commit, branch, tag or experiment name; repeatable "
                            "(default: the workspace alone)")
    plots.add_argument("--out", default=None, metavar="HTML",
                       help="the page to write (default plots/index.html); an existing file is replaced only if "
                            "`faclip plots` wrote it, or with --force")
    plots.add_argument("--force", action="store_true",
                       help="replace --out even if `faclip plots` did not write it (never a folder or device)")
    return parser


def add_artifact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"text model folder (default {DEFAULT_MODEL})")
    parser.add_argument("--vision", default=DEFAULT_VISION, help=f"vision model folder (default {DEFAULT_VISION})")
    parser.add_argument("--index", default=DEFAULT_INDEX, help=f"index folder (default {DEFAULT_INDEX})")
    parser.add_argument("--lexical", default=None, help=f"BM25 index folder (default: {LEXICAL_DIR_NAME}/ beside --index)")
    parser.add_argument("--docstore", default=DEFAULT_DOCSTORE, help=f"docstore (default {DEFAULT_DOCSTORE})")


# Every number the CLI takes: (option, lowest valid value, highest or None, what to give instead).
NUMBERS = {
    "k": ("--k", 1, None, "ask for at least 1 passage"),
    "per_dish": ("--per-dish", 1, None, "keep at least 1 passage per dish, or leave it out"),
    "photo_weight": ("--photo-weight", 0, 1, "give a number from 0 (the question alone) to 1 (the photo alone), "
                                            "e.g. 0.5"),
    "port": ("--port", 1, 65535, "give a TCP port from 1 to 65535, e.g. 8000"),
    "threads": ("--threads", 1, None, "give at least 1 thread, or leave it out for all cores"),
    "max_upload_mb": ("--max-upload-mb", 1e-6, None, "give a positive size in MB, e.g. 10"),
    "max_batch": ("--max-batch", 1, None, "give 1 (no batching) or more, e.g. 32"),
    "max_wait_ms": ("--max-wait-ms", 0, 1000, "give 0 to 1000 ms, e.g. 0"),
    "max_batch_tokens": ("--max-batch-tokens", 1, None, "give at least 1 token, e.g. 2048"),
    "max_queue_wait": ("--max-queue-wait", 1e-3, None, "give a positive number of seconds, e.g. 2"),
}


def check_numbers(args: argparse.Namespace) -> None:
    """A number out of range (or nan / inf) is one line before anything heavy loads."""
    for name, (option, low, high, fix) in NUMBERS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            raise FaclipError(f"{option} {value:g} is invalid; {fix}")


def check_artifacts(args: argparse.Namespace) -> None:
    """Every file search and serve read exists: else one line naming each missing one and the whole fix."""
    lexical = args.lexical or os.path.join(os.path.dirname(args.index.rstrip("/")) or ".", LEXICAL_DIR_NAME)
    given = {"--model": args.model, "--vision": args.vision, "--index": args.index, "--lexical": lexical,
             "--docstore": args.docstore}
    missing = [f"{option} {path}" for option, path in given.items() if not os.path.exists(path)]
    if missing:
        raise FaclipError(f"not found: {', '.join(missing)}; {outputs_hint()}")


def check_search(args: argparse.Namespace) -> None:
    """The query and the files, before the models load (seconds for a real model)."""
    if args.image is None and args.text is None:
        raise FaclipError('give --image PHOTO, --text "…", or both (a question about the photo)')
    if args.photo_weight is not None and (args.image is None or args.text is None):
        raise FaclipError("--photo-weight weighs a photo against a question; give both --image and --text")
    if args.text is not None:
        query_text(args.text, MAX_QUERY_CHARS)
    if args.image is not None:
        from faclip.images import load_rgb  # Pillow only

        load_rgb(args.image)
    check_artifacts(args)


def check_serve(args: argparse.Namespace) -> None:
    """What `serve` would stop on once uvicorn has started (a line among its own): said here, in one line."""
    if "*" in args.cors_origin:
        raise FaclipError("--cors-origin '*' would let any web page query this server; name the origins instead")
    check_artifacts(args)
    try:  # the address: a bad host, a port in use or one that needs root
        family, kind, proto, _, address = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except (OSError, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise FaclipError(f"cannot listen on {args.host!r} port {args.port} ({reason}); give another --port, "
                          "or a --host of this machine (e.g. 127.0.0.1)") from None


def search_command(args: argparse.Namespace) -> None:
    import transformers

    from faclip.search import Retriever, format_hits

    ask_options = {} if args.photo_weight is None else {"photo_weight": args.photo_weight}
    transformers.utils.logging.disable_progress_bar()  # the CLI's output is the hits, not loading bars
    retriever = Retriever(args.model, args.vision, args.index, args.docstore, args.lexical)
    # The photo goes in by path, so the Retriever decodes it as `embed` decodes (a JPEG at reduced size).
    if args.image is not None and args.text is not None:
        hits = retriever.ask(args.image, args.text, k=args.k, per_dish=args.per_dish, **ask_options)
    elif args.image is not None:
        hits = retriever.by_image(args.image, k=args.k, per_dish=args.per_dish)
    else:
        hits = retriever.by_text(args.text, k=args.k, per_dish=args.per_dish)
    sys.stdout.write(format_hits(hits, as_json=args.json) + "\n")


def serve_command(args: argparse.Namespace) -> None:
    import transformers

    from faclip.serve import serve  # FastAPI and uvicorn load only for this command

    transformers.utils.logging.disable_progress_bar()
    serve(model_dir=args.model, vision_dir=args.vision, index_dir=args.index, docstore_path=args.docstore,
          lexical_dir=args.lexical,
          host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, threads=args.threads,
          cors_origins=tuple(args.cors_origin), max_batch=args.max_batch, max_batch_tokens=args.max_batch_tokens,
          max_wait_ms=args.max_wait_ms, max_queue_wait=args.max_queue_wait)


def plots_command(args: argparse.Namespace) -> None:
    from faclip.plots import write_plots_page

    out = write_plots_page(revs=args.rev, out=args.out, force=args.force)
    print(f"wrote {out}")


COMMANDS = {"search": search_command, "serve": serve_command, "plots": plots_command}
CHECKS = {"search": check_search, "serve": check_serve}  # no heavy import: instant (`plots` checks its own first)


def main(argv=None) -> None:
    """CLI entry point (`faclip`, or `python -m faclip`): a FaclipError is one line, exit 2."""
    args = build_parser().parse_args(argv)

    def command() -> None:
        check_numbers(args)
        CHECKS.get(args.command, lambda _: None)(args)
        COMMANDS[args.command](args)

    run_main(command)


if __name__ == "__main__":
    main()
