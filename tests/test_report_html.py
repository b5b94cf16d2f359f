"""Issue 12: the HTML pages render the Markdown emphasis they are given, never literal ``**``."""

from __future__ import annotations

import featcache
from featcache.core.text import Code, Link, Strong
from featcache.report.render import html_inline, md_inline
from tests.conftest import make_images


def test_inline_renders_bold_code_and_links_and_still_escapes():
    content = ["Head ", Strong("svm"), " on ", Code("abc"), " ", Link("run", "x/report.html")]
    assert html_inline(content) == 'Head <strong>svm</strong> on <code>abc</code> <a href="x/report.html">run</a>'
    assert md_inline(content) == "Head **svm** on `abc` [run](x/report.html)"
    assert html_inline(Strong("<b>")) == "<strong>&lt;b&gt;</strong>"
    assert html_inline("2 ** 3 and a*b") == "2 ** 3 and a*b"  # plain text: never markup
    assert md_inline("2 ** 3 and a*b") == "2 \\*\\* 3 and a\\*b"  # escaped, so a Markdown viewer shows it as written


def test_run_report_and_sweep_leaderboard_html_show_bold_not_asterisks(tmp_path):
    data = make_images(tmp_path / "data", classes=("a", "b"), per_class=6, size=(40, 40))
    out = featcache.sweep(data=data, models=["resnet18@none"], heads=["logreg"], params=["logreg.C=1,10"], image_size=32,
                          cv=2, out=tmp_path / "sweep", cache_dir=tmp_path / "cache", progress_bar=False)
    board = (out / "leaderboard.html").read_text()
    assert "**" not in board and "<td><strong>best</strong></td>" in board
    assert "**best**" in (out / "leaderboard.md").read_text()  # the Markdown keeps its own syntax
    reports = list(out.glob("runs/*/report.html"))
    assert len(reports) == 1
    page = reports[0].read_text()
    assert "**" not in page and "Head <strong>logreg</strong>" in page
