"""`faclip plots`: every plot of dvc.yaml in one offline HTML page of inline SVG, written where git ignores
it, never over a committed picture in docs/ unless asked."""

import html
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from faclip.errors import FaclipError

PLOT_IDS = [next(iter(plot)) for plot in yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["plots"]]


@pytest.fixture(scope="module")
def workspace_page(tmp_path_factory) -> str:
    """`faclip plots` of the workspace, as a user runs it. Its plot files are committed (metrics/train/plots,
    metrics/eval_plots): no pipeline run needed."""
    out = tmp_path_factory.mktemp("plots") / "page.html"
    result = subprocess.run([sys.executable, "-m", "faclip", "plots", "--out", str(out)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out.read_text(encoding="utf-8")


def section(page: str, plot_id: str) -> str:
    """The SVG of one plot in the page."""
    parts = page.split(f'<section id="{html.escape(plot_id)}">', 1)
    assert len(parts) == 2, f"no section for {plot_id!r}"
    return parts[1].split("</section>", 1)[0]


def test_the_page_draws_every_plot_of_dvc_yaml_offline(workspace_page):
    page = workspace_page
    for plot_id in PLOT_IDS:
        figure = section(page, plot_id)
        assert "<svg" in figure and "<path" in figure, plot_id  # drawn, with marks, inline
    assert page.count("<svg") == len(PLOT_IDS)
    # Offline: no script, nothing loaded from anywhere (the only URLs are SVG's namespaces).
    assert "<script" not in page and "src=" not in page and "<link" not in page
    assert {url for url in page.replace('"', " ").split() if url.startswith(("http://", "https://"))} <= {
        "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


# A line of the page's SVG (vega writes one path per series) and its stroke colour and dashes.
LINE = re.compile(r'<path [^>]*aria-roledescription="line mark"[^>]*>')
BAR = re.compile(r'<path aria-label="([^"]*)"[^>]*aria-roledescription="bar" d="M(-?[\d.]+),(-?[\d.]+)h(-?[\d.]+)v(-?[\d.]+)')
SERIES = {"held-out recall during training": ["recall@1", "recall@5"],
          "image-to-passage recall@k, finetuned vs base vs ceiling": ["finetuned", "base", "ceiling"],
          "photo and question to its passage, recall@k": ["photo_only", "question_only", "together", "chance"],
          "photo and question, photo weight on the train split": ["recall@1", "mrr"]}


def strokes(figure: str) -> list[tuple[str, str]]:
    """(stroke colour, dash pattern) of each line drawn."""
    found = []
    for path in LINE.findall(figure):
        colour = re.search(r' stroke="([^"]+)"', path)
        dash = re.search(r' stroke-dasharray="([^"]+)"', path)
        found.append((colour.group(1) if colour else "", dash.group(1) if dash and dash.group(1) != "1,0" else ""))
    return found


def test_the_page_reads_plainly(workspace_page):
    # As wide as the page, a colour per series under its plain name, real axis titles.
    for plot_id in PLOT_IDS:
        figure = section(workspace_page, plot_id)
        assert float(re.search(r'<svg [^>]*width="([\d.]+)"', figure).group(1)) >= 900, plot_id
        assert "::" not in figure and ">y</text>" not in figure and "dvc_inferred" not in figure, plot_id
        assert ">rev</text>" not in figure, plot_id  # one revision: no legend of revisions
    for plot_id, names in SERIES.items():
        figure = section(workspace_page, plot_id)
        lines = strokes(figure)
        assert len({colour for colour, _ in lines}) == len(names) == len(lines), (plot_id, lines)
        assert {dash for _, dash in lines} == {""}, (plot_id, lines)  # told apart by colour, not dashes
        for name in names:
            assert f">{html.escape(name)}</text>" in figure, (plot_id, name)  # the legend names it plainly
    titles = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    for plot in titles:
        (plot_id, definition), = plot.items()
        for label in (definition.get("x_label"), definition.get("y_label")):
            if label:
                assert f">{html.escape(label)}</text>" in section(workspace_page, plot_id), (plot_id, label)


def test_two_revisions_are_told_apart_and_their_bars_stand_side_by_side():
    # The workspace against HEAD (the same numbers here): every series keeps its colour, each revision its dash;
    # the per-dish bars of the two revisions side by side, each readable, from zero.
    from faclip.plots import plot_specs, plots_page

    page = plots_page(plot_specs(["HEAD"], REPO), "test")
    lines = strokes(section(page, "held-out recall during training"))
    assert len({colour for colour, _ in lines}) == 2 and len({dash for _, dash in lines}) == 2 and len(lines) == 4
    assert ">revision</text>" in section(page, "held-out recall during training")
    bars = [(label, float(x), float(y), float(width), float(height))
            for label, x, y, width, height in BAR.findall(section(page, "per-dish recall@1"))]
    by_dish: dict[str, list[tuple[float, float]]] = {}
    for label, x, y, width, height in bars:
        assert x == 0 and width >= 0 and height >= 10, label  # from zero, at least 10 px thick
        dish = next(part.split(": ", 1)[1] for part in label.split("; ") if part.startswith("dish: "))
        by_dish.setdefault(dish, []).append((y, y + height))
    assert by_dish and all(len(spans) == 2 for spans in by_dish.values())
    for dish, ((top_a, bottom_a), (top_b, bottom_b)) in by_dish.items():
        assert bottom_a <= top_b or bottom_b <= top_a, dish  # side by side, not over each other


SPEC = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "mark": "line",
        "data": {"values": [{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.0}]},
        "encoding": {"x": {"field": "step", "type": "quantitative"}, "y": {"field": "loss", "type": "quantitative"}}}


def test_the_default_page_is_ignored_by_git_and_docs_are_kept(tmp_path, monkeypatch):
    import faclip.plots

    monkeypatch.setattr(faclip.plots, "plot_specs", lambda revs, repo: {"loss": [SPEC]})
    out = faclip.plots.write_plots_page(repo=tmp_path)
    assert out == tmp_path / "plots" / "index.html" and "<svg" in out.read_text(encoding="utf-8")
    ignored = subprocess.run(["git", "check-ignore", "-q", "plots/index.html"], cwd=REPO)
    assert ignored.returncode == 0, "plots/ must be in .gitignore"
    picture = tmp_path / "docs" / "plots.html"
    picture.parent.mkdir()
    picture.write_text("committed", encoding="utf-8")
    with pytest.raises(FaclipError, match="--force"):
        faclip.plots.write_plots_page(out=picture, repo=tmp_path)
    assert picture.read_text(encoding="utf-8") == "committed"
    faclip.plots.write_plots_page(out=picture, force=True, repo=tmp_path)
    assert "<svg" in picture.read_text(encoding="utf-8")


@pytest.fixture
def no_dvc(monkeypatch):
    """faclip.plots with DVC's answer stubbed: one plot of SPEC; `dvc_ran` lists the revisions asked for."""
    import faclip.plots

    dvc_ran = []
    monkeypatch.setattr(faclip.plots, "plot_specs", lambda revs, repo: dvc_ran.append(revs) or {"loss": [SPEC]})
    return faclip.plots, dvc_ran


def test_a_page_it_wrote_is_replaced_and_any_other_file_only_with_force(tmp_path, no_dvc):
    plots, _ = no_dvc
    page = plots.write_plots_page(out=tmp_path / "page.html")
    plots.write_plots_page(out=page)  # its own page: replaced without --force
    for name, content in [("notes.html", "<html>mine</html>"), ("README.md", "# readme"), ("picture.svg", "<svg/>"),
                          ("data.json", "{}"), ("empty.html", "")]:
        other = tmp_path / name
        other.write_text(content, encoding="utf-8")
        with pytest.raises(FaclipError, match="is not a page `faclip plots` wrote; give another --out, or --force"):
            plots.write_plots_page(out=other)
        assert other.read_text(encoding="utf-8") == content
    plots.write_plots_page(out=tmp_path / "notes.html", force=True)
    assert plots.MARKER in (tmp_path / "notes.html").read_text(encoding="utf-8")


def test_out_is_resolved_before_it_is_checked(tmp_path, no_dvc):
    plots, _ = no_dvc
    picture = tmp_path / "docs" / "recall_at_k.svg"
    picture.parent.mkdir()
    picture.write_text("<svg>committed</svg>", encoding="utf-8")
    link = tmp_path / "link.html"
    link.symlink_to(picture)
    for out in [tmp_path / "docs" / "x" / ".." / "recall_at_k.svg", tmp_path / "docs" / "." / "recall_at_k.svg",
                tmp_path / "other" / ".." / "docs" / "recall_at_k.svg", link]:
        with pytest.raises(FaclipError, match="is not a page `faclip plots` wrote"):
            plots.write_plots_page(out=out)
        assert picture.read_text(encoding="utf-8") == "<svg>committed</svg>" and link.is_symlink()
    assert not (tmp_path / "docs" / "x").exists() and not (tmp_path / "other").exists()  # nothing made on the way


def test_out_is_never_a_folder_a_fifo_or_a_device(tmp_path, no_dvc):
    plots, dvc_ran = no_dvc
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    for out, words in [(tmp_path / "folder", "is a directory"), (tmp_path, "is a directory"),
                       (fifo, "is not a regular file"), (fifo, "is not a regular file")]:
        with pytest.raises(FaclipError, match=words):
            plots.write_plots_page(out=out, force=True)  # not even with --force
    assert fifo.is_fifo() and dvc_ran == []  # refused before DVC ran
    for device in ["/dev/null", "/dev/full", "/dev/zero"]:  # checked only: a regression must not replace one
        with pytest.raises(FaclipError, match="is not a regular file"):
            plots.check_out(device, force=True)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(FaclipError, match="cannot"):  # a file where a folder should be: one line, no traceback
        plots.write_plots_page(out=tmp_path / "file" / "page.html")


@pytest.mark.parametrize("rev", ["--help", "--open", "-o", "-f", "--targets=x", "-", "", "HEAD\nmain", "HEAD main",
                                 "a\tb", "HEAD\x1b[31m", "x" * 201])
def test_a_revision_is_never_handed_to_dvc_as_an_option(monkeypatch, rev):
    import faclip.plots

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"dvc ran with {args}")

    monkeypatch.setattr(faclip.plots.subprocess, "run", no_subprocess)
    with pytest.raises(FaclipError, match="is not a revision") as err:
        faclip.plots.plot_specs(["HEAD", rev])
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def test_revisions_reach_dvc_after_a_double_dash(monkeypatch):
    import faclip.plots

    ran = []
    monkeypatch.setattr(faclip.plots.subprocess, "run", lambda command, **kwargs: ran.append(command) or
                        subprocess.CompletedProcess(command, 0, stdout='{"data": {"loss": [{"content": {}}]}}'))
    faclip.plots.plot_specs(["HEAD~1", "main"], plot="loss")
    assert ran[0][ran[0].index("--"):] == ["--", "HEAD~1", "main"]
    monkeypatch.setattr(faclip.plots.subprocess, "run", lambda command, **kwargs:
                        subprocess.CompletedProcess(command, 0, stdout="usage: dvc plots diff ..."))
    with pytest.raises(FaclipError, match="printed no plot data"):  # not a JSONDecodeError traceback
        faclip.plots.plot_specs(["HEAD"])


def test_render_plot_never_overwrites_a_picture_unasked(tmp_path):
    picture = tmp_path / "recall_at_k.svg"
    picture.write_text("committed", encoding="utf-8")
    result = subprocess.run([sys.executable, "tools/render_plot.py", "any plot", str(picture)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--force" in result.stderr, result.stderr
    assert picture.read_text(encoding="utf-8") == "committed"
