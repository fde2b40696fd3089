"""Render one `dvc plots` plot of a repository to SVG, offline (no browser): the README's pictures.

    python tools/render_plot.py "image-to-passage recall@k, finetuned vs base vs ceiling" docs/recall_at_k.svg

Takes the Vega-Lite spec `dvc plots show --json` writes for the plot (data inlined) and renders it
with vl-convert (in requirements.txt), as `faclip plots` does for every plot. DVC's template colours
lines by revision and dashes them by field; a committed picture shows one revision, so lines are
coloured by field instead. An existing file is overwritten only with --force.
"""

import argparse
from pathlib import Path

from faclip.errors import FaclipError, run_main
from faclip.plots import plot_specs, to_svg


def recolour_by_field(node, fields: list[str], y_title: str) -> None:
    """Colour every encoding by `field` (one colour per plotted column), in place; drop the dashes."""
    if isinstance(node, dict):
        encoding = node.get("encoding")
        if isinstance(encoding, dict):
            encoding.pop("strokeDash", None)
            if "color" in encoding:
                encoding["color"] = {"field": "field", "type": "nominal", "title": "model",
                                     "scale": {"domain": fields}}
            if isinstance(encoding.get("y"), dict):
                encoding["y"]["title"] = y_title
        for value in node.values():
            recolour_by_field(value, fields, y_title)
    elif isinstance(node, list):
        for value in node:
            recolour_by_field(value, fields, y_title)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plot", help="the plot id in dvc.yaml")
    parser.add_argument("out", type=Path, help="the .svg to write")
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--y-title", default="image → passage recall@k")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists (say, a picture in docs/)")
    args = parser.parse_args(argv)
    run_main(lambda: render(args))


def render(args: argparse.Namespace) -> None:
    if args.out.exists() and not args.force:
        raise FaclipError(f"{args.out} exists; add --force to overwrite it, or name another file")
    spec = plot_specs(repo=args.repo, plot=args.plot)[args.plot][0]
    fields = list(dict.fromkeys(row["field"] for row in spec["data"]["values"]))
    recolour_by_field(spec, fields, args.y_title)
    spec["width"], spec["height"] = 380, 240
    args.out.write_text(to_svg(spec), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
