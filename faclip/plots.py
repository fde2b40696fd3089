"""`faclip plots`: every plot of dvc.yaml, for the workspace or compared across revisions, drawn into one
offline HTML page of inline SVG.

DVC writes each plot as a Vega-Lite spec with its data inlined (`dvc plots show --json`, or
`dvc plots diff --json REV ...` to compare); vl-convert renders the spec to SVG without a browser or
the network (`dvc plots show` itself loads Vega from a CDN, so offline its page stays blank).
"""

import html
import json
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
    return (f'<!doctype html>\n{MARKER}\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            "<style>body{font-family:sans-serif;margin:1.5em;max-width:1100px}"
            "section{margin-bottom:2em}svg{max-width:100%;height:auto}</style>\n"
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
