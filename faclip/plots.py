"""`faclip plots`: every plot of dvc.yaml, for the workspace or compared across revisions, drawn into one
offline HTML page of inline SVG.

DVC writes each plot as a Vega-Lite spec with its data inlined (`dvc plots show --json`, or
`dvc plots diff --json REV ...` to compare); vl-convert renders the spec to SVG without a browser or
the network (`dvc plots show` itself loads Vega from a CDN, so offline its page stays blank). DVC's line
and bar templates are redrawn plainly from the same data (`readable_spec`): a colour per series, plain
names, dvc.yaml's axis labels, as wide as the page, compared revisions as dashes or side-by-side bars.
"""

import html
import json
import math
import stat
import subprocess
import sys
from pathlib import Path

from faclip.errors import FaclipError
from faclip.files import write_text

DEFAULT_OUT = Path("plots/index.html")  # ignored by git (.gitignore)
# In every page written, so a later run knows it may replace that file; any other file needs --force.
MARKER = "<!-- written by faclip plots -->"
MAX_REV_CHARS = 200


def check_revs(revs: list[str]) -> None:
    """A revision is a name (a commit, branch, tag or experiment), never an option for dvc: one line if not."""
    for rev in revs:
        if not rev or rev.startswith("-") or len(rev) > MAX_REV_CHARS or any(not c.isprintable() or c.isspace()
                                                                            for c in rev):
            shown = repr(rev[:60]) + ("..." if len(rev) > 60 else "")
            raise FaclipError(f"--rev {shown} is not a revision; give a commit, branch, tag or experiment name, "
                              "e.g. --rev HEAD~1")


def check_out(out: str | Path, force: bool = False) -> Path:
    """Where the page goes, resolved (no `..` or symlink leads elsewhere): a new file, or a page `faclip plots`
    wrote; any other regular file only with `force`; never a directory, a device or a FIFO."""
    path = Path(out).resolve()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as err:
        raise FaclipError(f"cannot use --out {out} ({err.strerror}); give another file, e.g. {DEFAULT_OUT}") from None
    if stat.S_ISDIR(mode):
        raise FaclipError(f"--out {out} is a directory; give a file in it, e.g. {Path(out) / 'plots.html'}")
    if not stat.S_ISREG(mode):
        raise FaclipError(f"--out {out} is not a regular file (a device, FIFO or socket); give a file, e.g. {DEFAULT_OUT}")
    if not force and not _written_here(path):
        raise FaclipError(f"--out {out} exists and is not a page `faclip plots` wrote; give another --out, or --force "
                          "to replace it")
    return path


def _written_here(path: Path) -> bool:
    try:
        with open(path, "rb") as page:
            return MARKER.encode() in page.read(1024)
    except OSError:
        return False


def plot_specs(revs: list[str] = (), repo: str | Path = ".", plot: str | None = None) -> dict[str, list[dict]]:
    """{plot id: [Vega-Lite spec, ...]} from DVC: the workspace, or the workspace against each of `revs`."""
    check_revs(revs)
    # Names after `--`: dvc never reads one as an option. Targets of `diff` are given with --targets.
    if revs:
        command = ["plots", "diff", "--json", *(["--targets", plot] if plot else []), "--", *revs]
    else:
        command = ["plots", "show", "--json", *(["--", plot] if plot else [])]
    try:
        done = subprocess.run([sys.executable, "-m", "dvc", *command], cwd=repo, capture_output=True, text=True)
    except OSError as err:
        raise FaclipError(f"cannot run dvc ({err}); pip install -r requirements.txt") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise FaclipError(f"`dvc {' '.join(command)}` failed: {last}")
    try:
        shown = json.loads(done.stdout or "{}")
    except ValueError:
        raise FaclipError(f"`dvc {' '.join(command)}` printed no plot data; check that dvc runs (dvc doctor)") from None
    specs = {name: [entry["content"] for entry in entries if isinstance(entry.get("content"), dict)]
             for name, entries in shown.get("data", {}).items()}
    specs = {name: contents for name, contents in specs.items() if contents}
    if not specs:
        problems = "; ".join(str(error) for error in shown.get("errors", [])[:3])
        raise FaclipError("DVC found no plot data" + (f" ({problems})" if problems else "")
                          + "; run `dvc repro` first (or name revisions that have the plots)")
    return specs


WIDTH = 960  # px of the plotting area; the page scales each SVG to its own width
HEIGHT = 300
BAR_STEP = 14  # px per bar
DASHES = [[1, 0], [9, 5], [2, 3], [12, 4, 2, 4]]  # compared revisions' lines: solid (the first), then dashed
STYLE = {"axis": {"labelFontSize": 12, "titleFontSize": 13, "titleFontWeight": "normal", "gridColor": "#e6e6e6"},
         "legend": {"orient": "top", "labelFontSize": 13, "titleFontSize": 13, "titleFontWeight": "normal",
                    "symbolStrokeWidth": 3, "symbolSize": 200},
         "view": {"stroke": None}, "font": "sans-serif"}


def readable_spec(spec: dict) -> dict | None:
    """One of DVC's plots (its Vega-Lite spec, data inlined) drawn plain: a colour per series under its plain
    name (`recall@1`, not `recall@1.tsv::recall@1`), DVC's axis titles (dvc.yaml's x_label / y_label, not `y`),
    as wide as the page; revisions compared as dashed lines (one series: a colour each) or side-by-side bars.
    None for a spec it does not know (a custom template): that one is drawn as DVC wrote it."""
    values = spec.get("data", {}).get("values")
    x, y = _axis(spec, "x"), _axis(spec, "y")
    if not isinstance(values, list) or not values or x is None or y is None:
        return None
    revisions = list(dict.fromkeys(str(row.get("rev", "workspace")) for row in values))
    marks = _marks(spec)
    if marks == {"bar"}:
        return _bars(values, x, y, revisions)
    if "line" in marks and not marks & {"bar", "rect"}:  # DVC's linear / simple / smooth templates
        return _lines(values, x, y, revisions)
    return None


def _lines(values: list[dict], x: dict, y: dict, revisions: list[str]) -> dict:
    def series(row: dict) -> str:  # DVC's name for one plotted column: "file::column", a column, or the y field
        return str(row.get("filename::field") or row.get("field") or y["field"]).rsplit("::", 1)[-1]

    rows = [{"x": _number(row.get(x["field"])), "y": _number(row.get(y["field"])), "series": series(row),
             "revision": str(row.get("rev", "workspace"))} for row in values]
    names = list(dict.fromkeys(row["series"] for row in rows))
    colour = "series" if len(names) > 1 or len(revisions) == 1 else "revision"  # one series: a colour per revision
    domain = names if colour == "series" else revisions
    encoding = {
        "x": {"field": "x", "type": "quantitative", "title": x["title"]},
        "y": {"field": "y", "type": "quantitative", "title": y["title"], "scale": {"zero": False}},
        "color": {"field": colour, "type": "nominal", "scale": {"domain": domain}, "sort": domain,
                  "title": "revision" if colour == "revision" else None, "legend": None if len(domain) == 1 else {}},
    }
    if colour == "series" and len(revisions) > 1:
        encoding["strokeDash"] = {"field": "revision", "type": "nominal", "sort": revisions, "title": "revision",
                                  "scale": {"domain": revisions, "range": DASHES},
                                  "legend": {"symbolStrokeColor": "#555", "symbolFillColor": "#555"}}
    xs = {row["x"] for row in rows if row["x"] is not None}
    if xs and all(value.is_integer() for value in xs):  # k, a step: whole ticks only
        encoding["x"]["axis"] = {"format": "d", "tickMinStep": 1}
    config = {**STYLE, "legend": {**STYLE["legend"], "symbolType": "stroke"}}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": rows},
            "mark": {"type": "line", "point": len(xs) <= 30, "strokeWidth": 2.5},  # points on short lines only
            "encoding": encoding, "width": WIDTH, "height": HEIGHT, "config": config}


def _bars(values: list[dict], x: dict, y: dict, revisions: list[str]) -> dict:
    # DVC's bar_horizontal: x the number, y the category; compared revisions side by side within a category.
    rows = [{"category": str(row.get(y["field"])), "value": _number(row.get(x["field"])),
             "revision": str(row.get("rev", "workspace"))} for row in values]
    categories = list(dict.fromkeys(row["category"] for row in rows))
    encoding = {
        "y": {"field": "category", "type": "nominal", "title": y["title"], "sort": categories},
        "x": {"field": "value", "type": "quantitative", "title": x["title"]},
        "color": {"field": "revision", "type": "nominal", "scale": {"domain": revisions}, "sort": revisions,
                  "title": "revision", "legend": None if len(revisions) == 1 else {}},
    }
    if len(revisions) > 1:
        encoding["yOffset"] = {"field": "revision", "type": "nominal", "sort": revisions}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": rows},
            "mark": {"type": "bar"}, "encoding": encoding, "width": WIDTH,
            "height": {"step": BAR_STEP}, "config": STYLE}  # a step per bar: revisions side by side


def _axis(node, name: str) -> dict | None:
    """The first field DVC's spec puts on axis `name` and its title: {"field", "title"}, or None."""
    if isinstance(node, dict):
        channel = node.get("encoding", {}).get(name) if isinstance(node.get("encoding"), dict) else None
        if isinstance(channel, dict) and isinstance(channel.get("field"), str) and "aggregate" not in channel:
            return {"field": channel["field"], "title": str(channel.get("title") or channel["field"])}
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    return next((found for child in children if (found := _axis(child, name)) is not None), None)


def _marks(node) -> set[str]:
    """Every mark type in a (layered) spec."""
    if isinstance(node, list):
        return set().union(*map(_marks, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    mark = node.get("mark")
    found = {mark.get("type") if isinstance(mark, dict) else mark} if mark else set()
    return found.union(*(_marks(value) for key, value in node.items() if key in ("layer", "spec")))


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def to_svg(spec: dict) -> str:
    """One Vega-Lite spec as an SVG document (vl-convert: offline, no browser)."""
    try:
        import vl_convert
    except ImportError:
        raise FaclipError("vl-convert is not installed; pip install -r requirements.txt") from None
    return vl_convert.vegalite_to_svg(spec)


def plots_page(specs: dict[str, list[dict]], title: str) -> str:
    """A self-contained HTML page: a heading and the inline SVG of each plot (no script, nothing fetched)."""
    sections = []
    for name, contents in specs.items():
        figures = "\n".join(to_svg(readable_spec(spec) or spec) for spec in contents)
        sections.append(f'<section id="{html.escape(name)}">\n<h2>{html.escape(name)}</h2>\n{figures}\n</section>')
    body = "\n".join(sections)
    return (f'<!doctype html>\n{MARKER}\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            "<style>body{font-family:sans-serif;margin:1.5em auto;padding:0 1.5em;max-width:1100px}"
            "h2{font-size:1.15em;font-weight:normal;margin:0 0 .4em}section{margin-bottom:2.5em}"
            "svg{width:100%;height:auto}</style>\n"
            f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def write_plots_page(revs: list[str] = (), out: str | Path | None = None, force: bool = False,
                     repo: str | Path = ".") -> Path:
    """Render every plot DVC knows into `out` (default plots/index.html); an existing file that is not a page
    this wrote is replaced only with `force` (docs/ holds the README's committed pictures)."""
    check_revs(revs)
    out = check_out(Path(repo) / DEFAULT_OUT if out is None else out, force)
    specs = plot_specs(revs, repo)
    title = "faclip plots: " + (" vs ".join(["workspace", *revs]) if revs else "workspace")
    page = plots_page(specs, title)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, page)
    except OSError as err:
        raise FaclipError(f"cannot write {out} ({err.strerror or err}); give another --out") from None
    return out
