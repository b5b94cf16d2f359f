"""Issue 15: fit reports a person would rather look at: the misclassified test images, worst first,
and a 2-D map of the feature set; both survive re-rendering without the images or the feature set."""

from __future__ import annotations

import csv
import re
import shutil

import featcache
from featcache.fitting.gallery import MAP_FILE
from tests.conftest import featcache as run_cli
from tests.conftest import make_images

EXTRACT = dict(model="resnet18", weights="none", image_size=32, progress_bar=False)


def test_a_fit_report_shows_the_misclassified_worst_first_and_a_map_and_re_renders_without_the_data(tmp_path):
    # four classes, two of them the same colour: the head must confuse "a" and "d"
    data = make_images(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=10)
    fsid = featcache.extract(data, cache_dir=tmp_path / "cache", **EXTRACT).id
    run = featcache.fit(head="logreg", features=fsid, cache_dir=tmp_path / "cache", runs_dir=tmp_path / "runs",
                        params={"C": [1.0]}, cv=3, progress_bar=False)
    with open(run.path / "test_predictions.csv", newline="") as f:
        wrong = [r for r in csv.DictReader(f) if r["true"] != r["predicted"]]
    assert wrong, "the planted confusion should leave mistakes"
    report = (run.path / "report.md").read_text()
    assert f"## Misclassified test images ({len(wrong)} of {run.metrics.test.n})" in report
    titles = re.findall(r"\*\*\d+\. predicted (\w+) \(([0-9.]+)\)\*\*: true label: (\w+)", report)
    assert len(titles) == len(wrong)
    confidences = [float(c) for _, c, _ in titles]
    assert confidences == sorted(confidences, reverse=True)  # worst (most confident mistake) first
    assert all(predicted != true for predicted, _, true in titles)
    page = (run.path / "report.html").read_text()
    thumbs = re.findall(r'<img src="(thumbs/[^"]+)"', page)
    assert len(thumbs) == len(wrong) and all((run.path / t).is_file() for t in thumbs)
    with open(run.path / MAP_FILE, newline="") as f:
        mapped = list(csv.reader(f))[1:]
    assert len(mapped) == run.params.split["n_cv"] + run.params.split["n_test"]
    assert "## Feature map" in report and (run.path / "plots" / "map.png").stat().st_size > 10_000

    # the images and the feature set go away: the report re-renders from the run alone
    shutil.rmtree(data)
    shutil.rmtree(tmp_path / "cache")
    r = run_cli("report", run.path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = (run.path / "report.html").read_text()
    assert re.findall(r'<img src="(thumbs/[^"]+)"', again) == thumbs  # thumbnails made at fit time are kept
    assert "## Feature map" in (run.path / "report.md").read_text()

    (run.path / MAP_FILE).unlink()  # a run made before maps existed
    r = run_cli("report", run.path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "## Feature map" not in (run.path / "report.md").read_text()
