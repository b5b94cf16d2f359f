"""Issue 3: heads from the cache: fit, runs, reports, predict; and issue 5's checks on fit/predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import featcache
from classifiers import load_head, scores
from featcache.core.errors import CacheError, FeatcacheError, RunError
from featcache.fitting.runs import load_run
from tests.conftest import featcache as run_cli
from tests.conftest import make_images

EXTRACT = dict(model="resnet18", weights="none", image_size=64, progress_bar=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Three colour classes, 12 images each; one 512x2x2 feature set shared by the tests below."""
    root = tmp_path_factory.mktemp("fit")
    data = make_images(root / "data", classes=("red", "green", "blue"), per_class=12, size=(64, 64))
    result = featcache.extract(data, cache_dir=root / "cache", **EXTRACT)
    return {"root": root, "data": data, "cache": root / "cache", "id": result.id}


def _markdown_table(markdown: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and data rows of the first table under the ``## heading`` of a report."""
    lines = markdown.split(f"\n## {heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip()[1:-1].split(" | ")])
    assert set("".join(table[1])) <= set("-|"), table[1]  # the separator line
    return table[0], table[2:]


def _fit(ws, tmp_path, **kw):
    kw.setdefault("progress_bar", False)
    return featcache.fit(cache_dir=ws["cache"], runs_dir=tmp_path / "runs", **kw)


@pytest.mark.parametrize("head,params", [("svm", None), ("logreg", {"C": [0.1, 10]}), ("gap", {"C": [1.0, 100.0]}),
                                         ("mlp", {"hidden_units": [16, 32]})])
def test_each_head_learns_from_the_cache_and_leaves_a_complete_run(workspace, tmp_path, head, params):
    fixed = {"max_epochs": 30, "patience": 5} if head == "mlp" else None
    run = _fit(workspace, tmp_path, head=head, params=params, cv=3, head_params=fixed)
    assert run.test_accuracy >= 0.85, run.summary()
    for name in ("params.json", "metrics.json", "report.md", "report.html", "test_predictions.csv", "checksums.json",
                 "head/head.safetensors", "head/head.json", "plots/confusion.png"):
        assert (run.path / name).is_file(), name
    m = json.loads((run.path / "metrics.json").read_text())
    grid = params or {"C": [0.01, 0.1, 1, 10, 100]}
    n_cands = int(np.prod([len(v) for v in grid.values()]))
    assert len(m["cv_results"]["params"]) == n_cands
    assert all(len(m["cv_results"][f"split{k}_test_score"]) == n_cands for k in range(3))
    assert "split3_test_score" not in m["cv_results"]
    assert set(m["test"]["per_class"]) == {"blue", "green", "red"}
    assert np.array(m["test"]["confusion_matrix"]).sum() == m["test"]["n"] == 8  # ceil(0.2 * 36)
    header, rows = _markdown_table((run.path / "report.md").read_text(), "Grid search")
    names = list(grid)
    assert header == ["rank", *names, "CV mean", "CV std", "fit s", "fold 0", "fold 1", "fold 2"]
    cv = m["cv_results"]  # one grid row per candidate, best first: its rank, parameters and CV mean
    assert sorted(tuple(row[:len(names) + 2]) for row in rows) == sorted(
        (str(cv["rank_test_score"][i]), *(str(cv[f"param_{n}"][i]) for n in names), f"{cv['mean_test_score'][i]:.4f}")
        for i in range(n_cands))
    assert [int(row[0]) for row in rows] == sorted(cv["rank_test_score"]) and rows[0][0] == "1"
    name = next(iter(grid))
    assert (run.path / "plots" / f"cv_{name}.png").is_file()
    if head == "mlp":
        assert m["history"] and (run.path / "plots" / "learning_curves.png").is_file()
    p = json.loads((run.path / "params.json").read_text())
    assert p["features"]["id"] == workspace["id"] and p["cv"] == 3 and p["seed"] == 0

    # the reloaded head predicts exactly as the in-memory one
    with featcache.open_features(workspace["id"], workspace["cache"]) as fs:
        X = fs.load(np.float32)
    reloaded = load_head(run.path / "head")
    assert np.array_equal(reloaded.predict(X), run.estimator.predict(X))
    assert np.array_equal(reloaded.decision_function(X), run.estimator.decision_function(X))


def test_svm_defaults_to_ten_folds_and_the_edge_is_flagged(workspace, tmp_path):
    data = make_images(tmp_path / "d", classes=("a", "b"), per_class=15, size=(64, 64))
    fsid = featcache.extract(data, cache_dir=tmp_path / "c", **EXTRACT).id
    run = featcache.fit(head="svm", features=fsid, cache_dir=tmp_path / "c", runs_dir=tmp_path / "runs",
                        params={"C": [1e-3, 1e-2, 1e-1]}, progress_bar=False)
    assert run.params.cv == 10 and "split9_test_score" in run.metrics.cv_results
    assert run.metrics.best_on_edge == ["C"]  # 0.1 clearly beats 0.01: the optimum may lie beyond
    assert "edge of the grid" in (run.path / "report.md").read_text()
    plateau = featcache.fit(head="svm", features=fsid, cache_dir=tmp_path / "c", runs_dir=tmp_path / "runs",
                            params={"C": [0.01, 0.1, 1.0]}, progress_bar=False)
    assert plateau.metrics.best_on_edge == []  # 0.1 and 1.0 tie: no warning


def test_stored_test_split_is_the_test_set(tmp_path):
    data = tmp_path / "data"
    make_images(data, per_class=8, split="train", size=(64, 64))
    make_images(data, per_class=3, split="val", seed=1, size=(64, 64))
    make_images(data, per_class=4, split="test", seed=2, size=(64, 64))
    featcache.extract(data, cache_dir=tmp_path / "c", **EXTRACT)
    run = featcache.fit(head="logreg", cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=3, progress_bar=False)
    assert run.params.split["test"] == "stored test split"
    assert run.params.split["n_test"] == 8 and run.params.split["n_cv"] == 22  # train + val joined
    rows = (run.path / "test_predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == 8 and all(r.startswith("test/") for r in rows)


def test_predict_end_to_end_equals_extract_plus_head(workspace, tmp_path):
    run = _fit(workspace, tmp_path, head="logreg", params={"C": [1.0]}, cv=3)
    new = make_images(tmp_path / "new", classes=("red", "green", "blue"), per_class=2, size=(70, 50), seed=7)
    predicted = featcache.predict([new], run.path, cache_dir=workspace["cache"], progress_bar=False)
    fresh = featcache.extract(new, cache_dir=tmp_path / "c2", **EXTRACT)
    with featcache.open_features(fresh.id, tmp_path / "c2") as fs:
        X, paths = fs.load(np.float32), fs.paths
    labels, conf = scores(load_head(run.path / "head"), X)
    names = run.params.class_names
    by_path = {p.path.split("new/", 1)[1]: p for p in predicted}
    assert len(by_path) == 6
    for rel, label, c in zip(paths, labels, conf):
        assert by_path[rel].label == names[int(label)]
        assert by_path[rel].confidence == pytest.approx(float(c), abs=1e-5)
    cli = run_cli("predict", new, "--run", run.path, "--cache-dir", workspace["cache"], "--json", "-q")
    assert cli.returncode == 0, cli.stderr
    assert {d["path"].split("new/", 1)[1]: d["label"] for d in json.loads(cli.stdout)} == {k: v.label for k, v in by_path.items()}


def test_runs_table_sorts_and_report_compares(workspace, tmp_path):
    a = _fit(workspace, tmp_path, head="logreg", params={"C": [0.01]}, cv=3)
    b = _fit(workspace, tmp_path, head="svm", params={"C": [1.0]}, cv=3)
    table = run_cli("runs", "--runs-dir", tmp_path / "runs", "--sort", "cv")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["RUN", "HEAD", "FEATURES"] and len(lines) == 3
    best_first = [line.split()[1] for line in lines[1:]]
    expected = [r.params.head for r in sorted([a, b], key=lambda r: -r.metrics.best_cv_mean)]
    assert best_first == expected
    as_json = json.loads(run_cli("runs", "--runs-dir", tmp_path / "runs", "--json", "--sort", "time").stdout)
    assert [r["fit_seconds"] for r in as_json] == sorted(r["fit_seconds"] for r in as_json)
    out = tmp_path / "cmp"
    cmp = run_cli("report", a.path, b.path, "--out", out)
    assert cmp.returncode == 0, cmp.stderr
    assert (out / "comparison.html").is_file() and (out / "comparison.png").is_file()
    assert a.name in cmp.stdout and b.name in cmp.stdout
    (a.path / "report.md").unlink()
    assert run_cli("report", a.path).returncode == 0 and (a.path / "report.md").is_file()
    (b.path / "report.md").unlink()  # no argument: the newest run
    newest = run_cli("report", "--runs-dir", tmp_path / "runs")
    assert newest.returncode == 0 and (b.path / "report.md").is_file() and str(b.path / "report.md") in newest.stdout


# -- bad input: one clear line ------------------------------------------------------------------------------

def _cli_fails(*args, needles=()):
    r = run_cli(*args)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_fit_input(workspace, tmp_path):
    c = ["--features", workspace["id"], "--cache-dir", workspace["cache"], "--runs-dir", tmp_path / "runs", "-q"]
    _cli_fails("fit", "--head", "svn", *c, needles=["unknown head 'svn'", "svm"])
    _cli_fails("fit", "--param", "Cc=1,2", *c, needles=["unknown parameter", "'Cc'", "did you mean C"])
    _cli_fails("fit", "--param", "C=abc", *c, needles=["C=abc", "must be a finite float > 0"])
    _cli_fails("fit", "--param", "C=-1", *c, needles=["The 'C' parameter of the svm head must be a finite float > 0. Got -1.0."])
    _cli_fails("fit", "--cv", "20", *c, needles=["--cv 20 is larger than the smallest class", "images for cross-validation): use --cv"])
    _cli_fails("fit", "--features", "ffffffff", *c[2:], needles=["no feature set 'ffffffff'"])
    _cli_fails("fit", "--cache-dir", tmp_path / "empty", "--runs-dir", tmp_path / "r", needles=["no complete feature set", "featcache extract"])
    pooled = featcache.extract(workspace["data"], cache_dir=tmp_path / "pc", pool="avg", **EXTRACT)
    _cli_fails("fit", "--head", "gap", "--features", pooled.path, "--runs-dir", tmp_path / "r", "-q", needles=["--pool none", "logreg"])
    single = make_images(tmp_path / "one", classes=("only",), per_class=4)
    (single / "empty").mkdir()
    Image.new("RGB", (8, 8)).save(single / "empty" / "x.png")
    one = featcache.extract(single, cache_dir=tmp_path / "oc", **EXTRACT)
    assert one.n_rows == 5
    _cli_fails("fit", "--features", one.path, "--runs-dir", tmp_path / "r", needles=["a class has a single image"])
    _cli_fails("predict", workspace["data"], "--run", tmp_path, needles=["not a finished featcache run"])


def test_single_class_feature_set_is_refused(tmp_path):
    data = make_images(tmp_path / "data", classes=("only",), per_class=6)
    featcache.extract(data, cache_dir=tmp_path / "c", **EXTRACT)
    with pytest.raises(FeatcacheError, match="single class"):
        featcache.fit(cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", progress_bar=False)


def test_fit_refuses_a_stale_feature_set_with_the_refresh_command(tmp_path):
    data = make_images(tmp_path / "data", per_class=8)
    featcache.extract(data, cache_dir=tmp_path / "c", **EXTRACT)
    Image.new("RGB", (40, 40), "white").save(data / "cats" / "late.png")
    r = run_cli("fit", "--cache-dir", tmp_path / "c", "--runs-dir", tmp_path / "r", "-q")
    assert r.returncode == 1 and "stale" in r.stderr and "1 added" in r.stderr and "cats/late.png" in r.stderr
    assert f"featcache extract --data {data} --model resnet18 --weights none --image-size 64" in r.stderr
    assert "--allow-stale" in r.stderr
    forced = featcache.fit(cache_dir=tmp_path / "c", runs_dir=tmp_path / "r", cv=3, allow_stale=True, progress_bar=False)
    assert forced.metrics.test.n > 0


def test_fit_and_report_stop_on_a_corrupted_feature_set(workspace, tmp_path):
    import shutil

    cache = tmp_path / "c"
    shutil.copytree(workspace["cache"], cache)
    path = cache / f"{workspace['id']}.h5"
    run = featcache.fit(features=workspace["id"], cache_dir=cache, runs_dir=tmp_path / "r", cv=3,
                        params={"C": [1.0]}, progress_bar=False)
    raw = bytearray(path.read_bytes())
    with featcache.open_features(workspace["id"], cache) as fs:
        assert fs.features.chunks
    middle = len(raw) // 2
    raw[middle:middle + 32] = bytes(255 - b for b in raw[middle:middle + 32])
    path.write_bytes(raw)
    with pytest.raises(CacheError, match="extract"):
        featcache.fit(cache_dir=cache, runs_dir=tmp_path / "r", cv=3, progress_bar=False)
    rep = run_cli("report", run.path)
    assert rep.returncode == 1 and "damaged" in rep.stderr and "extract again" in rep.stderr
    path.write_bytes(raw[: len(raw) // 4])
    for args in (["--features", workspace["id"]], []):
        r = run_cli("fit", "--cache-dir", cache, "--runs-dir", tmp_path / "r", *args)
        assert r.returncode == 1 and "corrupted" in r.stderr and "cache rm" in r.stderr and "Traceback" not in r.stderr


def test_predict_refuses_altered_or_missing_files(workspace, tmp_path):
    import shutil

    cache = tmp_path / "c"
    shutil.copytree(workspace["cache"], cache)
    run = featcache.fit(head="logreg", params={"C": [1.0]}, cv=3, cache_dir=cache, runs_dir=tmp_path / "r", progress_bar=False)
    image = next(workspace["data"].rglob("*.png"))
    assert featcache.predict([image], run.path, progress_bar=False)[0].label in ("red", "green", "blue")
    head_json = run.path / "head" / "head.json"
    original = head_json.read_text()
    head_json.write_text(original.replace('"C": 1.0', '"C": 2.0'))
    with pytest.raises(RunError, match="altered"):
        featcache.predict([image], run.path, progress_bar=False)
    head_json.write_text(original)
    load_run(run.path)  # intact again
    (cache / f"{workspace['id']}.h5").unlink()
    r = run_cli("predict", image, "--run", run.path, "--cache-dir", cache)
    assert r.returncode == 1 and "missing" in r.stderr and "Traceback" not in r.stderr
