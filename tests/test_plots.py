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


def test_render_plot_never_overwrites_a_picture_unasked(tmp_path):
    picture = tmp_path / "recall_at_k.svg"
    picture.write_text("committed", encoding="utf-8")
    result = subprocess.run([sys.executable, "tools/render_plot.py", "any plot", str(picture)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--force" in result.stderr, result.stderr
    assert picture.read_text(encoding="utf-8") == "committed"
