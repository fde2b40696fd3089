"""`faclip plots`: every plot of dvc.yaml in one offline HTML page of inline SVG, written where git ignores
it, never over a committed picture in docs/ unless asked."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from faclip.errors import FaclipError

PLOT_IDS = [next(iter(plot)) for plot in yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["plots"]]


def test_the_page_draws_every_plot_of_dvc_yaml_offline(tmp_path):
    # The workspace's plot files are committed (metrics/train/plots, metrics/eval_plots): no pipeline run needed.
    out = tmp_path / "page.html"
    result = subprocess.run([sys.executable, "-m", "faclip", "plots", "--out", str(out)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    page = out.read_text(encoding="utf-8")
    for plot_id in PLOT_IDS:
        section = page.split(f'<section id="{plot_id}">', 1)
        assert len(section) == 2, f"no section for {plot_id!r}"
        figure = section[1].split("</section>", 1)[0]
        assert "<svg" in figure and "<path" in figure, plot_id  # drawn, with marks, inline
    assert page.count("<svg") == len(PLOT_IDS)
    # Offline: no script, nothing loaded from anywhere (the only URLs are SVG's namespaces).
    assert "<script" not in page and "src=" not in page and "<link" not in page
    assert {url for url in page.replace('"', " ").split() if url.startswith(("http://", "https://"))} <= {
        "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


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
