"""Issue 15: the fit report, the sweep leaderboard and the audit page, opened in a real browser.

Headless Chromium (Debian's package) loads each page from disk as a person would, and the test
checks that every image decodes (``naturalWidth > 0``), that no link points at a missing file, and
that the page's text carries the headline numbers. A full-page screenshot of each is saved in the
test's folder, and also in ``$FEATCACHE_SCREENSHOTS`` when that is set (to look at them).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import featcache
from tests import chromium
from tests.test_audit import planted  # noqa: F401  (the session's planted set and its audit)

pytestmark = pytest.mark.slow

CHECK = """(() => ({
  images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth})),
  links: [...document.links].map(a => a.href),
  text: document.body.innerText,
}))()"""


@pytest.fixture(scope="module")
def browser():
    executable = chromium.find()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): reports not checked in a browser")
    with chromium.Browser(executable, width=1280, height=900) as b:
        yield b


def look(browser, page: Path, name: str, tmp_path: Path) -> dict:
    """Open ``page``, check its images and links, save a screenshot; the page's text and images."""
    browser.open(page.resolve().as_uri())
    seen = browser.evaluate(CHECK)
    broken = [i["src"] for i in seen["images"] if not i["complete"] or i["width"] == 0]
    assert not broken, f"{name}: images that do not decode: {broken[:5]}"
    for href in seen["links"]:
        url = urlparse(href)
        assert url.scheme == "file", f"{name}: a link leaves the report folder: {href}"
        assert Path(unquote(url.path)).exists(), f"{name}: a link points at a missing file: {href}"
    shot = browser.screenshot(tmp_path / f"{name}.png")
    assert shot.stat().st_size > 20_000
    if os.environ.get("FEATCACHE_SCREENSHOTS"):
        keep = Path(os.environ["FEATCACHE_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep / shot.name)
    return seen


def test_reports_render_in_a_browser_with_every_image_and_link_and_their_numbers(browser, planted, tmp_path):  # noqa: F811
    root = planted["root"]
    # a weak head on purpose, so that the gallery of mistakes has something to show
    run = featcache.fit(head="logreg", features=planted["id"], cache_dir=root / "cache", runs_dir=tmp_path / "runs",
                        params={"C": [0.01, 0.03]}, cv=3, progress_bar=False)
    seen = look(browser, run.path / "report.html", "fit-report", tmp_path)
    m = run.metrics
    for number in (f"{m.test.accuracy:.4f}", f"{m.best_cv_mean:.4f} +- {m.best_cv_std:.4f}", planted["id"]):
        assert number in seen["text"], number
    wrong = round((1 - m.test.accuracy) * m.test.n)
    assert f"Misclassified test images ({wrong} of {m.test.n})" in seen["text"]
    assert sum(i["src"].startswith("thumbs/") for i in seen["images"]) == min(wrong, 60)
    assert any(i["src"] == "plots/map.png" for i in seen["images"])

    board = featcache.sweep(data=root / "data", models=["efficientnet_lite0", "efficientnet_lite0@none"], heads=["logreg"],
                            params=["logreg.C=1"], image_size=128, cv=3, out=tmp_path / "sweep", cache_dir=root / "cache",
                            progress_bar=False)
    seen = look(browser, board / "leaderboard.html", "sweep-leaderboard", tmp_path)
    assert len([h for h in seen["links"] if h.endswith("report.html")]) == 2  # each row links to its run's report
    from featcache.fitting.runs import load_run

    best = max((load_run(p.parent) for p in (board / "runs").glob("*/report.html")), key=lambda r: r.metrics.best_cv_mean)
    assert f"{best.metrics.best_cv_mean:.4f} +- {best.metrics.best_cv_std:.4f}" in seen["text"]

    seen = look(browser, root / "audit" / "audit.html", "audit", tmp_path)
    counts = planted["audit"].counts()
    for label, key in (("exact duplicate groups", "exact_duplicate_groups"), ("near duplicate groups", "near_duplicate_groups"),
                       ("groups across the test split", "test_leaks"), ("likely label errors", "label_errors")):
        assert re.search(rf"{label}\s+{counts[key]}\b", seen["text"]), label
    flagged = {planted["audit"].entries.paths[e] for f in planted["audit"].findings for e in f.entries}
    assert len(seen["images"]) >= len(flagged)  # a decoded thumbnail for every flagged image
    assert any(h.endswith("audit.csv") for h in seen["links"])
