"""Render one `dvc plots` plot of a repository to SVG, offline (no browser): the README's pictures.

    python tools/render_plot.py "image-to-passage recall@k, finetuned vs base vs ceiling" docs/recall_at_k.svg

Takes the Vega-Lite spec `dvc plots show --json` writes for the plot (data inlined) and renders it
with vl-convert (`pip install vl-convert-python`). DVC's template colours lines by revision and dashes
them by field; a committed picture shows one revision, so lines are coloured by field instead.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path


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
    args = parser.parse_args(argv)
    import vl_convert

    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json", args.plot], cwd=args.repo,
                           capture_output=True, text=True, check=True).stdout
    spec = json.loads(shown)["data"][args.plot][0]["content"]
    fields = list(dict.fromkeys(row["field"] for row in spec["data"]["values"]))
    recolour_by_field(spec, fields, args.y_title)
    spec["width"], spec["height"] = 380, 240
    args.out.write_text(vl_convert.vegalite_to_svg(spec), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
