"""`faclip plots`: every plot of dvc.yaml, for the workspace or compared across revisions, drawn into one
offline HTML page of inline SVG.

DVC writes each plot as a Vega-Lite spec with its data inlined (`dvc plots show --json`, or
`dvc plots diff --json REV ...` to compare); vl-convert renders the spec to SVG without a browser or
the network (`dvc plots show` itself loads Vega from a CDN, so offline its page stays blank).
"""

import html
import json
import subprocess
import sys
from pathlib import Path

from faclip.errors import FaclipError
from faclip.files import write_text

DEFAULT_OUT = Path("plots/index.html")  # ignored by git (.gitignore)


def plot_specs(revs: list[str] = (), repo: str | Path = ".", plot: str | None = None) -> dict[str, list[dict]]:
    """{plot id: [Vega-Lite spec, ...]} from DVC: the workspace, or the workspace against each of `revs`."""
    command = ["plots", "diff", *revs] if revs else ["plots", "show"]
    command += ["--json"] + ([plot] if plot else [])
    try:
        done = subprocess.run([sys.executable, "-m", "dvc", *command], cwd=repo, capture_output=True, text=True)
    except OSError as err:
        raise FaclipError(f"cannot run dvc ({err}); pip install -r requirements.txt") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise FaclipError(f"`dvc {' '.join(command)}` failed: {last}")
    shown = json.loads(done.stdout or "{}")
    specs = {name: [entry["content"] for entry in entries if isinstance(entry.get("content"), dict)]
             for name, entries in shown.get("data", {}).items()}
    specs = {name: contents for name, contents in specs.items() if contents}
    if not specs:
        problems = "; ".join(str(error) for error in shown.get("errors", [])[:3])
        raise FaclipError("DVC found no plot data" + (f" ({problems})" if problems else "")
                          + "; run `dvc repro` first (or name revisions that have the plots)")
    return specs


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
        figures = "\n".join(to_svg(spec) for spec in contents)
        sections.append(f'<section id="{html.escape(name)}">\n<h2>{html.escape(name)}</h2>\n{figures}\n</section>')
    body = "\n".join(sections)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            "<style>body{font-family:sans-serif;margin:1.5em;max-width:1100px}"
            "section{margin-bottom:2em}svg{max-width:100%;height:auto}</style>\n"
            f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def write_plots_page(revs: list[str] = (), out: str | Path | None = None, force: bool = False,
                     repo: str | Path = ".") -> Path:
    """Render every plot DVC knows into `out` (default plots/index.html); a file under docs/ is kept unless
    `force` (docs/ holds the README's committed pictures)."""
    out = Path(repo) / DEFAULT_OUT if out is None else Path(out)
    if out.exists() and "docs" in out.resolve().relative_to(out.resolve().anchor).parts and not force:
        raise FaclipError(f"{out} exists under docs/ (a committed picture); give another --out, or --force")
    specs = plot_specs(revs, repo)
    title = "faclip plots: " + (" vs ".join(["workspace", *revs]) if revs else "workspace")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, plots_page(specs, title))
    return out
